"""The durable spool on its own and inside the agent: order, byte-identical resends, crash leftovers,
chain-head recovery, the full policies and their evidence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.fakes import MemoryProducer

from tidm.edge_agent import Agent, AgentSettings, BatchSettings
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.spool import ChainHead, DiskSpool, SpoolError
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity, TrustedAgents, open_envelope
from tidm.ingest.envelope import Provenance, SealedBatch, new_batch_id, seal
from tidm.ingest.transports.errors import TransportUnavailable
from tidm.semantics import samples_table

IDENTITY = AgentIdentity.generate("gw")


def _sealed(asset: str, first: int, n: int, prev: str = "") -> SealedBatch:
    table = samples_table(
        ts_us=[1_000 + first + i for i in range(n)],
        recv_ts_us=[2_000 + first + i for i in range(n)],
        asset_id=[asset] * n,
        signal=["s"] * n,
        value=[float(i) for i in range(n)],
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(first, first + n)),
    )
    prov = Provenance(
        agent_id="gw",
        site="s1",
        asset_id=asset,
        batch_id=new_batch_id(),
        sources=("src",),
        seq_first=first,
        seq_last=first + n - 1,
        rows=n,
        created_us=1,
        prev_batch_hash=prev,
    )
    return seal(table, prov, IDENTITY)


def _chain(n: int, rows: int = 5) -> list[tuple[SealedBatch, ChainHead]]:
    out, prev = [], ""
    for i in range(n):
        s = _sealed("pump", i * rows, rows, prev)
        prev = s.sha256
        out.append((s, ChainHead(prev, {"src": (i + 1) * rows}, {"pump": {"s": 1_000 + (i + 1) * rows - 1}})))
    return out


def _files(path: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix == suffix)


async def test_batches_come_back_in_order_and_byte_identical_after_a_reopen(tmp_path: Path) -> None:
    chain = _chain(4)
    spool = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    await spool.put(chain[:3])
    await spool.flush()
    await spool.put(chain[3:])
    await spool.flush()
    assert len(_files(tmp_path, ".sealed")) == 2, "one group file per group commit"
    closing = asyncio.Event()
    first = await spool.next(closing=closing)
    assert first is not None and first.sha256 == chain[0][0].sha256
    await spool.ack(first)
    spool.close()

    again = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    assert again.stats.batches_recovered == 3, "the acknowledged one is not sent again"
    assert again.head.prev_batch_hash == chain[-1][0].sha256 and again.head.next_seq == {"src": 20}
    closing.set()
    got = []
    while (item := await again.next(closing=closing)) is not None:
        got.append(item)
        await again.ack(item)
    for item, (sealed, _) in zip(got, chain[1:], strict=True):
        assert (item.value, item.sha256, item.key) == (sealed.value, sealed.sha256, sealed.key)
        assert list(item.headers) == sealed.headers()  # same hash, same signature: a resend is identical
    again.close()
    # Everything sent: older `.sent` files go at the next write or start; the newest stays for its head.
    assert not _files(tmp_path, ".sealed")
    third = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    assert _files(tmp_path, ".sent") == ["00000000000000000003.sent"]
    assert third.pending() == 0 and third.head.prev_batch_hash == chain[-1][0].sha256
    third.close()


async def test_torn_temp_files_are_removed_and_unacknowledged_batches_resent(tmp_path: Path) -> None:
    chain = _chain(3)
    spool = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    await spool.put(chain)
    await spool.flush()
    spool.close()  # a kill -9 leaves the same files: nothing is acknowledged
    (tmp_path / "00000000000000000009.open").write_bytes(b"TIDMSPL1\x00\x00")  # torn group write
    (tmp_path / "progress.log").write_bytes(b"A 0\nA 1")  # a torn last line counts as written
    spool = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    assert spool.stats.torn_removed == 1 and not _files(tmp_path, ".open")
    assert spool.pending() == 1 and spool.recovered()[0][1] == chain[2][0].sha256
    head = spool.head
    assert head.prev_batch_hash == chain[-1][0].sha256
    assert head.next_seq == {"src": 15} and head.last_ts == {"pump": {"s": 1_014}}
    spool.close()


async def test_a_corrupt_group_file_is_set_aside_counted_and_evidenced(tmp_path: Path) -> None:
    evidence = MemoryEvidenceLog()
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, evidence=evidence).open()
    chain = _chain(2)
    await spool.put(chain[:1])
    await spool.flush()
    await spool.put(chain[1:])
    await spool.flush()
    spool.close()
    seg = tmp_path / _files(tmp_path, ".sealed")[0]
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF
    seg.write_bytes(bytes(data))
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, evidence=evidence).open()
    assert spool.stats.batches_corrupt == 1 and spool.pending() == 1
    assert (tmp_path / "corrupt" / seg.name).exists()
    assert [e.entry.attributes["reason"] for e in evidence.read()] == ["spool-corrupt"]
    spool.close()


async def test_a_second_agent_cannot_open_the_same_spool(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10).open()
    with pytest.raises(SpoolError, match="in use by another agent"):
        DiskSpool(tmp_path, max_bytes=10).open()
    spool.close()


async def test_drop_oldest_loses_exactly_the_counted_and_evidenced_batches(tmp_path: Path) -> None:
    evidence = MemoryEvidenceLog()
    chain = _chain(10)
    size = len(chain[0][0].value)
    spool = DiskSpool(
        tmp_path, max_bytes=3 * size + size // 2, policy="drop_oldest", evidence=evidence
    ).open()
    for item in chain:
        await spool.put([item])
        await spool.flush()
    kept = []
    closing = asyncio.Event()
    closing.set()
    while (got := await spool.next(closing=closing)) is not None:
        kept.append(got.sha256)
        await spool.ack(got)
    drops = [e.entry for e in evidence.read() if e.entry.event == EventType.DROP]
    dropped = [d.subject for d in drops]
    assert spool.stats.batches_dropped == len(drops) == 7 and spool.stats.rows_dropped == 35
    assert dropped + kept == [s.sha256 for s, _ in chain], "what is not sent is exactly what was dropped"
    assert drops[0].attributes["seq_first"] == 0 and drops[0].attributes["seq_last"] == 4
    assert drops[0].attributes["asset"] == "pump" and drops[0].attributes["reason"] == "spool-full"
    spool.close()
    assert (tmp_path / "progress.log").read_text().count("D ") == 7
    again = DiskSpool(tmp_path, max_bytes=1 << 20).open()
    assert again.pending() == 0, "dropped batches stay dropped after a restart"
    again.close()


async def test_pause_waits_for_an_acknowledgement_instead_of_dropping(tmp_path: Path) -> None:
    chain = _chain(3)
    size = len(chain[0][0].value)
    spool = DiskSpool(tmp_path, max_bytes=size + size // 2, policy="pause").open()
    await spool.put(chain[:1])
    await spool.flush()
    blocked = asyncio.create_task(spool.put(chain[1:2]))
    await asyncio.sleep(0.05)
    assert not blocked.done() and spool.stats.waits_full == 1
    item = await spool.next(closing=asyncio.Event())
    assert item is not None
    await spool.ack(item)
    await asyncio.wait_for(blocked, timeout=5)
    assert spool.pending() == 1 and spool.stats.batches_dropped == 0
    spool.stop_waiting()  # a stopping agent writes whatever it still seals
    await spool.put(chain[2:])
    await spool.flush()
    assert spool.pending() == 2
    spool.close()


class ListSource:
    def __init__(self, samples: list[RawSample]) -> None:
        self._samples = samples

    @property
    def name(self) -> str:
        return "opc.tcp://eq:4840"

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        for i in range(0, len(self._samples), 7):
            emit(self.name, self._samples[i : i + 7])
            await asyncio.sleep(0)
        await stop.wait()


class DownProducer(MemoryProducer):
    async def send(self, topic, value, *, key=None, headers=()):  # type: ignore[no-untyped-def]
        raise TransportUnavailable(f"{topic}: broker down")


def _samples(asset: str, start: int, n: int) -> list[RawSample]:
    return [
        RawSample(asset, f"s{i % 3}", 10_000 + i, 20_000 + i, float(i), None, 0)
        for i in range(start, start + n)
    ]


async def _run(agent: Agent, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def test_agent_spools_while_the_transport_is_down_and_continues_the_chain_after_a_restart(
    tmp_path: Path,
) -> None:
    settings = AgentSettings(agent_id="gw", topic="t", batch=BatchSettings(max_rows=10, max_age_ms=20))
    evidence = MemoryEvidenceLog()
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, evidence=evidence).open()
    down = Agent(
        settings,
        identity=IDENTITY,
        producer=DownProducer(),
        evidence=evidence,
        sources=[ListSource(_samples("pump", 0, 60))],
        spool=spool,
    )
    down._drain_s = 0.3
    await _run(down, 0.3)
    assert down.stats.batches_published == 0 and down.stats.send_retries > 0
    assert down.stats.batches_left_unsent == spool.pending() >= 6
    spool.close()

    producer = MemoryProducer()
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, evidence=evidence).open()
    # The restarted source re-delivers the last sample (a re-subscription's initial value), then new ones.
    up = Agent(
        settings,
        identity=IDENTITY,
        producer=producer,
        evidence=evidence,
        sources=[ListSource(_samples("pump", 59, 31))],
        spool=spool,
    )
    await _run(up, 0.3)
    spool.close()
    assert up.stats.samples_repeated == 1
    trusted = TrustedAgents({"gw": IDENTITY.public_key})
    batches = [open_envelope(m, trusted) for m in producer.messages["t"]]
    seqs = [s for b in batches for s in b.table.column("seq").to_pylist()]
    assert seqs == list(range(90)), "spooled batches first, then new ones; seqs continue across the restart"
    ts = [t for b in batches for t in b.table.column("ts").cast("int64").to_pylist()]
    assert len(set(ts)) == 90
    prev = ""
    for b in batches:
        assert b.provenance.prev_batch_hash == prev, "one unbroken chain across the restart"
        prev = b.sha256
    creates = {e.entry.subject for e in evidence.read() if e.entry.event == EventType.CREATE}
    assert {b.sha256 for b in batches} <= creates
    assert not _files(tmp_path, ".sealed")


class GatedProducer(MemoryProducer):
    """Holds every send until the gate opens (a slow uplink)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, topic, value, *, key=None, headers=()):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        return await super().send(topic, value, key=key, headers=headers)


