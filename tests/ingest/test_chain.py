"""Provenance chain checks at ingest: removed, duplicated and reordered batches are flagged.

Crafted sequences of sealed batches go through the embedded transport into the real JobRunner.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import (
    AgentIdentity,
    FolderQuarantine,
    Provenance,
    SealedBatch,
    TrustedAgents,
    new_batch_id,
    seal,
)
from tidm.ingest.chain import ChainChecker
from tidm.ingest.envelope import VerifiedBatch, open_envelope
from tidm.ingest.errors import EnvelopeError
from tidm.ingest.transports import EmbeddedTransport
from tidm.ingest.transports.base import Message
from tidm.semantics import samples_table
from tidm.storage import Lake
from tidm.stream_processing import JobRunner, JobSettings

DAY_US = 1_764_288_000_000_000
TOPIC = "tidm.samples"


def _table(asset: str, start: int, n: int) -> pa.Table:
    return samples_table(
        ts_us=[DAY_US + (start + i) * 1000 for i in range(n)],
        recv_ts_us=[DAY_US + (start + i) * 1000 for i in range(n)],
        asset_id=[asset] * n,
        signal=["s"] * n,
        value=[float(start + i) for i in range(n)],
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(start, start + n)),
    )


def _chain(
    identity: AgentIdentity, count: int, *, assets: tuple[str, ...] = ("pump-1",), n: int = 5
) -> list[SealedBatch]:
    """`count` batches sealed in order, each naming the previous one's hash (assets alternate)."""
    out: list[SealedBatch] = []
    prev = ""
    for i in range(count):
        asset = assets[i % len(assets)]
        prov = Provenance(
            agent_id=identity.agent_id,
            site="plant",
            asset_id=asset,
            batch_id=new_batch_id(),
            sources=("opc.tcp://x",),
            seq_first=i * n,
            seq_last=i * n + n - 1,
            rows=n,
            created_us=DAY_US,
            prev_batch_hash=prev,
        )
        sealed = seal(_table(asset, i * n, n), prov, identity)
        prev = sealed.sha256
        out.append(sealed)
    return out


