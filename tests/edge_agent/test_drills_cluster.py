"""Drills on a three-node KRaft cluster of the session's own (the `kafka_cluster` fixture), under load from
several agents: the leader of the busiest partitions killed (-9) and restarted, then two of the three nodes
stopped (writes pause: below min.insync.replicas=2 the brokers refuse acks=all, the agents spool) and
brought back. Each agent's topic holds every sample the simulators produced, exactly once and seq-checked,
and every SEND its evidence log records is a batch in Kafka.

The load is what this 2-core machine sustains beside the cluster in a test (2 agents x 10 signals at
10 Hz); `bench/scale.py` is where the rates are measured. Times to recover are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from tests.edge_agent.drill_support import (
    assert_exactly_once_and_true,
    inspect_topic,
    produced_key,
    read_topic,
)

from tidm.edge_agent import Agent, AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.edge_agent.spool import DiskSpool
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity
from tidm.ingest.envelope import HEADER_AGENT
from tidm.ingest.transports import KafkaTransport
from tidm.simulator import Simulator, SimulatorConfig

AGENTS = 2
PARTITIONS = 4


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


async def _leaders(bootstrap: str, topic: str) -> Counter[int]:
    """How many of the topic's partitions each node leads."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return Counter(int(p["leader"]) for p in meta["partitions"] if int(p["leader"]) >= 0)


async def _run_fleet(
    cluster: Any, tmp: Path, topic: str, disruption: Callable[[list[DiskSpool]], Awaitable[None]]
) -> None:
    """AGENTS agents, each with its simulator and disk spool, on `topic` of the cluster; `disruption` runs
    while they collect. Then every agent's samples are checked in Kafka."""
    transport = KafkaTransport(cluster.bootstrap, client_id="drill-cluster", request_timeout_ms=5_000)
    await transport.ensure_topics([topic], partitions=PARTITIONS)
    producer = transport.producer()
    await producer.start()
    rigs: list[dict[str, Any]] = []
    try:
        sims = [
            Simulator(SimulatorConfig.fleet(2, 5, period_ms=100, start_paused=True)) for _ in range(AGENTS)
        ]
        for i, sim in enumerate(sims):
            await sim.__aenter__()
            agent_id = f"gw-cluster-{i}"
            evidence = MemoryEvidenceLog()
            spool = DiskSpool(
                tmp / agent_id,
                max_bytes=256 << 20,
                policy="pause",
                evidence=evidence,
                actor=f"agent:{agent_id}",
            ).open()
            source_settings = OpcUaSourceSettings(
                endpoint=sim.endpoint, security="none", publishing_interval_ms=100
            )
            source = OpcUaSource(source_settings)
            settings = AgentSettings(
                agent_id=agent_id,
                topic=topic,
                batch=BatchSettings(max_rows=500, max_age_ms=200),
                opcua=[source_settings],
            )
            identity = AgentIdentity.generate(agent_id)
            agent = Agent(
                settings,
                identity=identity,
                producer=producer,
                evidence=evidence,
                sources=[source],
                spool=spool,
            )
            stop = asyncio.Event()
            rigs.append(
                {
                    "sim": sim,
                    "agent": agent,
                    "source": source,
                    "spool": spool,
                    "evidence": evidence,
                    "identity": identity,
                    "agent_id": agent_id,
                    "stop": stop,
                    "task": asyncio.create_task(agent.run(stop)),
                }
            )
        try:
            for rig in rigs:
                signals = rig["sim"].config.signal_count
                await _until(lambda rig=rig, n=signals: rig["source"].stats.subscribed >= n, 60, "subscribed")
            for rig in rigs:
                rig["sim"].resume()
            await disruption([rig["spool"] for rig in rigs])
            for rig in rigs:
                rig["sim"].pause()
            for rig in rigs:
                await rig["sim"].wait_idle()
                await _until(
                    lambda rig=rig: rig["agent"].stats.samples_in >= rig["sim"].stats.samples,
                    60,
                    "all collected",
                )
        finally:
            for rig in rigs:
                rig["stop"].set()
            for rig in rigs:
                await asyncio.wait_for(rig["task"], timeout=90)
    finally:
        await producer.stop()
        for rig in rigs:
            rig["spool"].close()
            await rig["sim"].__aexit__(None, None, None)
    sends = sum(1 for rig in rigs for e in rig["evidence"].read() if e.entry.event == EventType.SEND)
    messages = await read_topic(cluster.bootstrap, topic, expect=sends)
    for rig in rigs:
        mine = [m for m in messages if _agent_of(m) == rig["agent_id"]]
        report = inspect_topic(mine, rig["identity"])
        produced = list(rig["sim"].produced)
        assert produced, "the simulator produced nothing"
        assert_exactly_once_and_true(report, produced)
        missing = [p for p in produced if produced_key(p) not in report.samples]
        assert not missing, f"{len(missing)} of {len(produced)} samples lost, e.g. {missing[:3]}"
        agent_sends = {e.entry.subject for e in rig["evidence"].read() if e.entry.event == EventType.SEND}
        assert agent_sends == {b.sha256 for b in report.batches}, "evidence SENDs != batches in Kafka"
        print(
            f"{rig['agent'].settings.agent_id}: {len(produced)} samples, {len(report.batches)} batches, "
            f"{report.resends} byte-identical resends"
        )


def _agent_of(message: Any) -> str:
    return next((v.decode() for k, v in message.headers if k == HEADER_AGENT), "")


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_the_busiest_leader_killed_then_two_brokers_stopped_lose_and_duplicate_nothing(
    kafka_cluster: Any, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    topic = unique_name("cluster-drill")
    timings: dict[str, float] = {}

    async def disrupt(spools: list[DiskSpool]) -> None:
        await asyncio.sleep(3)
        leaders = await _leaders(kafka_cluster.bootstrap, topic)
        victim = leaders.most_common(1)[0][0]
        kafka_cluster.kill(victim)
        killed = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.to_thread(kafka_cluster.start_node, victim)
        await _until(
            lambda: all(s.pending() == 0 for s in spools), 120, "spools drained after the leader kill"
        )
        timings[f"leader {victim} kill -9 to spools drained"] = time.monotonic() - killed

        await asyncio.sleep(2)
        stopped = [n for n in kafka_cluster.nodes if n != victim][:2]
        for node in stopped:
            kafka_cluster.kill(node)
        down = time.monotonic()
        await asyncio.sleep(10)
        assert sum(s.pending() for s in spools) > 0, (
            "with 1 of 3 brokers the agents kept collecting into the spool"
        )
        for node in stopped:
            await asyncio.to_thread(kafka_cluster.start_node, node, wait=False)
        for node in stopped:
            await asyncio.to_thread(kafka_cluster.wait_node, node, 120.0)
        back = time.monotonic()
        await _until(lambda: all(s.pending() == 0 for s in spools), 180, "spools drained after two brokers")
        timings["two brokers back to spools drained"] = time.monotonic() - back
        timings["two brokers outage"] = back - down
        await asyncio.sleep(1)

    await _run_fleet(kafka_cluster, tmp_path, topic, disrupt)
    print("cluster drill: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