class PausingSource(ListSource):
    def __init__(self, samples: list[RawSample]) -> None:
        super().__init__(samples)
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


async def test_pause_policy_pauses_pausable_sources_and_loses_nothing(tmp_path: Path) -> None:
    settings = AgentSettings(agent_id="gw", topic="t", batch=BatchSettings(max_rows=10, max_age_ms=20))
    evidence = MemoryEvidenceLog()
    spool = DiskSpool(tmp_path, max_bytes=2_000, policy="pause", evidence=evidence).open()
    producer = GatedProducer()
    source = PausingSource(_samples("pump", 0, 200))
    agent = Agent(
        settings, identity=IDENTITY, producer=producer, evidence=evidence, sources=[source], spool=spool
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    for _ in range(1500):  # bounded: the agent's start (Arrow warm-up) can take seconds on a busy machine
        if agent.paused:
            break
        await asyncio.sleep(0.02)
    assert agent.paused and source.calls == ["pause"] and spool.stats.waits_full >= 1
    producer.gate.set()
    for _ in range(1500):
        if not agent.paused:
            break
        await asyncio.sleep(0.02)
    stop.set()
    stats = await asyncio.wait_for(task, timeout=10)
    spool.close()
    assert "resume" in source.calls and not agent.paused
    trusted = TrustedAgents({"gw": IDENTITY.public_key})
    seqs = [
        s for m in producer.messages["t"] for s in open_envelope(m, trusted).table.column("seq").to_pylist()
    ]
    assert seqs == list(range(200)) and stats.rows_published == 200


async def test_batches_taken_together_are_never_dropped_and_a_release_puts_them_back(tmp_path: Path) -> None:
    evidence = MemoryEvidenceLog()
    chain = _chain(8)
    size = len(chain[0][0].value)
    bound = 4 * size + size // 2
    spool = DiskSpool(tmp_path, max_bytes=bound, policy="drop_oldest", evidence=evidence).open()
    for item in chain[:4]:
        await spool.put([item])
    await spool.flush()
    closing = asyncio.Event()
    taken = await spool.next_many(3, closing=closing)
    assert [t.sha256 for t in taken] == [s.sha256 for s, _ in chain[:3]], "the oldest, in order"
    for item in chain[4:6]:  # over the bound: the oldest not in flight goes first
        await spool.put([item])
    await spool.flush()
    dropped = [e.entry.subject for e in evidence.read() if e.entry.event == EventType.DROP]
    assert dropped == [chain[3][0].sha256, chain[4][0].sha256], "the oldest ones not in flight"
    await spool.ack(taken[0])
    spool.release(taken[1:])  # their send failed: unsent again, first in line
    again = await spool.next_many(10, closing=closing)
    assert [t.sha256 for t in again] == [s.sha256 for s, _ in [chain[1], chain[2], chain[5]]]
    spool.close()


def test_group_header_provenance_is_the_sealed_text_either_way() -> None:
    # The header reuses the provenance JSON sealed into the batch; re-encoded, it is the same text.
    from tidm.edge_agent.spool import _provenance_json, _sealed_provenance

    sealed = _sealed("urn:a", 0, 3)
    assert sealed.provenance_json
    assert _sealed_provenance(sealed) == _provenance_json(sealed.provenance)
    bare = SealedBatch(sealed.value, sealed.sha256, sealed.signature, sealed.provenance)
    assert _sealed_provenance(bare) == sealed.provenance.to_json().decode("utf-8")
