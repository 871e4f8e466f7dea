"""The agent process: sources -> batcher -> seal (provenance + signature) -> transport, with evidence.

Batches are sealed one after another so each names the hash of the agent's previous batch (the
provenance chain); they are published in that order and each is evidenced when collected and
again when the transport acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tidm.edge_agent.batcher import AssetBatch, Batcher
from tidm.edge_agent.config import AgentSettings
from tidm.edge_agent.sources.base import RawSample, Source
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.envelope import Provenance, SealedBatch, new_batch_id, seal
from tidm.ingest.identity import AgentIdentity
from tidm.ingest.transports.base import Producer

__all__ = ["Agent", "AgentStats"]

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    samples_in: int = 0
    batches_sealed: int = 0
    batches_published: int = 0
    rows_published: int = 0


def _now_us() -> int:
    return time.time_ns() // 1000


class Agent:
    """Runs sources, batches their samples per asset and publishes sealed batches in order."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        identity: AgentIdentity,
        producer: Producer,
        evidence: EvidenceLog,
        sources: Sequence[Source],
    ) -> None:
        self.settings = settings
        self._identity = identity
        self._producer = producer
        self._evidence = evidence
        self._sources = list(sources)
        self._batcher = Batcher(max_rows=settings.batch.max_rows, max_age_ms=settings.batch.max_age_ms)
        self._queue: asyncio.Queue[SealedBatch | None] = asyncio.Queue(maxsize=settings.batch.max_pending)
        self._full = asyncio.Event()
        self._prev_hash = ""
        self._publisher: asyncio.Task[None] | None = None
        self.stats = AgentStats()
        self.actor = f"agent:{settings.agent_id}"

    def _emit(self, source: str, samples: Sequence[RawSample]) -> None:
        if self._batcher.add(source, samples):
            self._full.set()
        self.stats.samples_in += len(samples)

    async def run(self, stop: asyncio.Event) -> AgentStats:
        """Collect and publish until `stop` is set; then flush every open batch and return."""
        source_stop = asyncio.Event()
        sources = [
            asyncio.create_task(s.run(self._emit, source_stop), name=f"source:{s.name}")
            for s in self._sources
        ]
        publisher = self._publisher = asyncio.create_task(self._publish_loop(), name="publisher")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=self.settings.batch.max_age_ms / 4000)
                self._full.clear()
                await self._seal_due(force=False)
                for task in [*sources, publisher]:
                    if task.done():
                        task.result()  # a failed source or publisher stops the agent with its error
        finally:
            source_stop.set()
            await asyncio.gather(*sources, return_exceptions=True)
            if not publisher.done():
                await self._seal_due(force=True)
                await self._put(None)
            await publisher
        return self.stats

    async def _seal_due(self, *, force: bool) -> None:
        for asset_id in self._batcher.due(force=force):
            batch = self._batcher.take(asset_id)
            if batch is not None:
                await self._put(await self._seal(batch))

    async def _put(self, item: SealedBatch | None) -> None:
        """Queue for the publisher; if the publisher has failed, raise its error instead of waiting."""
        assert self._publisher is not None, "the publisher runs while the agent runs"  # noqa: S101
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait([put, self._publisher], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._publisher.result()
            msg = "publisher stopped without an error while the queue was full"
            raise RuntimeError(msg)

    async def _seal(self, batch: AssetBatch) -> SealedBatch:
        provenance = Provenance(
            agent_id=self.settings.agent_id,
            site=self.settings.site,
            asset_id=batch.asset_id,
            batch_id=new_batch_id(),
            sources=batch.sources,
            seq_first=batch.seq_first,
            seq_last=batch.seq_last,
            rows=batch.table.num_rows,
            created_us=_now_us(),
            prev_batch_hash=self._prev_hash,
        )
        sealed = await asyncio.to_thread(seal, batch.table, provenance, self._identity)
        self._prev_hash = sealed.sha256
        self.stats.batches_sealed += 1
        self._evidence.append(
            [
                EvidenceEntry(
                    event=EventType.CREATE,
                    subject=sealed.sha256,
                    actor=self.actor,
                    time_us=provenance.created_us,
                    attributes={
                        "batch_id": provenance.batch_id,
                        "asset": provenance.asset_id,
                        "site": provenance.site,
                        "rows": provenance.rows,
                        "seq_first": provenance.seq_first,
                        "seq_last": provenance.seq_last,
                        "sources": list(provenance.sources),
                        "prev_batch_hash": provenance.prev_batch_hash,
                    },
                )
            ]
        )
        return sealed

    async def _publish_loop(self) -> None:
        while True:
            sealed = await self._queue.get()
            if sealed is None:
                return
            delivery = await self._producer.send(
                self.settings.topic, sealed.value, key=sealed.key, headers=sealed.headers()
            )
            self.stats.batches_published += 1
            self.stats.rows_published += sealed.provenance.rows
            self._evidence.append(
                [
                    EvidenceEntry(
                        event=EventType.SEND,
                        subject=sealed.sha256,
                        actor=self.actor,
                        time_us=_now_us(),
                        inputs=(sealed.sha256,),
                        attributes={
                            "batch_id": sealed.provenance.batch_id,
                            "topic": delivery.topic,
                            "partition": delivery.partition,
                            "offset": delivery.offset,
                        },
                    )
                ]
            )
