import asyncio
from pathlib import Path

import pytest
from tests.fakes import MemoryProducer

from tidm.edge_agent import Agent, AgentSettings, BatchSettings
from tidm.edge_agent.batcher import Batcher
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity, TrustedAgents, open_envelope
from tidm.ingest.transports.errors import TransportUnavailable


class ListSource:
    """Emits a fixed list of samples in chunks, then idles until stopped."""

    def __init__(self, name: str, samples: list[RawSample], chunk: int = 7) -> None:
        self._name = name
        self._samples = samples
        self._chunk = chunk

    @property
    def name(self) -> str:
        return self._name

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        for i in range(0, len(self._samples), self._chunk):
            emit(self._name, self._samples[i : i + self._chunk])
            await asyncio.sleep(0)
        await stop.wait()


def _samples(asset: str, n: int) -> list[RawSample]:
    return [
        RawSample(
            asset,
            f"s{i % 3}",
            1_000 + i,
            2_000 + i,
            float(i) if i % 5 else None,
            None if i % 5 else "TXT",
            0 if i % 11 else 0x80000000,
        )
        for i in range(n)
    ]


def test_batcher_size_trigger_and_per_source_seq() -> None:
    b = Batcher(max_rows=4, max_age_ms=10_000)
    assert b.add("src-a", _samples("A", 3)) == []
    assert b.add("src-a", _samples("A", 1)) == ["A"]
    assert b.due() == ["A"]
    batch = b.take("A")
    assert batch is not None and batch.table.num_rows == 4
    assert batch.table.column("seq").to_pylist() == [0, 1, 2, 3]
    b.add("src-b", _samples("B", 2))
    batch_b = b.take("B")
    assert batch_b is not None and batch_b.table.column("seq").to_pylist() == [0, 1]
    assert b.take("B") is None


async def test_agent_publishes_every_sample_once_in_a_signed_chain() -> None:
    identity = AgentIdentity.generate("agent-x")
    producer = MemoryProducer()
    evidence = MemoryEvidenceLog()
    samples = _samples("pump", 95) + _samples("fan", 40)
    agent = Agent(
        AgentSettings(
            agent_id="agent-x", site="s1", topic="t", batch=BatchSettings(max_rows=10, max_age_ms=20)
        ),
        identity=identity,
        producer=producer,
        evidence=evidence,
        sources=[ListSource("opc.tcp://eq:4840", samples)],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0.2)
    stop.set()
    stats = await task
    trusted = TrustedAgents({"agent-x": identity.public_key})
    batches = [open_envelope(m, trusted) for m in producer.messages["t"]]
    assert stats.samples_in == stats.rows_published == 135
    seqs = sorted(s for b in batches for s in b.table.column("seq").to_pylist())
    assert seqs == list(range(135)), "every sample is published exactly once"
    prev = ""
    for b in batches:
        assert b.provenance.prev_batch_hash == prev
        assert b.message.key == b.provenance.asset_id.encode()
        prev = b.sha256
    events = [(e.entry.event, e.entry.subject) for e in evidence.read()]
    for b in batches:
        assert (EventType.CREATE, b.sha256) in events and (EventType.SEND, b.sha256) in events


async def test_agent_fails_loudly_when_the_transport_fails() -> None:
    class Broken(MemoryProducer):
        async def send(self, topic, value, *, key=None, headers=()):  # type: ignore[no-untyped-def]
            raise ConnectionError("broker gone")

    agent = Agent(
        AgentSettings(agent_id="a", batch=BatchSettings(max_rows=5, max_age_ms=10, max_pending=2)),
        identity=AgentIdentity.generate("a"),
        producer=Broken(),
        evidence=MemoryEvidenceLog(),
        sources=[ListSource("src", _samples("x", 100))],
    )
    with pytest.raises(ConnectionError, match="broker gone"):
        await asyncio.wait_for(agent.run(asyncio.Event()), timeout=5)


def test_chain_head_keeps_the_newest_source_timestamp_per_signal() -> None:
    import pyarrow as pa

    from tidm.edge_agent.batcher import AssetBatch
    from tidm.semantics import samples_table

    agent = Agent(
        AgentSettings(agent_id="a"),
        identity=AgentIdentity.generate("a"),
        producer=MemoryProducer(),
        evidence=MemoryEvidenceLog(),
        sources=[],
    )
    signals = ["s1", "s2", "s1", "s3", "s2", "s1", "s3"]
    ts = [5, 9, 7, None, 3, 6, -4]  # a null ts is skipped; a negative one never beats "unknown"
    table = samples_table(
        ts_us=pa.array(ts, type=pa.int64()),
        recv_ts_us=[0] * 7,
        asset_id=["A"] * 7,
        signal=signals,
        value=[1.0] * 7,
        value_text=[None] * 7,
        quality=[0] * 7,
        status_code=[0] * 7,
        seq=list(range(7)),
    )
    agent._head.last_ts = {"A": {"s2": 20, "s4": 1}}
    # Two chunks with their own dictionaries, one a slice: what a batch can be made of.
    parts = pa.concat_tables([table.slice(0, 3), table.slice(3)])
    agent._note_timestamps(AssetBatch("A", parts, ("src",), 0, 6))
    assert agent._head.last_ts == {"A": {"s1": 7, "s2": 20, "s4": 1}}
    agent._note_timestamps(AssetBatch("B", table.slice(1, 1), ("src",), 0, 0))
    assert agent._head.last_ts["B"] == {"s2": 9}


