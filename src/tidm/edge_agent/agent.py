"""The agent process: sources -> batcher -> seal (provenance, signature) -> spool -> transport.

Batches are sealed one after another so each names the hash of the agent's previous batch (the
provenance chain). Each sealed batch is put in the spool (on disk when one is configured) before it
is sent, and leaves the spool only once the transport acknowledged it; the publisher sends in spool
order and retries transient transport errors with back-off, so a broker outage only grows the spool.

What a restart continues from comes from the spool's chain head: the previous batch hash, the next
`seq` per source and the last source timestamp per (asset, signal). So:

* `seq` is assigned when a batch is sealed into the spool, per source, in seal order. The seqs of a
  source are therefore contiguous across restarts: a sample that was still in memory when the
  process died never got a durable seq, and a hole in the seqs downstream always means lost data.
* an OPC UA re-subscription delivers every item's current value again; a sample whose source
  timestamp equals the last one seen for its (asset, signal) is that same sample, so it is counted
  in `samples_repeated` and not batched twice.

Without a spool folder the same code runs on an in-memory spool (bounded by `batch.max_pending`
batches, `pause` policy): nothing survives a crash then, which `tidm agent run` warns about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import pyarrow as pa

from tidm.edge_agent.batcher import AssetBatch, Batcher
from tidm.edge_agent.config import AgentSettings
from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample, Source
from tidm.edge_agent.spool import ChainHead, MemorySpool, Spool, SpooledBatch
from tidm.errors import Transient
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.envelope import Provenance, SealedBatch, new_batch_id, seal
from tidm.ingest.identity import AgentIdentity
from tidm.ingest.transports.base import Delivery, Producer
from tidm.semantics import samples_table

__all__ = ["Agent", "AgentStats", "PausableSource"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_DRAIN_S = 30.0
_RETRY_INITIAL_S = 0.2
_SEND_ROUND = 64  # batches sent per round at most (one evidence append per round)
_RETRY_MAX_S = 5.0


@dataclass
class AgentStats:
    samples_in: int = 0
    samples_repeated: int = 0  # re-deliveries of an already batched sample (same asset, signal, ts)
    batches_sealed: int = 0
    batches_published: int = 0
    rows_published: int = 0
    send_retries: int = 0
    batches_left_unsent: int = 0  # still in the spool when the agent stopped (sent on the next start)


@runtime_checkable
class PausableSource(Protocol):
    """A source that can hold acquisition while the spool is full (`pause` policy).

    An OPC UA source does it by turning publishing off on its subscription: the server then keeps
    notifications in each monitored item's queue (`queue_size` per item; beyond that the server
    discards the oldest and sets the overflow bit, so a pause must stay shorter than
    queue_size x sampling interval to lose nothing). Sources without it keep delivering, and the
    agent holds their samples in memory until the spool has room again.
    """

    def pause(self) -> None: ...

    def resume(self) -> None: ...


def _now_us() -> int:
    return time.time_ns() // 1000


def _buffer_values(array: pa.Array) -> np.ndarray:
    """A fixed-width integer (or timestamp) array's values, read from its data buffer (no copy; the
    slots of null rows hold arbitrary values)."""
    kind = "u" if pa.types.is_unsigned_integer(array.type) else "i"
    dtype = np.dtype(f"{kind}{array.type.bit_width // 8}")
    data = np.frombuffer(array.buffers()[1], dtype=dtype, count=array.offset + len(array))
    return data[array.offset :]


def _valid_mask(array: pa.Array) -> np.ndarray:
    valid: np.ndarray = array.is_valid().to_numpy(zero_copy_only=False)
    return valid


class Agent:
    """Runs sources, batches their samples per asset, spools sealed batches and publishes them in order."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        identity: AgentIdentity,
        producer: Producer,
        evidence: EvidenceLog,
        sources: Sequence[Source],
        desensitizer: Desensitizer | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        # Built from settings.policy unless given; None = no policy, batches leave as collected.
        self._desensitizer = desensitizer or Desensitizer.from_settings(settings)
        self._identity = identity
        self._producer = producer
        self._evidence = evidence
        self._sources = list(sources)
        self.actor = f"agent:{settings.agent_id}"
        self._batcher = Batcher(max_rows=settings.batch.max_rows, max_age_ms=settings.batch.max_age_ms)
        self._spool: Spool = spool or MemorySpool(
            max_batches=settings.batch.max_pending, evidence=evidence, actor=self.actor
        )
        spool_settings = getattr(settings, "spool", None)
        self._drain_s = float(getattr(spool_settings, "drain_timeout_s", _DEFAULT_DRAIN_S))
        self._head: ChainHead = self._spool.head
        # The last source timestamp per (asset, signal) seen by _emit: a sample equal to it is a repeat.
        self._seen: dict[str, dict[str, int]] = {a: dict(s) for a, s in self._head.last_ts.items()}
        # Which source each row of an open batch came from, in the batcher's row order (seq per source).
        self._row_sources: dict[str, list[str]] = {}
        self._full = asyncio.Event()
        self._closing = asyncio.Event()
        self._paused = False
        self._publisher: asyncio.Task[None] | None = None
        # Whether evidence was appended since the last sync() (a log opened with durability="process"
        # keeps appends through a crash of the process; a sync makes them survive a power cut too).
        self._unsynced = False
        self.stats = AgentStats()
        if hasattr(self._spool, "before_delete"):
            # A group write deletes the files of sent batches only once their evidence is durable.
            self._spool.before_delete = self._before_delete_callback()

    @property
    def spool(self) -> Spool:
        return self._spool

    @property
    def queue_depth(self) -> int:
        """Sealed batches waiting for the publisher (a metrics/health hook)."""
        return self._spool.pending()

    @property
    def publisher_alive(self) -> bool:
        """True while the publisher task runs (a readiness hook)."""
        return self._publisher is not None and not self._publisher.done()

    @property
    def paused(self) -> bool:
        """True while acquisition is held because the spool is full (`pause` policy)."""
        return self._paused

    def _last_taken(self, asset_id: str, signal: str) -> int | None:
        """Source timestamp of the last sample taken for (asset, signal): sealed, or batched to be.
        After a restart that is the spool's chain head, so a backfill starts right after it."""
        return self._seen.get(asset_id, {}).get(signal)

    def _emit(self, source: str, samples: Sequence[RawSample]) -> None:
        self.stats.samples_in += len(samples)
        fresh: list[RawSample] = []
        for s in samples:
            seen = self._seen.setdefault(s.asset_id, {})
            if seen.get(s.signal) == s.ts_us:
                self.stats.samples_repeated += 1
                continue
            seen[s.signal] = s.ts_us
            fresh.append(s)
            self._row_sources.setdefault(s.asset_id, []).append(source)
        if not fresh:
            return
        try:
            full = self._batcher.add(source, fresh)
        except SourceError:
            # The batcher took none of them: neither do the row sources (the error stops the agent,
            # which still seals what was batched before).
            taken = Counter(s.asset_id for s in fresh)
            for asset_id, count in taken.items():
                del self._row_sources[asset_id][-count:]
            raise
        if full:
            self._full.set()

    async def run(self, stop: asyncio.Event) -> AgentStats:
        """Collect and publish until `stop` is set; then seal every open batch into the spool, send
        what the transport takes within the drain timeout, and return (the rest stays spooled)."""
        self._record_recovered()
        # The first Arrow conversion imports pandas inside pyarrow (seconds on a busy gateway): do it
        # now, off the loop, not on the first batch while notifications wait behind it.
        await asyncio.to_thread(self._warm_up)
        source_stop = asyncio.Event()
        for source in self._sources:
            # Sources that backfill from history (OPC UA) start after the last sample taken per signal.
            resume_from = getattr(source, "resume_from", None)
            if callable(resume_from):
                resume_from(self._last_taken)
        sources = [
            asyncio.create_task(s.run(self._emit, source_stop), name=f"source:{s.name}")
            for s in self._sources
        ]
        publisher = self._publisher = asyncio.create_task(self._publish_loop(), name="publisher")
        stopper = asyncio.create_task(self._unbound_on(stop), name="spool-unbound")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    # Capped so a stop request is seen promptly even with long batch ages.
                    await asyncio.wait_for(
                        self._full.wait(), timeout=min(self.settings.batch.max_age_ms / 4000, 0.5)
                    )
                self._full.clear()
                await self._seal_due(force=False)
                for task in [*sources, publisher]:
                    if task.done():
                        task.result()  # a failed source or publisher stops the agent with its error
        finally:
            source_stop.set()
            await asyncio.gather(*sources, return_exceptions=True)
            self._spool_unbound()
            try:
                if not publisher.done():
                    await self._seal_due(force=True)
            finally:
                self._closing.set()
                await self._finish_publisher(publisher)
                stopper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopper
        return self.stats

    def _warm_up(self) -> None:
        table = samples_table(
            ts_us=[0],
            recv_ts_us=[0],
            asset_id=["warm-up"],
            signal=["warm-up"],
            value=[0.0],
            value_text=[None],
            quality=[0],
            status_code=[0],
            seq=[0],
        )
        provenance = Provenance(
            agent_id=self.settings.agent_id,
            site=self.settings.site,
            asset_id="warm-up",
            batch_id=new_batch_id(),
            sources=(),
            seq_first=0,
            seq_last=0,
            rows=1,
            created_us=_now_us(),
        )
        seal(table, provenance, self._identity)

    async def _unbound_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._spool_unbound()

    def _spool_unbound(self) -> None:
        self._spool.stop_waiting()

    async def _finish_publisher(self, publisher: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(publisher), timeout=self._drain_s)
        except TimeoutError:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        await self._spool.flush()  # whatever was accepted is on disk before the agent returns
        await asyncio.to_thread(self._sync_evidence)
        self.stats.batches_left_unsent = self._spool.pending()
        if self.stats.batches_left_unsent:
            log.warning(
                "%d batch(es) not sent within %.1f s of stopping; they stay in the spool",
                self.stats.batches_left_unsent,
                self._drain_s,
            )

    def _record_recovered(self) -> None:
        """CREATE entries for spooled batches whose entry a crash may have kept from being written."""
        for provenance, sha256 in self._spool.recovered():
            self._evidence.append_once(self._create_entry(provenance, sha256, {}))

    # -- sealing --------------------------------------------------------------------------------------

    async def _seal_due(self, *, force: bool) -> None:
        if self._paused and not self._spool.full:
            self._pause_sources(False)  # checked every round: a paused source brings no batches
        batches = []
        for asset_id in self._batcher.due(force=force):
            batch = self._batcher.take(asset_id)
            rows = self._row_sources.pop(asset_id, [])
            if batch is not None:
                batches.append((batch, rows))
        if not batches:
            return
        sealed = await self._guard(asyncio.to_thread(self._seal_all, batches))
        if self._spool.full and not self._paused:
            self._pause_sources(True)
        try:
            spooled = await self._guard(self._spool.put([(s, h) for s, h, _ in sealed], force=force))
        finally:
            if self._paused and not self._spool.full:
                self._pause_sources(False)
        entries = []
        for (s, _, attributes), item in zip(sealed, spooled, strict=True):
            entries.append(self._create_entry(s.provenance, item.sha256, attributes))
        self._evidence.append(entries)
        self._unsynced = True
        self.stats.batches_sealed += len(spooled)

    def _split(self, batch: AssetBatch, rows: list[str]) -> list[tuple[AssetBatch, list[str]]]:
        """Cut a batch grown past max_rows (after a pause) into max_rows pieces."""
        n, size = batch.table.num_rows, self.settings.batch.max_rows
        if len(rows) != n:  # cannot happen: _emit records a source for every row it batches
            msg = f"{batch.asset_id}: {n} rows but {len(rows)} recorded sources"
            raise RuntimeError(msg)
        if n <= size:
            return [(batch, rows)]
        out = []
        for start in range(0, n, size):
            part = rows[start : start + size]
            table = batch.table.slice(start, size)
            out.append((AssetBatch(batch.asset_id, table, tuple(sorted(set(part))), 0, 0), part))
        return out

    def _seal_all(
        self, taken: Sequence[tuple[AssetBatch, list[str]]]
    ) -> list[tuple[SealedBatch, ChainHead, dict[str, Any]]]:
        """Split, number, desensitize and seal in chain order (in a thread: CPU work).

        The whole round is numbered and desensitized first, then sealed: each loop keeps its code and
        data warm (interleaved with sealing, the policy's many small Arrow steps cost about twice as
        much per batch). A taken batch grown past max_rows (a backlog) goes through the policy once,
        then is cut into its max_rows batches. Each batch's chain head still carries the seq counters
        as of that batch."""
        prepared = []
        for whole, whole_rows in taken:
            policy = self._desensitizer.prepare(whole.table) if self._desensitizer is not None else None
            start = 0
            for batch, rows in self._split(whole, whole_rows):
                table, first, last = self._number(batch.table, rows)
                next_seq = dict(self._head.next_seq)
                policy_fields: dict[str, Any] = {}
                attributes: dict[str, Any] = {}
                if policy is not None:
                    result = policy.piece(table, start)
                    table = result.table
                    policy_fields, attributes = result.provenance_fields(), result.evidence_attributes()
                start += batch.table.num_rows
                prepared.append((batch, table, first, last, next_seq, policy_fields, attributes))
        out = []
        for batch, table, first, last, next_seq, policy_fields, attributes in prepared:
            provenance = Provenance(
                agent_id=self.settings.agent_id,
                site=self.settings.site,
                asset_id=batch.asset_id,
                batch_id=new_batch_id(),
                sources=batch.sources,
                seq_first=first,
                seq_last=last,
                rows=table.num_rows,
                created_us=_now_us(),
                prev_batch_hash=self._head.prev_batch_hash,
                **policy_fields,
            )
            sealed = seal(table, provenance, self._identity)
            self._head.prev_batch_hash = sealed.sha256
            self._note_timestamps(batch)
            head = self._head.copy()
            head.next_seq = next_seq
            out.append((sealed, head, attributes))
        return out

    def _number(self, table: pa.Table, rows: list[str]) -> tuple[pa.Table, int, int]:
        """Give the rows their durable seq: per source, continuing from the chain head."""
        n = table.num_rows
        head = self._head.next_seq
        if len(set(rows)) == 1:
            start = head.get(rows[0], 0)
            seq = np.arange(start, start + n, dtype=np.uint64)
            head[rows[0]] = start + n
        else:
            seq = np.empty(n, dtype=np.uint64)
            for i, source in enumerate(rows):
                seq[i] = head.get(source, 0)
                head[source] = int(seq[i]) + 1
        idx = table.schema.get_field_index("seq")
        table = table.set_column(
            idx, table.schema.field(idx), pa.array(seq, type=table.schema.field(idx).type)
        )
        return table, int(seq.min()), int(seq.max())

    def _note_timestamps(self, batch: AssetBatch) -> None:
        """Raise the chain head's last source timestamp per (asset, signal) to the batch's newest.

        Vectorized: the newest timestamp per signal dictionary code in NumPy, then one comparison
        per signal of the dictionary (a handful), not one per row. Rows with a null `ts` (or a
        null signal) are skipped."""
        last = self._head.last_ts.setdefault(batch.asset_id, {})
        table = batch.table
        if table.num_rows == 0:
            return
        si, ti = table.schema.get_field_index("signal"), table.schema.get_field_index("ts")
        for record_batch in table.to_batches():  # aligned chunks of both columns
            signal, ts = record_batch.column(si), record_batch.column(ti)
            if not len(signal):
                continue
            codes = _buffer_values(signal.indices)
            micros = _buffer_values(ts)
            if signal.null_count or ts.null_count:
                valid = _valid_mask(signal) & _valid_mask(ts)
                codes, micros = codes[valid], micros[valid]
                if not codes.size:
                    continue
            names = signal.dictionary.to_pylist()
            newest = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(newest, codes, micros)
            present = np.bincount(codes, minlength=len(names)) > 0
            for name, t, seen in zip(names, newest.tolist(), present.tolist(), strict=True):
                if seen and t > last.get(name, -1):
                    last[name] = t

    def _create_entry(self, p: Provenance, sha256: str, attributes: dict[str, Any]) -> EvidenceEntry:
        return EvidenceEntry(
            event=EventType.CREATE,
            subject=sha256,
            actor=self.actor,
            time_us=p.created_us,
            attributes={
                "batch_id": p.batch_id,
                "asset": p.asset_id,
                "site": p.site,
                "rows": p.rows,
                "seq_first": p.seq_first,
                "seq_last": p.seq_last,
                "sources": list(p.sources),
                "prev_batch_hash": p.prev_batch_hash,
                **attributes,
            },
        )

    def _pause_sources(self, pause: bool) -> None:
        self._paused = pause
        log.warning("spool full: acquisition %s", "paused" if pause else "resumed")
        for source in self._sources:
            if isinstance(source, PausableSource):
                if pause:
                    source.pause()
                else:
                    source.resume()

    async def _guard(self, work: Awaitable[T]) -> T:
        """Await `work`; if the publisher fails meanwhile, raise its error instead of waiting on."""
        assert self._publisher is not None, "the publisher runs while the agent runs"  # noqa: S101
        task = asyncio.ensure_future(work)
        await asyncio.wait([task, self._publisher], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            self._publisher.result()  # raises the publisher's error
            self._spool_unbound()  # the publisher returned: nothing will free space any more
            return await task
        return task.result()

    # -- publishing -----------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        delay = _RETRY_INITIAL_S
        while True:
            # What is ready goes in one round: sent in order, then one evidence append for all of them,
            # then the spool acknowledgements.
            items = await self._spool.next_many(_SEND_ROUND, closing=self._closing)
            if not items:
                return
            sent: list[tuple[SpooledBatch, Delivery]] = []
            failure: Exception | None = None
            for item in items:
                try:
                    delivery = await self._producer.send(
                        self.settings.topic, item.value, key=item.key, headers=item.headers
                    )
                except Exception as exc:  # noqa: BLE001 - the batches sent before it are recorded first
                    failure = exc
                    break
                sent.append((item, delivery))
            if sent:
                self._sent(sent)
                for item, _ in sent:
                    await self._spool.ack(item)
            if failure is None:
                delay = _RETRY_INITIAL_S
                continue
            # The rest stays first in the spool; the same bytes go again after the back-off.
            self._spool.release(items[len(sent) :])
            if not isinstance(failure, Transient):
                raise failure
            self.stats.send_retries += 1
            failed = items[len(sent)].sha256[:12]
            log.warning("send of batch %s failed (%s); retrying in %.1f s", failed, failure, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _sent(self, sent: Sequence[tuple[SpooledBatch, Delivery]]) -> None:
        for item, _ in sent:
            self.stats.batches_published += 1
            self.stats.rows_published += item.provenance.rows
        # Appended before the spool records the acknowledgements: after a kill in between, the spool
        # still holds these batches and sends them again (receivers drop the copy by its SHA-256),
        # with SEND entries for that send; no sent batch is left without one. With a log opened
        # with durability="process" the append costs no fsync.
        now = _now_us()
        self._evidence.append(
            [
                EvidenceEntry(
                    event=EventType.SEND,
                    subject=item.sha256,
                    actor=self.actor,
                    time_us=now,
                    inputs=(item.sha256,),
                    attributes={
                        "batch_id": item.provenance.batch_id,
                        "topic": delivery.topic,
                        "partition": delivery.partition,
                        "offset": delivery.offset,
                    },
                )
                for item, delivery in sent
            ]
        )
        self._unsynced = True

    def _sync_evidence(self) -> None:
        """Make the appended evidence survive a power cut (stores opened with durability="process")."""
        sync = getattr(self._evidence, "sync", None)
        if sync is None or not self._unsynced:
            return
        self._unsynced = False
        sync()

    def _evidence_durable(self) -> None:
        """Sync the log before the spool deletes the files of sent batches (their local copy)."""
        self._sync_evidence()

    def _before_delete_callback(self) -> Callable[[], None]:
        """`_evidence_durable` as a callback for the spool that does not keep the agent alive.

        A spool holding the bound method would make agent and spool a reference cycle, and all the
        agent holds (its evidence log, the batches in flight) garbage that only a later pass of the
        cyclic collector frees. Should the agent be gone (it is not while it runs), the log is
        synced anyway: the files of sent batches never go before their evidence is durable."""
        method = weakref.WeakMethod(self._evidence_durable)
        evidence = self._evidence

        def before_delete() -> None:
            durable = method()
            if durable is not None:
                durable()
                return
            sync = getattr(evidence, "sync", None)
            if sync is not None:
                sync()

        return before_delete
