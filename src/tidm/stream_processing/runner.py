"""The stream job runner: a consumer-group member that verifies, transforms and lands samples.

Per partition it verifies each envelope on arrival (failures go to quarantine with evidence; chain
checks flag gaps and quarantine re-sent duplicates), groups the messages into *landing units*, runs
the job spec's selection and steps on each unit, writes one Parquet object per (output table, site,
asset, date) named from the unit's offset range, optionally re-publishes the clean result to a
Kafka topic, appends the evidence, and only then commits the offsets. A landing intent written
before the objects makes a restart re-land the same range under the same names. A unit's evidence
(the RECEIVE entries of its messages, then its landing and output entries) is one append, one
transaction, made durable (`sync`) before the commit.

Landing units are a function of the log alone, so an uninterrupted run, a crashed-and-resumed run
and a rebalanced run cut the same offset ranges and write the same objects:

* A unit starts at a committed offset (the first offset, or just past the previous unit).
* Message time (the Kafka record timestamp: CreateTime as the producer stamped it, or LogAppendTime;
  both are fixed in the log) is cut into windows of `unit_s`. A message whose window is *later than
  the latest window already in the open unit* closes the unit before it. A late message (older
  window) joins the open unit: it never closes one, so clocks skewed across producers sharing a
  partition do not shred units.
* Offsets are cut into aligned blocks of `unit_messages` (offset // unit_messages): a unit never
  spans two blocks, which bounds its size and memory whatever the timestamps do.
* Idle partitions: a unit whose successor has not arrived closes once fetches have found nothing
  new in the partition for `idle_s` (only fetches not cut short by `max_records` count, so a busy
  consumer does not mistake a starved partition for an idle one; a message arriving later simply
  starts the next unit). This is the one cut not derived from the log, so it is made durable:
  the landing intent records it before anything is written, the commit records it after, and a
  resumed or rebalanced member starts exactly there. (A from-scratch replay by a *new* group into
  the same lake could merge such a unit with its successor: give such a replay its own lake prefix.)
* Stopping (SIGTERM, revocation) never lands an open unit: a stop is a cut nobody else could
  reproduce. The next owner reads it again from the committed offset.
* Late messages never reopen a landed unit: they land in the unit their offset falls in.

Stateful steps (look-back): the spec declares `effective_lookback_s`. The context of a unit that
starts at offset f is the messages [g, f) where g is the first offset whose timestamp is >=
ts(f) - look-back (Kafka's offsets_for_times). A running member keeps that context in memory; a
member that gets a partition fetches its committed message, asks offsets_for_times, rewinds and
replays the context without emitting or evidencing it (context messages were verified, evidenced
or quarantined when first received). Steps run on context + unit; rows of the context (same asset,
signal, ts, seq) and rows generated from it (gap fill, resampling; or any row of a table without
`seq`, such as features, not later than the context's last sample of its signal) are dropped. The
output equals an uninterrupted run's as long as message timestamps of a partition do not go back
by more than the look-back (true for LogAppendTime, and for CreateTime of one agent per key).

Landing pipeline: a closed unit is queued on its partition; planning (selection, steps, cuts) runs
in a thread, one unit after another per partition, while the partition's worker lands the units in
offset order, so commits of a partition stay in order and each follows its own objects and
evidence. Partitions land concurrently, and planning the next unit overlaps landing the current one
(pyarrow, zstd and hashing release the GIL). At most `_DEPTH` units per partition are in flight;
closing one more waits. A stop lands the closed units first; an error halts the workers after the
landing in flight and is raised from `run`.

Backpressure: a transient lake failure (`LakeUnavailable`) pauses the partition and retries the
same unit with capped exponential back-off; nothing is committed until it lands, and other
partitions go on.

Output topic: when the spec names `output_topic`, each unit's clean result per (site, asset) is
published as a plain Arrow IPC stream (the job holds no agent key, so it is not signed): key = asset
id, headers `tidm-job`, `tidm-sha256` (of the value), `tidm-inputs` (comma-separated SHA-256 of the
input batches) and `tidm-source` (`topic[partition]@first-last`), with a SEND evidence entry. A
re-landed unit re-publishes identical bytes: downstream dedupes on `tidm-sha256`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.evidence.sqlite import SqliteEvidenceLog
from tidm.ingest.chain import ChainChecker
from tidm.ingest.envelope import VerifiedBatch, open_envelope
from tidm.ingest.errors import EnvelopeError
from tidm.ingest.evidence_sink import KafkaEvidenceSink
from tidm.ingest.identity import TrustedAgents
from tidm.ingest.quarantine import Quarantine
from tidm.ingest.transports.base import Consumer, Message, Producer, TopicPartition, Transport
from tidm.ingest.transports.errors import CommitFailedError, NotAssignedError
from tidm.semantics import CLEAN_SCHEMA_VERSION
from tidm.storage import Lake, LandedObject, LandingIntent, object_key
from tidm.storage.errors import LakeUnavailable
from tidm.stream_processing.spec import BoundStep, JobSpec, StepSpec, apply_steps
from tidm.stream_processing.steps import Flag, sort_for_lake, with_flags

if TYPE_CHECKING:
    from tidm.evidence.checkpoint import Signer

__all__ = [
    "HEADER_INPUTS",
    "HEADER_JOB",
    "HEADER_OUTPUT_SHA256",
    "HEADER_SOURCE",
    "JobRunner",
    "JobSettings",
    "JobStats",
]

log = logging.getLogger(__name__)

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)
HEADER_JOB = "tidm-job"
HEADER_OUTPUT_SHA256 = "tidm-sha256"
HEADER_INPUTS = "tidm-inputs"
HEADER_SOURCE = "tidm-source"
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 10.0
# Closed units per partition that may be planned or landing at once. Units of a partition land one
# after another (commits stay in offset order); planning the next overlaps the landing of the
# current one, and partitions land concurrently (pyarrow and zstd release the GIL).
# At `_DEPTH`, closing another unit waits for the oldest to land (bounded memory). The partition
# is not paused instead: a resumed partition waits for a new fetch, which costs more than the wait.
_DEPTH = 3


@dataclass(frozen=True)
class JobSettings:
    """The original, spec-less job: drop bad samples, land the rest. Kept for embedded wiring."""

    name: str
    topics: tuple[str, ...]
    group_id: str
    table: str = "clean"
    rejected_table: str = "rejected"
    max_records: int = 500
    poll_timeout_ms: int = 200
    unit_s: float = 10.0
    unit_messages: int = 1000
    idle_s: float = 0.5

    @property
    def actor(self) -> str:
        return f"job:{self.name}"

    def to_spec(self) -> JobSpec:
        """The equivalent job spec (one step: drop_bad_samples)."""
        return JobSpec(
            name=self.name,
            topics=self.topics,
            group_id=self.group_id,
            steps=(StepSpec(name="drop_bad_samples"),),
            table=self.table,
            rejected_table=self.rejected_table,
            max_records=self.max_records,
            unit_s=self.unit_s,
            unit_messages=self.unit_messages,
            idle_s=self.idle_s,
        )


@dataclass
class JobStats:
    messages: int = 0
    batches: int = 0
    quarantined: int = 0
    rows_in: int = 0
    rows_unselected: int = 0
    rows_landed: int = 0
    rows_rejected: int = 0
    rows_output: int = 0
    objects: int = 0
    units: int = 0
    commits: int = 0
    chain_flags: int = 0
    replayed: int = 0
    backpressure: int = 0
    published: int = 0
    landed_keys: list[str] = field(default_factory=list)


@dataclass
class _Received:
    """One message of a partition: where it sits, its log time, and its batch (None: quarantined).

    `receipt` is its RECEIVE entry, appended with the landing of its unit (one transaction)."""

    offset: int
    timestamp_ms: int
    batch: VerifiedBatch | None
    receipt: EvidenceEntry | None = None


@dataclass
class _Object:
    key: str
    table_name: str
    table: pa.Table
    inputs: tuple[str, ...]
    attributes: dict[str, Any]


@dataclass
class _Publish:
    asset: str
    table: pa.Table
    inputs: tuple[str, ...]


@dataclass
class _Unit:
    """A closed unit, planned once (steps run, tables cut), landed until it succeeds."""

    tp: TopicPartition
    first: int
    last: int
    objects: list[_Object]
    publish: list[_Publish]
    intent: LandingIntent | None
    rows_in: int = 0
    rows_unselected: int = 0
    receipts: list[EvidenceEntry] = field(default_factory=list)  # RECEIVE entries of its messages


@dataclass
class _Queued:
    """A closed unit of a partition waiting to land: its plan (a task) and how many messages it holds."""

    plan: asyncio.Future[_Unit]
    messages: int
    counted: bool = False


@dataclass
class _Partition:
    tp: TopicPartition
    intents: list[LandingIntent] = field(default_factory=list)
    open: list[_Received] = field(default_factory=list)
    open_max_window: int = -1
    history: list[_Received] = field(default_factory=list)
    probe: bool = False  # look-back: the first fetched message decides where to rewind
    replay_until: int | None = None  # rewinding: messages below this are context only
    quiet_since: float | None = None
    pending: _Unit | None = None  # a unit whose landing failed transiently
    held: list[_Received] = field(default_factory=list)  # verified, waiting behind `pending`
    inbox: list[Message] = field(default_factory=list)  # fetched (not verified) while `pending`
    retry_at: float = 0.0
    backoff: float = _BACKOFF_MIN_S
    queue: deque[_Queued] = field(default_factory=deque)  # closed units, landed in order by `worker`
    worker: asyncio.Task[None] | None = None
    landing: bool = False  # the worker is inside `_land` (a revocation waits for it to commit)
    refused: bool = False  # the last landing attempt was refused by the lake
    recovered: bool = False  # the pending unit landed: the poll loop replays what waited behind it
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _now_us() -> int:
    return time.time_ns() // 1000


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A plan whose unit is dropped (revocation, halt) may end in an error nobody awaits: read it here.
    if not future.cancelled():
        future.exception()


def _ipc_buffer(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _ipc_bytes(table: pa.Table) -> bytes:
    return bytes(_ipc_buffer(table).to_pybytes())


def _table_digest(table: pa.Table) -> str:
    """SHA-256 of a table's Arrow IPC bytes: the identity of an intermediate (clean) batch."""
    return hashlib.sha256(_ipc_buffer(table)).hexdigest()  # hashed in place, no copy to bytes