class _SyncCountingLog(MemoryEvidenceLog):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1


def test_the_disk_spool_syncs_evidence_without_keeping_its_agent_alive(tmp_path: Path) -> None:
    import gc
    import weakref

    from tidm.edge_agent.spool import DiskSpool

    evidence = _SyncCountingLog()
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, evidence=evidence).open()
    agent = Agent(
        AgentSettings(agent_id="a"),
        identity=AgentIdentity.generate("a"),
        producer=MemoryProducer(),
        evidence=evidence,
        sources=[],
        spool=spool,
    )
    before_delete = spool.before_delete
    assert before_delete is not None
    agent._unsynced = True
    before_delete()
    assert evidence.syncs == 1
    gc.disable()
    try:
        alive = weakref.ref(agent)
        del agent
        assert alive() is None  # freed at once: no reference cycle through the spool
    finally:
        gc.enable()
    before_delete()  # the agent is gone: the log is synced anyway before files are deleted
    assert evidence.syncs == 2
    spool.close()


class _AppendCountingLog(MemoryEvidenceLog):
    def __init__(self) -> None:
        super().__init__()
        self.send_appends = 0

    def append(self, entries):  # type: ignore[no-untyped-def]
        if entries and all(e.event == EventType.SEND for e in entries):
            self.send_appends += 1
        return super().append(entries)


async def test_a_backlog_goes_in_rounds_with_one_send_append_per_round_and_resumes_after_a_failure() -> None:
    class FailsOnce(MemoryProducer):
        """Refuses the 5th send once (a transient broker error), then accepts everything."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.gate = asyncio.Event()

        async def send(self, topic, value, *, key=None, headers=()):  # type: ignore[no-untyped-def]
            await self.gate.wait()  # a backlog builds up first
            self.calls += 1
            if self.calls == 5:
                raise TransportUnavailable("leader not available")
            return await super().send(topic, value, key=key, headers=headers)

    identity = AgentIdentity.generate("agent-r")
    producer = FailsOnce()
    evidence = _AppendCountingLog()
    agent = Agent(
        AgentSettings(agent_id="agent-r", topic="t", batch=BatchSettings(max_rows=5, max_age_ms=10)),
        identity=identity,
        producer=producer,
        evidence=evidence,
        sources=[ListSource("opc.tcp://eq:4840", _samples("pump", 200), chunk=5)],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0.3)
    producer.gate.set()
    await asyncio.sleep(1.0)
    stop.set()
    stats = await task
    trusted = TrustedAgents({"agent-r": identity.public_key})
    batches = [open_envelope(m, trusted) for m in producer.messages["t"]]
    assert stats.rows_published == 200 and len(batches) == 40 and stats.send_retries == 1
    assert [b.provenance.seq_first for b in batches] == [5 * i for i in range(40)], "in order, each once"
    sends = [e.entry for e in evidence.read() if e.entry.event == EventType.SEND]
    assert [s.subject for s in sends] == [b.sha256 for b in batches], "one SEND per batch, in order"
    assert [s.attributes["offset"] for s in sends] == list(range(40))
    assert evidence.send_appends < 40 / 2, "a backlog is recorded in rounds, not batch by batch"


async def test_a_sample_that_cannot_be_batched_stops_the_agent_after_sealing_what_came_before() -> None:
    # A status code out of range from a (third-party) source: the agent stops with a SourceError naming
    # it; the samples delivered before it are still sealed and published, the failed delivery is not.
    good = _samples("x", 14)
    bad = RawSample("x", "s9", 5_000, 6_000, 1.0, None, -1)
    identity = AgentIdentity.generate("a")
    producer = MemoryProducer()
    agent = Agent(
        AgentSettings(agent_id="a", topic="t", batch=BatchSettings(max_rows=50, max_age_ms=10_000)),
        identity=identity,
        producer=producer,
        evidence=MemoryEvidenceLog(),
        sources=[ListSource("src", [*good, *_samples("y", 3), bad], chunk=7)],
    )
    with pytest.raises(SourceError, match=r"source src: a sample of x/s9 cannot be batched"):
        await asyncio.wait_for(agent.run(asyncio.Event()), timeout=10)
    trusted = TrustedAgents({"a": identity.public_key})
    batches = [open_envelope(m, trusted) for m in producer.messages.get("t", [])]
    rows = sorted(
        (b.provenance.asset_id, ts) for b in batches for ts in b.table.column("ts").cast("int64").to_pylist()
    )
    assert rows == sorted(("x", s.ts_us) for s in good)
