"""The stream job runner: a consumer-group member that verifies, cleans and lands samples.

Per partition it verifies each envelope (failures go to quarantine with evidence), cleans the good
batches, writes one Parquet object per (site, asset, date) named from the offset range, appends the
evidence, and only then commits the offsets. A landing intent written before the objects makes a
restart re-land the same offset range under the same names, so the lake ends up exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.envelope import VerifiedBatch, open_envelope
from tidm.ingest.errors import EnvelopeError
from tidm.ingest.identity import TrustedAgents
from tidm.ingest.quarantine import Quarantine
from tidm.ingest.transports.base import Consumer, Message, TopicPartition, Transport
from tidm.storage import Lake, LandedObject, LandingIntent, object_key
from tidm.stream_processing.steps import drop_bad_samples, sort_for_lake

__all__ = ["JobRunner", "JobSettings", "JobStats"]

log = logging.getLogger(__name__)

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)


@dataclass(frozen=True)
class JobSettings:
    name: str
    topics: tuple[str, ...]
    group_id: str
    table: str = "clean"
    rejected_table: str = "rejected"
    max_records: int = 500
    poll_timeout_ms: int = 200

    @property
    def actor(self) -> str:
        return f"job:{self.name}"


@dataclass
class JobStats:
    messages: int = 0
    batches: int = 0
    quarantined: int = 0
    rows_in: int = 0
    rows_landed: int = 0
    rows_rejected: int = 0
    objects: int = 0
    commits: int = 0
    landed_keys: list[str] = field(default_factory=list)


def _now_us() -> int:
    return time.time_ns() // 1000


def _table_digest(table: pa.Table) -> str:
    """SHA-256 of a table's Arrow IPC bytes: the identity of an intermediate (clean) batch."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _by_date(table: pa.Table) -> list[tuple[dt.date, pa.Table]]:
    if table.num_rows == 0:
        return []
    days = pc.cast(table.column("ts"), pa.date32())
    out = []
    for day in pc.unique(days).to_pylist():
        out.append((day, table.filter(pc.equal(days, pa.scalar(day, pa.date32())))))
    return sorted(out, key=lambda p: p[0])