def _by_date(table: pa.Table, default: dt.date) -> list[tuple[dt.date, pa.Table]]:
    if table.num_rows == 0:
        return []
    if "ts" not in table.column_names:
        return [(default, table)]
    days = pc.cast(table.column("ts"), pa.date32())
    unique = pc.unique(days).to_pylist()
    if len(unique) == 1 and unique[0] is not None:
        return [(unique[0], table)]  # one day (the usual case): no copy through a filter
    out = []
    for day in unique:
        out.append((day, table.filter(pc.equal(days, pa.scalar(day, pa.date32())))))
    return sorted(out, key=lambda p: p[0])


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


_GENERATED = int(Flag.GAP_FILLED | Flag.RESAMPLED)


def _keys(table: pa.Table, extra: Sequence[str]) -> dict[str, pa.ChunkedArray | pa.Array]:
    cols: dict[str, pa.ChunkedArray | pa.Array] = {
        "asset_id": pc.cast(table.column("asset_id"), pa.string()),
        "signal": pc.cast(table.column("signal"), pa.string()),
    }
    for name in extra:
        cols[name] = table.column(name)
    return cols


def _after_context(table: pa.Table, context: pa.Table) -> pa.Table:
    """Rows of `table` that were not derived from `context` (the look-back replay).

    A samples row is the context's when the context holds the same (asset, signal, ts, seq); a
    generated row (gap fill, resampling) when it is not later than the context's last sample of its
    signal. So a late sample of the unit, older than the context, is still the unit's. Tables
    without `seq` (features) keep the rows later than the context's last sample per signal.
    """
    if context.num_rows == 0 or table.num_rows == 0:
        return table
    if not {"asset_id", "signal", "ts"} <= set(table.column_names):
        return table  # nothing to match on: a table that does not say what it derives from
    ts_type = table.column("ts").type
    last = pa.table(_keys(context, ["ts"])).group_by(["asset_id", "signal"]).aggregate([("ts", "max")])
    rows = pa.array(range(table.num_rows), type=pa.int64())
    exact = "seq" in table.column_names and "seq" in context.column_names
    extra = ["ts", "seq"] if exact else ["ts"]
    keyed = pa.table({**_keys(table, extra), "__row": rows})
    if "flags" in table.column_names:
        keyed = keyed.append_column("__flags", table.column("flags"))
    joined = keyed.join(last, ["asset_id", "signal"], join_type="left outer")
    if exact:
        seen = pa.table({**_keys(context, ["ts", "seq"]), "__ctx": pa.array([True] * context.num_rows)})
        joined = joined.join(seen, ["asset_id", "signal", "ts", "seq"], join_type="left outer")
    ts_max = joined.column("ts_max").cast(ts_type)
    later = pc.or_kleene(pc.is_null(ts_max), pc.greater(joined.column("ts"), ts_max))
    keep = later
    if exact:
        from_context = pc.fill_null(joined.column("__ctx"), False)
        if "__flags" in joined.column_names:
            bits = pc.bit_wise_and(joined.column("__flags"), pa.scalar(_GENERATED, pa.uint32()))
            generated = pc.not_equal(bits, pa.scalar(0, pa.uint32()))
        else:
            generated = pa.array([False] * joined.num_rows)
        keep = pc.and_(pc.invert(from_context), pc.or_(later, pc.invert(generated)))
    kept_rows = joined.filter(keep).column("__row")
    return table.take(pc.take(kept_rows, pc.sort_indices(kept_rows)))


