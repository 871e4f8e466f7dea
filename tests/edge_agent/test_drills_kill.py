"""Drill: kill -9 the agent 20 times at random moments while it collects and publishes (real Kafka).

The agent runs as `tidm agent run` processes, one after another, on one spool folder, against an
OPC UA simulator that the test pauses while no agent is subscribed (a subscription cannot collect
what was produced before it existed). Ten kills are *hot*: the simulator is still producing, so the
agent dies with samples in flight, in its batcher, being sealed, spooled or sent. Ten are *quiet*:
the simulator was paused first and the agent had time to seal what it received (0.8-2 s, against a
`max_age_ms` of 200), so it dies with batches spooled, being sent, or idle.

What is claimed, and checked on the topic after the last (graceful) run:

* no sample is in two distinct batches, the seqs of the source are exactly 0..N-1 (no gap, no
  repeat, across all 21 processes), the batches form one unbroken provenance chain, every sample
  is a value the simulator produced, and copies of a batch are byte-identical (a batch sent but not
  yet marked sent is sent again; the stream job drops the copy by its SHA-256);
* every sample produced during a quiet cycle or the final run is in Kafka;
* a hot kill loses only the samples the agent had not yet sealed into its spool: per signal, the
  missing ones come after every sample of that cycle that made it (except the cycle's last value,
  which the next agent gets as the subscription's initial value). Samples in the agent's memory
  are not on disk before they are sealed; that loss is the price of batching, bounded by
  `batch.max_age_ms` plus the time to notice the kill.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
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
from tidm.simulator import Simulator, SimulatorConfig, read_produced

KILLS = 20


async def _settle_pause(sim: Simulator) -> int:
    """Pause and wait out a tick in progress; return how many samples exist."""
    sim.pause()
    await asyncio.sleep(2 * sim.config.tick_ms / 1000 + 0.05)
    return sim.stats.samples


@pytest.mark.integration
@pytest.mark.timeout(600)
async def test_twenty_kill9_at_random_moments_lose_nothing_spooled_and_duplicate_nothing(
    kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    topic = unique_name("kill-drill")
    await KafkaTransport(kafka_bootstrap, client_id="drill").ensure_topics([topic], partitions=2)
    identity = AgentIdentity.generate("gw-drill")
    key = tmp_path / "agent.key"
    identity.save(key)
    record = tmp_path / "produced.jsonl"
    sim_config = SimulatorConfig.fleet(2, 5, period_ms=100, start_paused=True, record_path=record)
    spool_dir = tmp_path / "spool"
    evidence_path = tmp_path / "evidence.db"
    cycles: list[tuple[str, int, int]] = []  # (kind, first produced index, end index)
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
        start = 0  # the first tick is written before the server listens: the first agent's initial values
        for i in range(KILLS + 1):
            agent = AgentProcess(config, tmp_path / f"agent-{i:02d}.log")
            try:
                await agent.wait_collecting()
                sim.resume()
                await asyncio.sleep(rng.uniform(0.3, 2.5))
                if i == KILLS:  # the final run: pause, then a graceful stop that drains the spool
                    end = await _settle_pause(sim)
                    await asyncio.sleep(1.0)
                    assert await agent.stop() == 0, agent.log.read_text()[-3000:]
                    cycles.append(("final", start, end))
                elif i % 2 == 0:
                    agent.kill9()
                    end = await _settle_pause(sim)
                    cycles.append(("hot", start, end))
                else:
                    end = await _settle_pause(sim)
                    await asyncio.sleep(rng.uniform(0.8, 2.0))
                    agent.kill9()
                    cycles.append(("quiet", start, end))
                start = end
            finally:
                if agent.proc.poll() is None:
                    agent.kill9()
    produced = read_produced(record)
    assert len(produced) == start

    with SqliteEvidenceLog(evidence_path) as evidence:
        sends = sum(1 for e in evidence.read() if e.entry.event == EventType.SEND)
    messages = await read_topic(kafka_bootstrap, topic, expect=sends)
    report = inspect_topic(messages, identity)
    assert_exactly_once_and_true(report, produced)
    assert not list(spool_dir.glob("*.sealed")), "the final run drained the spool"

    missing_by_kind: dict[str, int] = defaultdict(int)
    for kind, first, end in cycles:
        cycle = produced[first:end]
        missing = [p for p in cycle if produced_key(p) not in report.samples]
        missing_by_kind[kind] += len(missing)
        if kind != "hot":
            assert not missing, f"{kind} cycle lost {len(missing)} samples, e.g. {missing[:3]}"
            continue
        by_signal = defaultdict(list)
        for p in cycle:
            by_signal[(p.asset_id, p.signal)].append(p)
        for samples in by_signal.values():
            present = [p.ts_us for p in samples[:-1] if produced_key(p) in report.samples]
            lost = [p.ts_us for p in samples if produced_key(p) not in report.samples]
            assert not lost or not present or min(lost) > max(present), "a hot kill lost only its tail"
    total = len(produced)
    print(
        f"kill drill: {total} produced, {sum(report.samples.values())} in Kafka in {len(report.batches)} "
        f"batches (+{report.resends} byte-identical resends); lost at hot kills {missing_by_kind['hot']}"
    )
    assert sum(report.samples.values()) == total - missing_by_kind["hot"]