class JobRunner:
    """Runs one job: consume, verify, clean, land, evidence, commit."""

    def __init__(
        self,
        settings: JobSettings,
        *,
        transport: Transport,
        lake: Lake,
        evidence: EvidenceLog,
        trusted: TrustedAgents,
        quarantine: Quarantine,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._lake = lake
        self._evidence = evidence
        self._trusted = trusted
        self._quarantine = quarantine
        self._consumer: Consumer | None = None
        self._buffers: dict[TopicPartition, list[Message]] = defaultdict(list)
        self._intents: dict[TopicPartition, list[LandingIntent]] = {}
        self.stats = JobStats()

    async def run(self, stop: asyncio.Event) -> JobStats:
        """Consume until `stop` is set, then finish the batch in hand and leave the group."""
        consumer = self._transport.consumer(self.settings.topics, group_id=self.settings.group_id)
        self._consumer = consumer
        await consumer.start()
        try:
            while not stop.is_set():
                await self.poll_once(consumer)
        finally:
            await consumer.stop()
            self._consumer = None
        return self.stats

    async def poll_once(self, consumer: Consumer) -> None:
        fetched = await consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_records
        )
        await self._track_assignment(consumer)
        for tp in sorted(fetched):
            records = fetched[tp]
            if not records:
                continue
            self.stats.messages += len(records)
            self._buffers[tp].extend(records)
            await self._drain(consumer, tp)

    async def _track_assignment(self, consumer: Consumer) -> None:
        assigned = consumer.assignment()
        for tp in list(self._intents):
            if tp not in assigned:
                # Revoked: the next owner re-reads from the committed offset.
                del self._intents[tp]
                self._buffers.pop(tp, None)
        for tp in assigned - self._intents.keys():
            committed = await consumer.committed(tp)
            start = committed or 0
            intents = []
            for intent in self._lake.pending_intents(tp.topic, tp.partition):
                if intent.last < start:
                    self._lake.clear_intent(intent)  # landed and committed; only the clean-up was lost
                else:
                    intents.append(intent)
            if intents:
                log.info("%s: resuming %d landing intent(s) from %d", tp, len(intents), intents[0].first)
            self._intents[tp] = intents

    async def _drain(self, consumer: Consumer, tp: TopicPartition) -> None:
        buffer = self._buffers[tp]
        intents = self._intents.setdefault(tp, [])
        while buffer:
            if intents:
                intent = intents[0]
                if buffer[-1].offset < intent.last:
                    return  # keep reading until the promised range is complete
                cut = next(i for i, m in enumerate(buffer) if m.offset == intent.last) + 1
                chunk, rest = buffer[:cut], buffer[cut:]
                await self._land(consumer, tp, chunk, intent)
                intents.pop(0)
            else:
                chunk, rest = buffer, []
                await self._land(consumer, tp, chunk, None)
            buffer[:] = rest

    async def _verify(self, records: Sequence[Message]) -> list[VerifiedBatch]:
        ok: list[VerifiedBatch] = []
        received: list[EvidenceEntry] = []
        for message in records:
            try:
                batch = open_envelope(message, self._trusted)
            except EnvelopeError as exc:
                log.warning("quarantined %s: %s", message.where(), exc)
                await self._quarantine.put(message, exc)
                self.stats.quarantined += 1
                continue
            ok.append(batch)
            received.append(
                EvidenceEntry(
                    event=EventType.RECEIVE,
                    subject=batch.sha256,
                    actor=self.settings.actor,
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
                )
            )
        if received:
            self._evidence.append(received)
        self.stats.batches += len(ok)
        return ok

    def _plan(
        self, tp: TopicPartition, first: int, last: int, batches: Sequence[VerifiedBatch]
    ) -> list[tuple[str, str, pa.Table, pa.Table, list[str], dict[str, int]]]:
        """Clean the batches and split them into one unit per (site, asset, date)."""
        groups: dict[tuple[str, str], list[VerifiedBatch]] = defaultdict(list)
        for b in batches:
            groups[(b.provenance.site, b.provenance.asset_id)].append(b)
        units = []
        for (site, asset), members in sorted(groups.items()):
            table = pa.concat_tables([m.table.replace_schema_metadata(None) for m in members])
            result = drop_bad_samples(table)
            self.stats.rows_in += table.num_rows
            kept_days = dict(_by_date(result.kept))
            rejected_days = dict(_by_date(result.rejected))
            inputs = [m.sha256 for m in members]
            for day in sorted(kept_days.keys() | rejected_days.keys()):
                key = object_key(
                    self.settings.table,
                    site=site,
                    asset=asset,
                    date=day,
                    topic=tp.topic,
                    partition=tp.partition,
                    first=first,
                    last=last,
                )
                rkey = object_key(
                    self.settings.rejected_table,
                    site=site,
                    asset=asset,
                    date=day,
                    topic=tp.topic,
                    partition=tp.partition,
                    first=first,
                    last=last,
                )
                kept = kept_days.get(day)
                rejected = rejected_days.get(day)
                units.append(
                    (
                        key if kept is not None else "",
                        rkey if rejected is not None else "",
                        sort_for_lake(kept) if kept is not None else pa.table({}),
                        sort_for_lake(rejected) if rejected is not None else pa.table({}),
                        inputs,
                        result.counts,
                    )
                )
        return units

    async def _land(
        self, consumer: Consumer, tp: TopicPartition, records: Sequence[Message], intent: LandingIntent | None
    ) -> None:
        first, last = records[0].offset, records[-1].offset
        batches = await self._verify(records)
        units = self._plan(tp, first, last, batches)
        keys = tuple(k for unit in units for k in unit[:2] if k)
        if intent is None:
            intent = LandingIntent(tp.topic, tp.partition, first, last, keys)
            if keys:
                self._lake.write_intent(intent)
        elif set(keys) != set(intent.keys):
            log.warning(
                "%s: re-landing %d..%d gave other objects than promised; stale ones removed", tp, first, last
            )
            for stale in set(intent.keys) - set(keys):
                self._lake.delete(stale)
        entries: list[EvidenceEntry] = []
        for key, rkey, kept, rejected, inputs, counts in units:
            for k, t, table_name in (
                (key, kept, self.settings.table),
                (rkey, rejected, self.settings.rejected_table),
            ):
                if not k:
                    continue
                landed = self._lake.write_parquet(k, t)
                entries.extend(self._landing_entries(tp, first, last, landed, t, inputs, counts, table_name))
                self.stats.objects += 1
                self.stats.landed_keys.append(landed.key)
                if table_name == self.settings.table:
                    self.stats.rows_landed += landed.rows
                else:
                    self.stats.rows_rejected += landed.rows
        if entries:
            self._evidence.append(entries)
        await consumer.commit({tp: last + 1})
        self.stats.commits += 1
        if keys:
            self._lake.clear_intent(intent)

    def _landing_entries(
        self,
        tp: TopicPartition,
        first: int,
        last: int,
        landed: LandedObject,
        table: pa.Table,
        inputs: list[str],
        counts: dict[str, int],
        table_name: str,
    ) -> list[EvidenceEntry]:
        clean_hash = _table_digest(table)
        now = _now_us()
        step = EvidenceEntry(
            event=EventType.CONTENT_MODIFIED,
            subject=clean_hash,
            actor=self.settings.actor,
            time_us=now,
            inputs=tuple(inputs),
            attributes={"step": "drop_bad_samples", "output": table_name, "rows": table.num_rows, **counts},
        )
        land = EvidenceEntry(
            event=EventType.SEND,
            subject=landed.sha256,
            actor=self.settings.actor,
            time_us=now,
            inputs=(clean_hash,),
            attributes={
                "object": landed.key,
                "lake": self._lake.description,
                "rows": landed.rows,
                "bytes": landed.size,
                "topic": tp.topic,
                "partition": tp.partition,
                "first_offset": first,
                "last_offset": last,
            },
        )
        return [step, land]