def _lake_order(table: pa.Table) -> pa.Table:
    if {"signal", "ts"} <= set(table.column_names):
        return sort_for_lake(table)
    return table


class _ReceiptsView:
    """The evidence log as the chain checker reads it: `find` is "where did this job receive it".

    The checker looks up every batch it receives and keeps only the job's RECEIVE entries. A SQLite
    log answers that from its lookup index, without reading and parsing the agent's entries about
    the same batch (CREATE, SEND): the biggest share of the job's evidence cost otherwise. Other
    stores find in memory and are asked as they are. Everything else passes through.
    """

    def __init__(self, log: EvidenceLog, actor: str) -> None:
        self._log = log
        self._actor = actor

    def find(self, subject: str) -> list[LoggedEntry]:
        if isinstance(self._log, SqliteEvidenceLog):
            return self._log.find(subject, event=EventType.RECEIVE, actor=self._actor)
        if isinstance(self._log, KafkaEvidenceSink) and not self._log.can_read:
            # Append-only (no store to read): the checker's in-memory window still catches
            # duplicates within this run; earlier runs' receipts are not consulted.
            return []
        return self._log.find(subject)

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        return self._log.append(entries)

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        return self._log.append_once(entry)

    def size(self) -> int:
        return self._log.size()

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        return self._log.read(start, end)

    def by_input(self, subject: str) -> list[LoggedEntry]:
        return self._log.by_input(subject)

    def root(self, size: int | None = None) -> bytes:
        return self._log.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return self._log.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self._log.consistency_proof(old_size, new_size)

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        return self._log.checkpoint(signer, origin)

    def close(self) -> None:
        self._log.close()


