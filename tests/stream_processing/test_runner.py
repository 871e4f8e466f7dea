"""The job runner on a real log (embedded folder, and real Kafka + S3 under `integration`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import (
    AgentIdentity,
    FolderQuarantine,
    Provenance,
    Quarantine,
    TopicQuarantine,
    TrustedAgents,
    new_batch_id,
    seal,
)
from tidm.ingest.envelope import HEADER_AGENT, HEADER_SHA256, HEADER_SIGNATURE
from tidm.ingest.quarantine import HEADER_DETAIL, HEADER_REASON, quarantine_topic
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport, Producer, Transport
from tidm.semantics import samples_table
from tidm.storage import Lake
from tidm.stream_processing import JobRunner, JobSettings

DAY_US = 1_764_288_000_000_000  # 2025-11-28T00:00:00Z


def _table(n: int, start: int = 0) -> pa.Table:
    return samples_table(
        ts_us=[DAY_US + (start + i) * 1000 for i in range(n)],
        recv_ts_us=[DAY_US + (start + i) * 1000 + 5 for i in range(n)],
        asset_id=["pump-1"] * n,
        signal=[f"s{i % 2}" for i in range(n)],
        value=[float(i) for i in range(n)],
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(start, start + n)),
    )


def _sealed(identity: AgentIdentity, n: int, start: int):  # type: ignore[no-untyped-def]
    prov = Provenance(
        agent_id=identity.agent_id,
        site="plant",
        asset_id="pump-1",
        batch_id=new_batch_id(),
        sources=("opc.tcp://x",),
        seq_first=start,
        seq_last=start + n - 1,
        rows=n,
        created_us=DAY_US,
    )
    return seal(_table(n, start), prov, identity)


def _signed(identity: AgentIdentity, value: bytes) -> list[tuple[str, bytes]]:
    digest = hashlib.sha256(value).digest()
    return [
        (HEADER_SHA256, digest.hex().encode()),
        (HEADER_SIGNATURE, identity.sign(digest)),
        (HEADER_AGENT, identity.agent_id.encode()),
    ]


@dataclass
class Rig:
    transport: Transport
    lake: Lake
    quarantine: Callable[[Producer, SqliteEvidenceLog], Quarantine]
    topic: str
    group: str
    read_quarantine: Callable[[], asyncio.Future[list[tuple[str, str]]]] | None = None


async def _publish_bad_and_good(producer: Producer, topic: str, identity: AgentIdentity) -> dict[str, bytes]:
    """Two good batches around six bad messages; returns the bad values by the expected reason."""
    good1, good2 = _sealed(identity, 10, 0), _sealed(identity, 6, 10)
    intruder = AgentIdentity.generate(identity.agent_id)  # same id, other key: a forged signature
    stranger = AgentIdentity.generate("stranger")
    tampered = bytearray(good1.value)
    tampered[len(tampered) // 2] ^= 0x55
    truncated = good1.value[: len(good1.value) // 3]
    other = pa.table({"x": [1, 2, 3]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    wrong_schema = sink.getvalue().to_pybytes()
    bad = {
        "hash-mismatch": (bytes(tampered), good1.headers()),
        "bad-signature": (good1.value, _signed(intruder, good1.value)),
        "unknown-agent": (good1.value, _signed(stranger, good1.value)),
        "malformed-ipc": (truncated, _signed(identity, truncated)),
        "wrong-schema": (wrong_schema, _signed(identity, wrong_schema)),
        "missing-header": (good1.value, [h for h in good1.headers() if h[0] != HEADER_SIGNATURE]),
    }
    await producer.send(topic, good1.value, key=good1.key, headers=good1.headers())
    for value, headers in bad.values():
        await producer.send(topic, value, key=b"pump-1", headers=headers)
    await producer.send(topic, good2.value, key=good2.key, headers=good2.headers())
    return {reason: value for reason, (value, _h) in bad.items()}


async def _run_job_until(runner: JobRunner, messages: int, timeout_s: float = 30.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not task.done():
        if runner.stats.messages >= messages and runner.open_messages == 0:
            break  # every message received is landed and committed
        await asyncio.sleep(0.05)
    stop.set()
    await task


async def _exercise(rig: Rig, tmp_path: Path) -> tuple[SqliteEvidenceLog, dict[str, bytes]]:
    identity = AgentIdentity.generate("agent-q")
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    await rig.transport.ensure_topics([rig.topic], partitions=1)
    producer = rig.transport.producer()
    await producer.start()
    try:
        bad = await _publish_bad_and_good(producer, rig.topic, identity)
        runner = JobRunner(
            JobSettings(name="q", topics=(rig.topic,), group_id=rig.group, max_records=3),
            transport=rig.transport,
            lake=rig.lake,
            evidence=evidence,
            trusted=TrustedAgents({identity.agent_id: identity.public_key}),
            quarantine=rig.quarantine(producer, evidence),
        )
        await _run_job_until(runner, 8)
    finally:
        await producer.stop()
    assert runner.stats.quarantined == 6
    assert runner.stats.rows_landed == 16, "both good batches land, nothing of the bad ones"
    landed = rig.lake.read_table("clean")
    assert sorted(landed.column("seq").to_pylist()) == list(range(16))
    routes = [e.entry for e in evidence.read() if e.entry.event == EventType.ROUTE]
    assert sorted(r.attributes["reason"] for r in routes) == sorted(bad)
    for reason, value in bad.items():
        (entry,) = [r for r in routes if r.attributes["reason"] == reason]
        assert entry.subject == hashlib.sha256(value).hexdigest()
        assert entry.attributes["topic"] == rig.topic and entry.attributes["partition"] == 0
        assert 1 <= entry.attributes["offset"] <= 6
    # One append per landing: a unit's RECEIVE entries come right before the entries of what it made.
    logged = list(evidence.read())
    steps = [i for i in logged if i.entry.event == EventType.CONTENT_MODIFIED]
    assert steps
    for step in steps:
        before = logged[step.index - len(step.entry.inputs) : step.index]
        assert [i.entry.event for i in before] == [EventType.RECEIVE] * len(step.entry.inputs)
        assert sorted(i.entry.subject for i in before) == sorted(step.entry.inputs)
    return evidence, bad


async def test_runner_quarantines_bad_envelopes_in_a_folder(tmp_path: Path) -> None:
    rig = Rig(
        transport=EmbeddedTransport(tmp_path / "log", partitions=1),
        lake=Lake.local(tmp_path / "lake"),
        quarantine=lambda _p, ev: FolderQuarantine(tmp_path / "quarantine", ev, actor="job:q"),
        topic="tidm.samples",
        group="g",
    )
    evidence, bad = await _exercise(rig, tmp_path)
    kept = sorted((tmp_path / "quarantine" / "tidm.samples").glob("*.msg"))
    assert len(kept) == 6
    assert {p.read_bytes() for p in kept} == set(bad.values()), "quarantined bytes are kept unchanged"
    sidecars = [p.with_suffix(".json").read_text() for p in kept]
    assert any("tidm.samples[0]@1: hash-mismatch" in s for s in sidecars)
    evidence.close()


@pytest.mark.integration
async def test_runner_quarantines_bad_envelopes_to_a_kafka_topic(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    topic = unique_name("samples")
    transport = KafkaTransport(kafka_bootstrap, client_id="q")
    await transport.ensure_topics([quarantine_topic(topic)], partitions=1)
    rig = Rig(
        transport=transport,
        lake=Lake.s3(
            bucket=s3_bucket,
            endpoint=s3_config["endpoint"],
            access_key=s3_config["access_key"],
            secret_key=s3_config["secret_key"],
            region=s3_config["region"],
        ),
        quarantine=lambda p, ev: TopicQuarantine(p, ev, actor="job:q"),
        topic=topic,
        group=unique_name("group"),
    )
    evidence, bad = await _exercise(rig, tmp_path)
    consumer = transport.consumer([quarantine_topic(topic)], group_id=unique_name("audit"))
    await consumer.start()
    got: list = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < 6 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    assert sorted(m.header(HEADER_REASON).decode() for m in got) == sorted(bad)
    assert {m.value for m in got} == set(bad.values())
    detail = {m.header(HEADER_REASON).decode(): m.header(HEADER_DETAIL).decode() for m in got}
    assert detail["malformed-ipc"].startswith(f"{topic}[0]@4: malformed-ipc")
    evidence.close()
