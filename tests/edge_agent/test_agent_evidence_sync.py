"""The agent's group commit of evidence: synced before the spool deletes sent batches, and at stop."""

import asyncio
from pathlib import Path

from tests.fakes import MemoryProducer

from tidm.edge_agent import Agent, AgentSettings, BatchSettings
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.spool import DiskSpool
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity


class SyncedLog(MemoryEvidenceLog):
    """A memory log that records, at each `sync()`, how many entries it held and which `.sent`
    spool files existed (what the spool may delete right after)."""

    def __init__(self, spool_dir: Path) -> None:
        super().__init__()
        self.spool_dir = spool_dir
        self.syncs: list[tuple[int, set[str]]] = []

    def sync(self) -> None:
        self.syncs.append((self.size(), {p.name for p in self.spool_dir.glob("*.sent")}))


class ListSource:
    def __init__(self, samples: list[RawSample]) -> None:
        self._samples = samples
        self.done = asyncio.Event()

    @property
    def name(self) -> str:
        return "opc.tcp://eq:4840"

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        for i in range(0, len(self._samples), 10):
            emit(self.name, self._samples[i : i + 10])
            await asyncio.sleep(0.03)  # several group writes, so sent group files get replaced
        self.done.set()
        await stop.wait()


async def test_sent_batches_leave_the_spool_only_after_their_evidence_is_synced(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    evidence = SyncedLog(spool_dir)
    spool = DiskSpool(spool_dir, max_bytes=1 << 26, evidence=evidence).open()
    samples = [RawSample("pump", f"s{i % 3}", 1_000 + i, 2_000 + i, float(i), None, 0) for i in range(300)]
    source = ListSource(samples)
    agent = Agent(
        AgentSettings(agent_id="a", topic="t", batch=BatchSettings(max_rows=10, max_age_ms=5)),
        identity=AgentIdentity.generate("a"),
        producer=MemoryProducer(),
        evidence=evidence,
        sources=[source],
        spool=spool,
    )
    deleted: list[tuple[str, int]] = []  # (sent file, log size when the spool deleted it)
    unlink = Path.unlink

    def watched(path: Path, missing_ok: bool = False) -> None:
        if path.suffix == ".sent":
            deleted.append((path.name, evidence.size()))
        unlink(path, missing_ok=missing_ok)

    stop = asyncio.Event()
    try:
        Path.unlink = watched  # type: ignore[method-assign]
        task = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(source.done.wait(), timeout=60)
        stop.set()
        stats = await task
    finally:
        Path.unlink = unlink  # type: ignore[method-assign]
        spool.close()
    assert stats.batches_published == stats.batches_sealed > 3
    assert deleted, "sent group files were replaced while the agent ran"
    for name, size in deleted:
        # A sync saw this file (so ran after the batches in it were acknowledged and evidenced)...
        seen = [synced for synced, files in evidence.syncs if name in files]
        assert seen, f"{name} deleted without a sync after it was sent"
        # ...and every entry logged when the file went had been synced by then.
        assert max(seen) <= size
    sends = sum(1 for e in evidence.read() if e.entry.event == EventType.SEND)
    assert sends == stats.batches_published
    assert evidence.syncs[-1][0] == evidence.size(), "everything is synced when the agent returns"
