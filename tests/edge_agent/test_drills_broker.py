"""Drills on a private Kafka broker (stopping the shared one would break other tests):

* the broker is stopped for 60 s under load: the agent spools, then drains in order when the broker
  is back; nothing lost, nothing duplicated;
* a spool bound small enough to fill while the broker is frozen: with `drop_oldest` the samples
  missing from Kafka are exactly the rows of the batches counted and evidenced as dropped; with
  `pause` nothing is lost.

The agent runs in this process (Agent + OpcUaSource + DiskSpool + KafkaTransport) against an
in-process simulator; it stays subscribed the whole time, so every produced sample is expected.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.edge_agent.drill_support import (
    PrivateKafka,
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
from tidm.ingest.transports import KafkaTransport
from tidm.simulator import Simulator, SimulatorConfig


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    broker = PrivateKafka(tmp_path_factory.mktemp("private-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


class Rig:
    """Simulator + agent with a disk spool on the private broker."""

    def __init__(self, broker: PrivateKafka, tmp: Path, topic: str, *, max_bytes: int, policy: str) -> None:
        self.broker, self.tmp, self.topic = broker, tmp, topic
        self.identity = AgentIdentity.generate("gw-broker")
        self.evidence = MemoryEvidenceLog()
        self.spool = DiskSpool(
            tmp / "spool", max_bytes=max_bytes, policy=policy, evidence=self.evidence, actor="agent:gw-broker"
        ).open()
        self.max_pending = 0

    async def run(self, body: Callable[[Simulator, Agent], Any]) -> list[Any]:
        transport = KafkaTransport(self.broker.bootstrap, client_id="gw-broker", request_timeout_ms=5_000)
        await transport.ensure_topics([self.topic], partitions=2)
        producer = transport.producer()
        await producer.start()
        config = SimulatorConfig.fleet(2, 5, period_ms=100, start_paused=True)
        try:
            async with Simulator(config) as sim:
                source_settings = OpcUaSourceSettings(
                    endpoint=sim.endpoint, security="none", publishing_interval_ms=100
                )
                source = OpcUaSource(source_settings)
                settings = AgentSettings(
                    agent_id="gw-broker",
                    topic=self.topic,
                    batch=BatchSettings(max_rows=500, max_age_ms=200),
                    opcua=[source_settings],
                )
                agent = Agent(
                    settings,
                    identity=self.identity,
                    producer=producer,
                    evidence=self.evidence,
                    sources=[source],
                    spool=self.spool,
                )
                stop = asyncio.Event()
                task = asyncio.create_task(agent.run(stop))
                watcher = asyncio.create_task(self._watch())
                try:
                    await _until(lambda: source.stats.subscribed >= config.signal_count, 60, "subscribed")
                    sim.resume()
                    await body(sim, agent)
                    sim.pause()
                    await asyncio.sleep(1.0)
                    await _until(lambda: agent.stats.samples_in >= sim.stats.samples, 30, "all delivered")
                finally:
                    stop.set()
                    await asyncio.wait_for(task, timeout=60)
                    watcher.cancel()
                produced = list(sim.produced)
        finally:
            await producer.stop()
            self.spool.close()
        sends = sum(1 for e in self.evidence.read() if e.entry.event == EventType.SEND)
        messages = await read_topic(self.broker.bootstrap, self.topic, expect=sends)
        self.agent = agent
        return [produced, inspect_topic(messages, self.identity)]

    async def _watch(self) -> None:
        while True:
            self.max_pending = max(self.max_pending, self.spool.pending())
            await asyncio.sleep(0.1)


def _freeze(broker: PrivateKafka, on: bool) -> None:
    assert broker._proc is not None
    os.killpg(broker._proc.pid, signal.SIGSTOP if on else signal.SIGCONT)


@pytest.mark.integration
@pytest.mark.timeout(400)
async def test_broker_down_60s_under_load_spools_then_drains_in_order(
    private_kafka: PrivateKafka, unique_name, tmp_path: Path
) -> None:
    rig = Rig(private_kafka, tmp_path, unique_name("broker-down"), max_bytes=256 << 20, policy="pause")

    async def outage(sim: Simulator, agent: Agent) -> None:
        await asyncio.sleep(3)
        private_kafka.stop()
        await asyncio.sleep(60)
        assert rig.spool.pending() > 20, "the agent kept collecting into the spool"
        await asyncio.to_thread(private_kafka.start)
        await _until(lambda: rig.spool.pending() == 0, 120, "spool drained")
        await asyncio.sleep(2)

    produced, report = await rig.run(outage)
    assert_exactly_once_and_true(report, produced)
    missing = [p for p in produced if produced_key(p) not in report.samples]
    assert not missing, f"{len(missing)} of {len(produced)} samples lost, e.g. {missing[:3]}"
    # In order: per partition, the spool sent each asset's batches in seal (seq) order.
    by_partition: dict[int, list[int]] = {}
    for b in report.batches:
        by_partition.setdefault(b.message.partition, []).append(b.provenance.seq_first)
    for firsts in by_partition.values():
        assert firsts == sorted(firsts)
    # aiokafka keeps a send pending through the outage (its own retries), so the one batch in
    # flight waits and the rest wait in the spool; `send_retries` counts sends that failed outright.
    print(
        f"broker drill: {len(produced)} samples, {len(report.batches)} batches, up to {rig.max_pending} "
        f"spooled, {rig.agent.stats.send_retries} send retries, {report.resends} byte-identical resends"
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["drop_oldest", "pause"])
async def test_a_full_spool_loses_exactly_the_evidenced_drops_or_nothing(
    private_kafka: PrivateKafka, unique_name, tmp_path: Path, policy: str
) -> None:
    rig = Rig(private_kafka, tmp_path, unique_name(f"spool-{policy}"), max_bytes=24 << 10, policy=policy)

    async def freeze(sim: Simulator, agent: Agent) -> None:
        await asyncio.sleep(2)
        _freeze(private_kafka, True)
        try:
            await asyncio.sleep(12)
        finally:
            _freeze(private_kafka, False)
        await _until(lambda: rig.spool.pending() == 0, 120, "spool drained")

    produced, report = await rig.run(freeze)
    stats = rig.spool.stats
    assert_exactly_once_and_true_but_dropped = policy == "drop_oldest"
    missing = {produced_key(p) for p in produced if produced_key(p) not in report.samples}
    if not assert_exactly_once_and_true_but_dropped:
        assert_exactly_once_and_true(report, produced)
        assert stats.waits_full > 0 and stats.batches_dropped == 0
        assert not missing, f"pause lost {len(missing)} samples"
        return
    drops = [e.entry for e in rig.evidence.read() if e.entry.event == EventType.DROP]
    assert stats.batches_dropped == len(drops) > 0
    assert len(missing) == stats.rows_dropped == sum(d.attributes["rows"] for d in drops)
    # The seqs missing from Kafka are exactly the ranges the DROP entries name.
    dropped_seqs = sorted(
        s for d in drops for s in range(d.attributes["seq_first"], d.attributes["seq_last"] + 1)
    )
    (seqs,) = report.seqs.values()
    assert sorted(seqs + dropped_seqs) == list(range(len(seqs) + len(dropped_seqs)))
    sent = {b.sha256 for b in report.batches}
    assert not sent & {d.subject for d in drops}, "a dropped batch was not sent"
    twice = [k for k, n in report.samples.items() if n > 1]
    assert not twice
    print(f"drop_oldest: {len(produced)} produced, {len(drops)} batches / {len(missing)} samples dropped")
