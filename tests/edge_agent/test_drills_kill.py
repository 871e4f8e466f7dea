"""Drill: kill -9 the agent 20 times at random moments while it collects and publishes (real Kafka).

The agent runs as `tidm agent run` processes, one after another, on one spool folder, against an
OPC UA simulator that historizes its variables and keeps producing while agents die and restart.
Ten kills are *hot*: the agent dies with samples in flight, in its batcher, being sealed, spooled
or sent. Ten are *quiet*: the simulator was paused first and the agent had time to seal what it
received (0.8-2 s, against a `max_age_ms` of 200), so it dies with batches spooled, being sent, or
idle; the simulator resumes right after the kill. Every restarted agent backfills from the
simulator's history what came after the last sample it had sealed (the spool's chain head), then
goes live.

What is claimed, and checked on the topic after the last (graceful) run: every sample the
simulator produced (asset, signal, source timestamp, with its value and status) is in Kafka exactly
once, in one unbroken provenance chain, with the source's seqs exactly 0..N-1 (no gap, no repeat,
across all 21 processes). Copies of a batch are byte-identical (a batch sent but not yet marked
sent is sent again; the stream job drops the copy by its SHA-256).
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
from tests.edge_agent.drill_support import (
    AgentProcess,
    agent_config,
    assert_exactly_once_and_true,
    inspect_topic,
    produced_key,
    read_topic,
)

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity
from tidm.ingest.transports import KafkaTransport
from tidm.simulator import HistoryConfig, Simulator, SimulatorConfig, read_produced

KILLS = 20
_BACKFILLED = re.compile(r"backfilled (\d+) samples")


async def _settle_pause(sim: Simulator) -> None:
    """Pause and wait out a tick in progress."""
    sim.pause()
    await asyncio.sleep(2 * sim.config.tick_ms / 1000 + 0.05)


@pytest.mark.integration
@pytest.mark.timeout(600)
async def test_twenty_kill9_at_random_moments_every_produced_sample_in_kafka_exactly_once(
    kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    topic = unique_name("kill-drill")
    await KafkaTransport(kafka_bootstrap, client_id="drill").ensure_topics([topic], partitions=2)
    identity = AgentIdentity.generate("gw-drill")
    key = tmp_path / "agent.key"
    identity.save(key)
    record = tmp_path / "produced.jsonl"
    sim_config = SimulatorConfig.fleet(
        2, 5, period_ms=100, start_paused=True, record_path=record, history=HistoryConfig(enabled=True)
    )
    spool_dir = tmp_path / "spool"
    evidence_path = tmp_path / "evidence.db"
    kinds: list[str] = []
    async with Simulator(sim_config) as sim:
        config = agent_config(
            tmp_path / "agent.yaml",
            key=key,
            endpoint=sim.endpoint,
            bootstrap=kafka_bootstrap,
            topic=topic,
            spool={"path": str(spool_dir), "max_bytes": 64 << 20},
            evidence=evidence_path,
            batch={"max_rows": 500, "max_age_ms": 200},
        )
        for i in range(KILLS + 1):
            agent = AgentProcess(config, tmp_path / f"agent-{i:02d}.log")
            try:
                await agent.wait_collecting()
                # The first tick is written before the server listens: the first agent's initial
                # values. Until the first agent sealed a batch per asset there is no point to
                # backfill from, so the first run lives long enough for that (max_age_ms 200).
                sim.resume()
                await asyncio.sleep(rng.uniform(1.5, 2.5) if i == 0 else rng.uniform(0.3, 2.5))
                if i == KILLS:  # the final run: pause, then a graceful stop that drains the spool
                    await _settle_pause(sim)
                    await asyncio.sleep(1.0)
                    assert await agent.stop() == 0, agent.log.read_text()[-3000:]
                    kinds.append("final")
                elif i % 2 == 0:
                    agent.kill9()  # the simulator keeps producing until the next agent backfills
                    kinds.append("hot")
                else:
                    await _settle_pause(sim)
                    await asyncio.sleep(rng.uniform(0.8, 2.0))
                    agent.kill9()
                    sim.resume()
                    kinds.append("quiet")
            finally:
                if agent.proc.poll() is None:
                    agent.kill9()
        produced_total = sim.stats.samples
    produced = read_produced(record)
    assert len(produced) == produced_total

    with SqliteEvidenceLog(evidence_path) as evidence:
        sends = sum(1 for e in evidence.read() if e.entry.event == EventType.SEND)
    messages = await read_topic(kafka_bootstrap, topic, expect=sends)
    report = inspect_topic(messages, identity)
    # No sample twice, seqs 0..N-1 per source, one chain, every value as the simulator wrote it.
    assert_exactly_once_and_true(report, produced)
    assert not list(spool_dir.glob("*.sealed")), "the final run drained the spool"
    missing = [p for p in produced if produced_key(p) not in report.samples]
    assert not missing, f"{len(missing)} produced samples are not in Kafka, e.g. {missing[:3]}"
    assert sum(report.samples.values()) == len(produced)
    (seqs,) = report.seqs.values()
    assert len(seqs) == len(produced)
    backfilled = sum(
        int(n)
        for i in range(KILLS + 1)
        for n in _BACKFILLED.findall((tmp_path / f"agent-{i:02d}.log").read_text())
    )
    assert backfilled > 0
    print(
        f"kill drill: {len(produced)} produced, all in Kafka once in {len(report.batches)} batches "
        f"(+{report.resends} byte-identical resends); {backfilled} backfilled from history over "
        f"{kinds.count('hot')} hot and {kinds.count('quiet')} quiet kills"
    )