class JobRunner:
    """Runs one job: consume, verify, cut units, run the spec's steps, land, evidence, commit."""

    def __init__(
        self,
        spec: JobSpec | JobSettings,
        *,
        transport: Transport,
        lake: Lake,
        evidence: EvidenceLog,
        trusted: TrustedAgents,
        quarantine: Quarantine,
        chain: ChainChecker | None = None,
        producer: Producer | None = None,
        poll_timeout_ms: int | None = None,
    ) -> None:
        if isinstance(spec, JobSettings):
            poll_timeout_ms = poll_timeout_ms or spec.poll_timeout_ms
            spec = spec.to_spec()
        self.spec = spec
        self.actor = f"job:{spec.name}"
        self._steps: list[BoundStep] = spec.bind()
        self._lookback_ms = int(spec.effective_lookback_s * 1000)
        self._unit_ms = max(1, int(spec.unit_s * 1000))
        self._poll_timeout_ms = poll_timeout_ms or 200
        # Provenance chain checks per agent (duplicates quarantined, gaps/reorders flagged in evidence).
        self.chain = chain or ChainChecker(actor=self.actor, evidence=_ReceiptsView(evidence, self.actor))
        self._transport = transport
        self._lake = lake
        self._evidence = evidence
        self._trusted = trusted
        self._quarantine = quarantine
        self._producer = producer
        self._consumer: Consumer | None = None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._fresh: set[TopicPartition] = set()
        self._inflight = 0  # messages of units being planned or landed
        self._halting = False  # workers stop after the landing in flight (an error is propagating)
        self.stats = JobStats()

    # -- public --

    @property
    def open_messages(self) -> int:
        """Messages received but not landed yet (open units and units waiting for the sink)."""
        return self._inflight + sum(
            len(p.open) + len(p.held) + len(p.inbox) + (p.pending is not None) for p in self._parts.values()
        )

    async def run(self, stop: asyncio.Event) -> JobStats:
        """Consume until `stop` is set, then leave the group; open units are left to the next owner."""
        own_producer = None
        if self.spec.output_topic and self._producer is None:
            await self._transport.ensure_topics([self.spec.output_topic], partitions=1)
            own_producer = self._producer = self._transport.producer()
            await own_producer.start()
        consumer = self._transport.consumer(
            self.spec.topics, group_id=self.spec.group, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self._consumer = consumer
        await consumer.start()
        self._halting = False
        try:
            while not stop.is_set():
                await self.poll_once(consumer)
            # Closed units land (as they would have without the pipeline); open ones are left.
            await self._drain()
            self._raise_failed()
        finally:
            self._halting = True
            await self._drain()
            await consumer.stop()
            self._consumer = None
            if own_producer is not None:
                await own_producer.stop()
                self._producer = None
        return self.stats

    async def poll_once(self, consumer: Consumer) -> None:
        """One round: resume what the sink held up, fetch, verify, cut units and hand them to landing."""
        self._raise_failed()
        await self._retry_pending(consumer)
        fetched = await consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self.spec.max_records)
        await self._setup_fresh(consumer)
        now = time.monotonic()
        complete = sum(len(r) for r in fetched.values()) < self.spec.max_records
        for tp in sorted(fetched):
            part = self._parts.get(tp)
            records = fetched[tp]
            if part is None or not records:
                continue
            part.quiet_since = None
            if part.pending is not None:
                part.inbox.extend(records)
                continue
            await self._take(consumer, part, records)
        for tp, part in sorted(self._parts.items()):
            if tp in fetched or not complete or part.pending is not None:
                continue
            # An empty fetch that was not cut short by max_records: nothing new in this partition.
            if part.quiet_since is None:
                part.quiet_since = now
            elif part.open and self._idle_closes(part, now):
                await self._close(consumer, part)

    # -- assignment --

    async def _on_assign(self, tps: frozenset[TopicPartition]) -> None:
        self._fresh.update(tps)

    async def _on_revoke(self, tps: frozenset[TopicPartition]) -> None:
        for tp in tps:
            part = self._parts.pop(tp, None)
            self._fresh.discard(tp)
            if part is None:
                continue
            if part.open or part.queue:
                log.info(
                    "%s: revoked with %d message(s) not landed; the next owner re-reads",
                    tp,
                    len(part.open) + sum(q.messages for q in part.queue),
                )
            # Wait for a landing in flight, so it commits before the partition goes to its next owner.
            await self._stop_worker(part)

    async def _setup_fresh(self, consumer: Consumer) -> None:
        assigned = consumer.assignment()
        # A transport without callbacks (or a missed one) is caught by comparing assignments.
        for tp in list(self._parts):
            if tp not in assigned:
                await self._stop_worker(self._parts.pop(tp))
        fresh = (self._fresh | (assigned - self._parts.keys())) & assigned
        self._fresh.clear()
        for tp in sorted(fresh):
            committed = await consumer.committed(tp)
            start = committed or 0
            intents = []
            for intent in self._lake.pending_intents(tp.topic, tp.partition):
                if intent.last < start:
                    self._lake.clear_intent(intent)  # landed and committed; only the clean-up was lost
                elif intent.first >= start:
                    intents.append(intent)
            if intents:
                log.info("%s: resuming %d landing intent(s) from %d", tp, len(intents), intents[0].first)
            self._parts[tp] = _Partition(tp, intents=intents, probe=self._lookback_ms > 0)

    # -- arrival --

    async def _take(self, consumer: Consumer, part: _Partition, records: list[Message]) -> None:
        tp = part.tp
        if part.probe:
            part.probe = False
            first = records[0]
            target = first.timestamp_ms - self._lookback_ms
            found = (await consumer.offsets_for_times({tp: target})).get(tp)
            if found is not None and found < first.offset:
                log.info(
                    "%s: look-back %d ms: replaying %d..%d as context",
                    tp,
                    self._lookback_ms,
                    found,
                    first.offset - 1,
                )
                consumer.seek(tp, found)
                part.replay_until = first.offset
                return  # these records come again after the context
        fresh: list[Message] = []
        for m in records:
            if part.replay_until is not None and m.offset < part.replay_until:
                part.history.append(_Received(m.offset, m.timestamp_ms, self._open_quietly(m)))
                self.stats.replayed += 1
            else:
                part.replay_until = None
                fresh.append(m)
        if not fresh:
            return
        self.stats.messages += len(fresh)
        batches = await self._verify(fresh)
        for m in fresh:
            batch, receipt = batches.get(m.offset, (None, None))
            await self._add(consumer, part, _Received(m.offset, m.timestamp_ms, batch, receipt))

    def _open_quietly(self, message: Message) -> VerifiedBatch | None:
        """A context message: verified again, but it was evidenced (or quarantined) when first received."""
        try:
            return open_envelope(message, self._trusted)
        except EnvelopeError:
            return None

    def _window(self, timestamp_ms: int) -> int:
        return timestamp_ms // self._unit_ms

    def _forced(self, part: _Partition) -> LandingIntent | None:
        """A landing intent that fixes the range of the open unit (a cut recorded before a crash)."""
        if part.open and part.intents and part.intents[0].first == part.open[0].offset:
            return part.intents[0]
        return None

    async def _add(self, consumer: Consumer, part: _Partition, rec: _Received) -> None:
        if part.pending is not None:
            part.held.append(rec)  # the sink pushed back: wait, in order, behind the pending unit
            return
        window = self._window(rec.timestamp_ms)
        if part.open and self._forced(part) is None and window > part.open_max_window:
            await self._close(consumer, part)
            if part.pending is not None:
                part.held.append(rec)
                return
        part.open.append(rec)
        part.open_max_window = max(part.open_max_window, window)
        forced = self._forced(part)
        if forced is not None:
            if rec.offset >= forced.last:
                await self._close(consumer, part)
        elif (rec.offset + 1) % self.spec.unit_messages == 0:
            await self._close(consumer, part)

    def _idle_closes(self, part: _Partition, now: float) -> bool:
        if self._forced(part) is not None or part.quiet_since is None:
            return False
        return now - part.quiet_since >= self.spec.idle_s

    async def _verify(self, records: Sequence[Message]) -> dict[int, tuple[VerifiedBatch, EvidenceEntry]]:
        """Verify envelopes; return each verified batch by offset with its RECEIVE entry.

        The RECEIVE entries are appended with the landing of their unit, in the same transaction as
        its other entries and before its offset commit: a message whose unit does not land (stop,
        crash, revocation) is read, verified and received again by the next owner. Chain flags are
        appended here, as they come.
        """
        ok: dict[int, tuple[VerifiedBatch, EvidenceEntry]] = {}
        flags = []
        for message in records:
            try:
                batch = open_envelope(message, self._trusted)
                flags.extend(self.chain.observe(batch))
            except EnvelopeError as exc:
                log.warning("quarantined %s: %s", message.where(), exc)
                await self._quarantine.put(message, exc)
                self.stats.quarantined += 1
                continue
            ok[message.offset] = (
                batch,
                EvidenceEntry(
                    event=EventType.RECEIVE,
                    subject=batch.sha256,
                    actor=self.actor,
                    time_us=_now_us(),
                    inputs=(batch.sha256,),
                    attributes={
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "agent": batch.provenance.agent_id,
                        "batch_id": batch.provenance.batch_id,
                        "verified": "sha256+ed25519",
                    },
                ),
            )
        flags.extend(self.chain.expire())
        for flag in flags:
            log.warning(
                "chain %s, agent %s, batch %s: %s", flag.kind, flag.agent_id, flag.subject, flag.detail
            )
        self.stats.chain_flags += len(flags)
        if flags:
            self._evidence.append(self.chain.entries(flags))
        self.stats.batches += len(ok)
        return ok

    # -- units --

    def _context(self, part: _Partition, first: _Received) -> list[_Received]:
        """The look-back context of a unit starting at `first`; trims what no later unit needs."""
        if self._lookback_ms <= 0:
            return []
        target = first.timestamp_ms - self._lookback_ms
        start = next((i for i, r in enumerate(part.history) if r.timestamp_ms >= target), len(part.history))
        del part.history[:start]
        return list(part.history)

    async def _close(self, consumer: Consumer, part: _Partition) -> None:
        records, part.open = part.open, []
        part.open_max_window = -1
        if not records:
            return
        context = self._context(part, records[0])
        if self._lookback_ms > 0:
            part.history.extend(records)
        forced = self._forced_for(part, records[0].offset)
        while len(part.queue) >= _DEPTH and part.worker is not None and not part.worker.done():
            part.changed.clear()
            await part.changed.wait()
        self._raise_failed()
        if self._parts.get(part.tp) is not part:
            return  # revoked while waiting: the next owner reads the unit again
        previous = part.queue[-1].plan if part.queue else None
        plan = asyncio.ensure_future(self._plan_after(previous, part.tp, records, context, forced))
        plan.add_done_callback(_retrieve)
        part.queue.append(_Queued(plan, len(records)))
        self._inflight += len(records)
        self._start_worker(consumer, part)

    async def _plan_after(
        self,
        previous: asyncio.Future[_Unit] | None,
        tp: TopicPartition,
        records: Sequence[_Received],
        context: Sequence[_Received],
        intent: LandingIntent | None,
    ) -> _Unit:
        """Plan a unit in a thread after the partition's previous one (steps see units in order)."""
        if previous is not None:
            await asyncio.wait([previous])
        return await asyncio.to_thread(self._plan, tp, records, context, intent)

    # -- the landing pipeline --

    def _start_worker(self, consumer: Consumer, part: _Partition) -> None:
        if part.worker is None or part.worker.done():
            if part.worker is not None and part.worker.done() and not part.worker.cancelled():
                if part.worker.exception() is not None:
                    return  # the failure is raised by the poll loop
            part.worker = asyncio.create_task(self._work(consumer, part))
            part.worker.add_done_callback(_retrieve)  # raised by `_raise_failed`, never just logged

    async def _work(self, consumer: Consumer, part: _Partition) -> None:
        """Land the partition's closed units one after another; retry a refused one after its back-off."""
        try:
            while part.queue and not self._halting and self._parts.get(part.tp) is part:
                head = part.queue[0]
                unit = await head.plan
                if not head.counted:
                    head.counted = True
                    self.stats.rows_in += unit.rows_in
                    self.stats.rows_unselected += unit.rows_unselected
                if self._halting or self._parts.get(part.tp) is not part:
                    return
                retry = part.pending is unit
                part.refused = False
                part.landing = True
                try:
                    await self._land(consumer, part, unit)
                finally:
                    part.landing = False
                if part.refused:
                    # Paused by `_land`; what arrives meanwhile waits behind the unit (held, inbox).
                    await asyncio.sleep(max(0.0, part.retry_at - time.monotonic()))
                    continue
                part.queue.popleft()
                self._inflight -= head.messages
                part.changed.set()
                if retry:
                    log.info("%s: lake back; resuming the partition", part.tp)
                    part.recovered = True
                    try:
                        consumer.resume([part.tp])
                    except NotAssignedError:
                        return
        finally:
            part.changed.set()

    async def _stop_worker(self, part: _Partition) -> None:
        """Let a landing in flight finish (it commits); drop the units not started."""
        worker = part.worker
        if worker is not None and not worker.done():
            if not part.landing:
                worker.cancel()
            await asyncio.wait([worker])
        self._inflight -= sum(q.messages for q in part.queue)
        part.queue.clear()
        part.changed.set()

    async def _drain(self) -> None:
        """Wait for every partition's closed units to land (or, when halting, for landings in flight)."""
        for part in list(self._parts.values()):
            worker = part.worker
            if worker is None or worker.done():
                continue
            if self._halting or part.pending is not None:
                if not part.landing:
                    worker.cancel()
            await asyncio.wait([worker])

    def _raise_failed(self) -> None:
        """Re-raise an error of a landing worker (a crash of the job, not a refusal of the sink)."""
        for part in self._parts.values():
            worker = part.worker
            if worker is not None and worker.done() and not worker.cancelled():
                exc = worker.exception()
                if exc is not None:
                    raise exc

    def _forced_for(self, part: _Partition, first: int) -> LandingIntent | None:
        if part.intents and part.intents[0].first == first:
            return part.intents.pop(0)
        return None

    def _plan(
        self,
        tp: TopicPartition,
        records: Sequence[_Received],
        context: Sequence[_Received],
        intent: LandingIntent | None,
    ) -> _Unit:
        """Select, run the steps per (site, asset) group, and cut the outputs into lake objects."""
        first, last = records[0].offset, records[-1].offset
        default_day = dt.datetime.fromtimestamp(records[0].timestamp_ms / 1000, tz=dt.UTC).date()
        groups: dict[tuple[str, str], list[VerifiedBatch]] = defaultdict(list)
        for r in records:
            if r.batch is not None:
                groups[(r.batch.provenance.site, r.batch.provenance.asset_id)].append(r.batch)
        context_groups: dict[tuple[str, str], list[VerifiedBatch]] = defaultdict(list)
        for r in context:
            if r.batch is not None:
                context_groups[(r.batch.provenance.site, r.batch.provenance.asset_id)].append(r.batch)
        objects: list[_Object] = []
        publish: list[_Publish] = []
        names = ",".join(s.name for s in self._steps)
        rows_in = rows_unselected = 0
        for (site, asset), members in sorted(groups.items()):
            table, unselected = self._selected(members)
            ctx, _ = self._selected(context_groups.get((site, asset), []))
            rows_in += table.num_rows + unselected
            rows_unselected += unselected
            inputs = tuple(m.sha256 for m in members)
            if table.num_rows == 0:
                continue
            outcome = apply_steps(_concat([ctx, table]) if ctx.num_rows else table, self._steps)
            counts: dict[str, Any] = {"unselected": unselected}
            for step_key, step_counts in outcome.counts.items():
                counts.update({f"{step_key}.{k}": v for k, v in step_counts.items()})
            outputs: list[tuple[str, pa.Table]] = [
                (self.spec.table, _after_context(outcome.kept, ctx)),
                (self.spec.rejected_table, _after_context(_concat(outcome.rejected), ctx)),
            ]
            for name, tables in sorted(outcome.outputs.items()):
                outputs.append((name, _after_context(_concat(tables), ctx)))
            attributes = {
                "step": names,
                "context_batches": len(context_groups.get((site, asset), [])),
                **counts,
            }
            for name, result in outputs:
                for day, part_table in _by_date(result, default_day):
                    key = object_key(
                        name,
                        site=site,
                        asset=asset,
                        date=day,
                        topic=tp.topic,
                        partition=tp.partition,
                        first=first,
                        last=last,
                    )
                    objects.append(_Object(key, name, _lake_order(part_table), inputs, attributes))
            if self.spec.output_topic and outputs[0][1].num_rows:
                publish.append(_Publish(asset, _lake_order(outputs[0][1]), inputs))
        receipts = [r.receipt for r in records if r.receipt is not None]
        return _Unit(tp, first, last, objects, publish, intent, rows_in, rows_unselected, receipts)

    def _selected(self, members: Sequence[VerifiedBatch]) -> tuple[pa.Table, int]:
        """The members' rows the spec selects (with a `flags` column), and how many it did not."""
        if not members:
            return pa.table({}), 0
        table = _concat([m.table.replace_schema_metadata(None) for m in members])
        if table.num_rows == 0:
            return table, 0
        if "flags" not in table.column_names:
            table = with_flags(table)
        sel = self.spec.select
        if not (sel.assets or sel.signals or sel.semantic_ids):
            return table, 0
        mask = sel.mask(table)
        kept = table.filter(mask)
        return kept, table.num_rows - kept.num_rows

    # -- landing --

    async def _land(self, consumer: Consumer, part: _Partition, unit: _Unit) -> None:
        try:
            if self._parts.get(unit.tp) is not part:
                return  # revoked meanwhile: the next owner lands it
            await self._write(consumer, unit)
        except LakeUnavailable as exc:
            self.stats.backpressure += 1
            part.pending = unit
            part.refused = True
            part.recovered = False
            part.retry_at = time.monotonic() + part.backoff
            log.warning(
                "%s: lake unavailable landing %d..%d (%s); pausing the partition, retry in %.1f s",
                unit.tp,
                unit.first,
                unit.last,
                exc,
                part.backoff,
            )
            part.backoff = min(part.backoff * 2, _BACKOFF_MAX_S)
            consumer.pause([unit.tp])
            return
        part.backoff = _BACKOFF_MIN_S

    async def _retry_pending(self, consumer: Consumer) -> None:
        """Replay what waited behind a refused unit once its worker landed it (the worker retries)."""
        for part in list(self._parts.values()):
            if part.pending is None or not part.recovered:
                continue
            part.pending = None
            part.recovered = False
            # What waited behind the unit continues in order: verified records, then raw fetches.
            held, part.held = part.held, []
            for rec in held:
                await self._add(consumer, part, rec)
            inbox, part.inbox = part.inbox, []
            if inbox:
                await self._take(consumer, part, inbox)

    async def _write(self, consumer: Consumer, unit: _Unit) -> None:
        """Intent, objects, output topic, evidence, commit, clear the intent. Idempotent until the commit."""
        keys = tuple(o.key for o in unit.objects)
        intent = unit.intent
        if intent is None:
            intent = LandingIntent(unit.tp.topic, unit.tp.partition, unit.first, unit.last, keys)
            if keys:
                await asyncio.to_thread(self._lake.write_intent, intent)
        elif set(keys) != set(intent.keys):
            log.warning(
                "%s: re-landing %d..%d gave other objects than promised; stale ones removed",
                unit.tp,
                unit.first,
                unit.last,
            )
            for stale in set(intent.keys) - set(keys):
                await asyncio.to_thread(self._lake.delete, stale)
            intent = LandingIntent(unit.tp.topic, unit.tp.partition, unit.first, unit.last, keys)
            await asyncio.to_thread(self._lake.write_intent, intent)
        landed = await self._write_objects(unit.objects)
        # One append (one transaction) per landing: its messages' RECEIVE entries, then what it made.
        entries: list[EvidenceEntry] = list(unit.receipts)
        for obj, done in zip(unit.objects, landed, strict=True):
            entries.extend(self._landing_entries(unit, obj, done))
        for item in unit.publish:
            entries.extend(await self._publish(unit, item))
        if entries:
            self._evidence.append(entries)
        sync = getattr(self._evidence, "sync", None)  # group commit: evidence durable before the offsets
        if sync is not None:
            await asyncio.to_thread(sync)
        try:
            await consumer.commit({unit.tp: unit.last + 1})
        except (CommitFailedError, NotAssignedError) as exc:
            # Revoked while landing: the next owner re-lands the same range under the same names.
            log.warning(
                "%s: commit of %d..%d refused (%s); the next owner re-lands it",
                unit.tp,
                unit.first,
                unit.last,
                exc,
            )
            return
        self.stats.commits += 1
        self.stats.units += 1
        for obj, (landed_obj, _digest) in zip(unit.objects, landed, strict=True):
            self.stats.objects += 1
            self.stats.landed_keys.append(landed_obj.key)
            if obj.table_name == self.spec.table:
                self.stats.rows_landed += landed_obj.rows
            elif obj.table_name == self.spec.rejected_table:
                self.stats.rows_rejected += landed_obj.rows
            else:
                self.stats.rows_output += landed_obj.rows
        if keys:
            await asyncio.to_thread(self._lake.clear_intent, intent)

    async def _write_objects(self, objects: Sequence[_Object]) -> list[tuple[LandedObject, str]]:
        """Write a unit's objects: the first alone, the rest concurrently (encoding releases the GIL,
        PUTs wait on the network).

        The first write probes the sink, so a lake that refuses costs one request per attempt, not a
        burst. Every write finishes before the first error, if any, is raised: nothing is left running.
        """
        if not objects:
            return []
        first = await asyncio.to_thread(self._write_object, objects[0])
        done: list[tuple[LandedObject, str] | BaseException] = [first]
        done += await asyncio.gather(
            *(asyncio.to_thread(self._write_object, obj) for obj in objects[1:]), return_exceptions=True
        )
        out: list[tuple[LandedObject, str]] = []
        for result in done:
            if isinstance(result, BaseException):
                raise result
            out.append(result)
        return out

    def _write_object(self, obj: _Object) -> tuple[LandedObject, str]:
        landed = self._lake.write_parquet(obj.key, obj.table, schema_version=CLEAN_SCHEMA_VERSION)
        return landed, _table_digest(obj.table)

    def _landing_entries(
        self, unit: _Unit, obj: _Object, done: tuple[LandedObject, str]
    ) -> list[EvidenceEntry]:
        landed, table_hash = done
        now = _now_us()
        step = EvidenceEntry(
            event=EventType.CONTENT_MODIFIED,
            subject=table_hash,
            actor=self.actor,
            time_us=now,
            inputs=obj.inputs,
            attributes={**obj.attributes, "output": obj.table_name, "rows": obj.table.num_rows},
        )
        land = EvidenceEntry(
            event=EventType.SEND,
            subject=landed.sha256,
            actor=self.actor,
            time_us=now,
            inputs=(table_hash,),
            attributes={
                "object": landed.key,
                "lake": self._lake.description,
                "rows": landed.rows,
                "bytes": landed.size,
                "topic": unit.tp.topic,
                "partition": unit.tp.partition,
                "first_offset": unit.first,
                "last_offset": unit.last,
            },
        )
        return [step, land]

    async def _publish(self, unit: _Unit, item: _Publish) -> list[EvidenceEntry]:
        assert self._producer is not None and self.spec.output_topic  # noqa: S101 - set up in run()
        value = _ipc_bytes(item.table)
        digest = hashlib.sha256(value).hexdigest()
        source = f"{unit.tp}@{unit.first}-{unit.last}"
        delivery = await self._producer.send(
            self.spec.output_topic,
            value,
            key=item.asset.encode(),
            headers=[
                (HEADER_JOB, self.spec.name.encode()),
                (HEADER_OUTPUT_SHA256, digest.encode()),
                (HEADER_INPUTS, ",".join(item.inputs).encode()),
                (HEADER_SOURCE, source.encode()),
            ],
        )
        self.stats.published += 1
        return [
            EvidenceEntry(
                event=EventType.SEND,
                subject=digest,
                actor=self.actor,
                time_us=_now_us(),
                inputs=item.inputs,
                attributes={
                    "topic": delivery.topic,
                    "partition": delivery.partition,
                    "offset": delivery.offset,
                    "rows": item.table.num_rows,
                    "source": source,
                    "signed": False,
                },
            )
        ]