async def _run(
    tmp_path: Path,
    identity: AgentIdentity,
    sequence: list[SealedBatch],
    *,
    partitions: int = 1,
    chain: ChainChecker | None = None,
    evidence: SqliteEvidenceLog | None = None,
    group: str = "g",
) -> tuple[JobRunner, SqliteEvidenceLog]:
    evidence = evidence or SqliteEvidenceLog(tmp_path / "evidence.db")
    transport = EmbeddedTransport(tmp_path / "log", partitions=partitions)
    await transport.ensure_topics([TOPIC], partitions=partitions)
    producer = transport.producer()
    await producer.start()
    try:
        for sealed in sequence:
            await producer.send(TOPIC, sealed.value, key=sealed.key, headers=sealed.headers())
        settings = JobSettings(name="chain", topics=(TOPIC,), group_id=group, max_records=2)
        runner = JobRunner(
            settings,
            transport=transport,
            lake=Lake.local(tmp_path / "lake"),
            evidence=evidence,
            trusted=TrustedAgents({identity.agent_id: identity.public_key}),
            quarantine=FolderQuarantine(tmp_path / "quarantine", evidence, actor=settings.actor),
            chain=chain,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        deadline = time.monotonic() + 30
        while runner.stats.commits < 1 or (
            runner.stats.batches + runner.stats.quarantined < len(sequence) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
            if task.done() or time.monotonic() > deadline:
                break
        stop.set()
        await task
    finally:
        await producer.stop()
    return runner, evidence


def _chain_entries(evidence: SqliteEvidenceLog) -> list[tuple[str, str, str]]:
    """(info, subject, related) of every chain flag in the evidence log."""
    return [
        (e.entry.attributes["info"], e.entry.subject, e.entry.attributes["related"])
        for e in evidence.read()
        if e.entry.event == EventType.ADDINFO and str(e.entry.attributes.get("info", "")).startswith("chain-")
    ]


def _landed_seqs(tmp_path: Path) -> list[int]:
    return sorted(Lake.local(tmp_path / "lake").read_table("clean").column("seq").to_pylist())


async def test_an_intact_chain_raises_nothing(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    batches = _chain(identity, 5)
    runner, evidence = await _run(
        tmp_path, identity, batches, chain=ChainChecker(actor="job:chain", gap_after_batches=1)
    )
    assert runner.stats.chain_flags == 0 and runner.stats.quarantined == 0
    assert runner.chain.expire(force=True) == []
    assert _landed_seqs(tmp_path) == list(range(25))
    evidence.close()


async def test_a_removed_batch_is_reported_as_a_gap(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    b = _chain(identity, 5)
    chain = ChainChecker(actor="job:chain", gap_after_s=3600, gap_after_batches=1)
    runner, evidence = await _run(tmp_path, identity, [b[0], b[1], b[3], b[4]], chain=chain)
    # b[3] names b[2], which never arrives: one gap, on b[3], naming the missing hash; b[3] still lands.
    assert _chain_entries(evidence) == [("chain-gap", b[3].sha256, b[2].sha256)]
    assert runner.stats.chain_flags == 1 and runner.stats.quarantined == 0
    assert chain.counts["gap"] == 1
    assert _landed_seqs(tmp_path) == [s for i in (0, 1, 3, 4) for s in range(i * 5, i * 5 + 5)]
    evidence.close()


async def test_a_duplicated_batch_is_quarantined_not_landed_twice(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    b = _chain(identity, 3)
    runner, evidence = await _run(tmp_path, identity, [b[0], b[1], b[1], b[2]])
    assert runner.stats.quarantined == 1 and runner.stats.chain_flags == 0
    (route,) = [e.entry for e in evidence.read() if e.entry.event == EventType.ROUTE]
    assert route.subject == b[1].sha256
    assert route.attributes["reason"] == "duplicate" and route.attributes["offset"] == 2
    assert _landed_seqs(tmp_path) == list(range(15)), "every sample once"
    sidecar = (tmp_path / "quarantine" / TOPIC / "0-2.json").read_text()
    assert "already received at tidm.samples[0]@1" in sidecar
    evidence.close()


async def test_a_duplicate_after_a_restart_is_caught_through_the_evidence_log(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    b = _chain(identity, 3)
    first, evidence = await _run(tmp_path, identity, [b[0], b[1]])
    assert first.stats.quarantined == 0
    # A new job process (fresh in-memory state, same evidence log) sees b[1] again, then b[2].
    second, _ = await _run(tmp_path, identity, [b[1], b[2]], evidence=evidence)
    assert second.stats.quarantined == 1 and second.stats.chain_flags == 0
    assert _landed_seqs(tmp_path) == list(range(15))
    evidence.close()


async def test_a_reordered_batch_within_a_partition_is_flagged(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    b = _chain(identity, 4)
    chain = ChainChecker(actor="job:chain", gap_after_s=3600, gap_after_batches=1000)
    runner, evidence = await _run(tmp_path, identity, [b[0], b[2], b[1], b[3]], chain=chain)
    # b[2] (offset 1) came before its predecessor b[1] (offset 2) in the same partition.
    assert _chain_entries(evidence) == [("chain-reorder", b[1].sha256, b[2].sha256)]
    assert runner.stats.quarantined == 0 and runner.chain.expire(force=True) == []
    assert _landed_seqs(tmp_path) == list(range(20))
    evidence.close()


async def test_chains_spread_over_partitions_are_not_flagged(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-c")
    assets = tuple(f"pump-{i}" for i in range(6))
    b = _chain(identity, 24, assets=assets)
    runner, evidence = await _run(tmp_path, identity, b, partitions=3)
    # Successors often arrive before their predecessors from another partition: that is not a break.
    assert runner.stats.chain_flags == 0 and runner.stats.quarantined == 0
    assert runner.chain.expire(force=True) == []
    assert _landed_seqs(tmp_path) == list(range(24 * 5))
    evidence.close()


def _verified(sealed: SealedBatch, identity: AgentIdentity, partition: int, offset: int) -> VerifiedBatch:
    message = Message(TOPIC, partition, offset, sealed.key, sealed.value, tuple(sealed.headers()), 0)
    return open_envelope(message, TrustedAgents({identity.agent_id: identity.public_key}))


def test_checker_rules_replays_forks_late_and_restarts() -> None:
    identity = AgentIdentity.generate("agent-c")
    b = _chain(identity, 4)
    checker = ChainChecker(actor="job:chain", gap_after_s=3600, gap_after_batches=1)
    assert checker.observe(_verified(b[0], identity, 0, 0)) == []
    assert checker.observe(_verified(b[0], identity, 0, 0)) == [], "same location: a replay"
    with pytest.raises(EnvelopeError, match=r"duplicate: batch .* already received at tidm.samples\[0\]@0"):
        checker.observe(_verified(b[0], identity, 1, 7))
    # b[2] arrives without b[1]; the next batch makes it a gap; then b[1] shows up late.
    checker.observe(_verified(b[2], identity, 0, 1))
    restart = _chain(identity, 1)[0]  # an agent restart: empty previous hash, not a gap
    assert checker.observe(_verified(restart, identity, 0, 2)) == []
    (gap,) = checker.expire()
    assert (gap.kind, gap.subject, gap.other) == ("gap", b[2].sha256, b[1].sha256)
    (late,) = checker.observe(_verified(b[1], identity, 1, 0))
    assert late.kind == "late" and late.subject == b[1].sha256
    # A second, different batch naming the same predecessor is a fork.
    other = seal(
        _table("pump-1", 100, 2),
        Provenance(
            agent_id=identity.agent_id,
            site="plant",
            asset_id="pump-1",
            batch_id=new_batch_id(),
            sources=(),
            seq_first=100,
            seq_last=101,
            rows=2,
            created_us=DAY_US,
            prev_batch_hash=b[0].sha256,
        ),
        identity,
    )
    (fork,) = checker.observe(_verified(other, identity, 0, 3))
    assert (fork.kind, fork.other) == ("fork", b[1].sha256)
    assert checker.counts == {"duplicate": 1, "gap": 1, "reorder": 0, "fork": 1, "late": 1}
