"""Evidence through the transport: parts append to a topic, the notary sequences it into the store.

`KafkaEvidenceSink` is an `EvidenceLog` for the parts of a cluster: `append` serialises the canonical
entries into one message (a tlog-tiles entry bundle, so a batch stays in order and whole) and returns
once the broker acknowledged it; reads, proofs and checkpoints are served by the store the notary
writes, when one is given. It works over any `Transport` (Kafka, or the embedded log in tests).

`Notary` is the single sequencer: it consumes the evidence topic, appends each fetch to the store in
one batch, commits offsets only once that append is durable, and signs a checkpoint every N entries or
T seconds. A replay after a crash re-reads what was appended but not committed; entries whose exact
bytes are already logged are skipped, so nothing is logged twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from tidm.evidence import merkle
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Signer
from tidm.evidence.entry import canonical_bytes, entries_from_canonical, entry_from_canonical
from tidm.evidence.errors import EntryError, EvidenceError, StoreError, TamperError
from tidm.evidence.tiles import decode_bundle, encode_bundle
from tidm.ingest.transports.base import (
    MAX_MESSAGE_BYTES,
    Consumer,
    Message,
    Producer,
    TopicPartition,
    Transport,
)

__all__ = ["EVIDENCE_HEADER", "KafkaEvidenceSink", "Notary", "NotaryStats", "decode_message"]

log = logging.getLogger(__name__)

EVIDENCE_HEADER = "tidm-evidence"
_ONCE_HEADER = "tidm-once"
_MESSAGE_BUDGET = min(MAX_MESSAGE_BYTES // 2, 4 << 20)
T = TypeVar("T")


class KafkaEvidenceSink:
    """An `EvidenceLog` whose appends go to an evidence topic; reads go to `reader` (the store)."""

    def __init__(
        self,
        transport: Transport,
        topic: str,
        *,
        reader: EvidenceLog | None = None,
        partitions: int = 1,
        timeout_s: float = 60.0,
        owns_reader: bool = False,
    ) -> None:
        self._transport = transport
        self.topic = topic
        self._reader = reader
        self._owns_reader = owns_reader
        self._partitions = partitions
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self.sent_messages = 0
        self.sent_entries = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> KafkaEvidenceSink:
        """Start the producer on a private event loop thread (appends are synchronous calls)."""
        with self._lock:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name=f"evidence-sink-{self.topic}", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            self._run(self._transport.ensure_topics([self.topic], partitions=self._partitions))
            producer = self._transport.producer()
            self._run(producer.start())
            self._producer = producer
        except BaseException:
            self.close()
            raise
        return self

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            msg = f"evidence sink for {self.topic} is not started"
            raise EvidenceError(msg)
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=self.timeout_s)

    def close(self) -> None:
        """Flush and stop the producer, then the loop thread (idempotent); the reader is closed only if
        the sink owns it (`owns_reader=True`)."""
        with self._lock:
            loop, thread, producer = self._loop, self._thread, self._producer
            self._producer = None
        try:
            if producer is not None and loop is not None:
                asyncio.run_coroutine_threadsafe(producer.stop(), loop).result(timeout=self.timeout_s)
        finally:
            if loop is not None and thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=self.timeout_s)
                loop.close()
            with self._lock:
                self._loop = self._thread = None
                reader, self._owns_reader = (self._reader if self._owns_reader else None), False
            close_reader = getattr(reader, "close", None)
            if close_reader is not None:
                close_reader()

    def __enter__(self) -> KafkaEvidenceSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- appends ----------------------------------------------------------------------------------

    def _send(self, canonical: Sequence[bytes], *, once: bool = False) -> None:
        producer = self._producer
        if producer is None:
            msg = f"evidence sink for {self.topic} is not started"
            raise EvidenceError(msg)
        headers = [(EVIDENCE_HEADER, b"1")] + ([(_ONCE_HEADER, b"1")] if once else [])
        for chunk in _chunks(canonical):
            try:
                self._run(producer.send(self.topic, encode_bundle(chunk), key=b"evidence", headers=headers))
            except TimeoutError as exc:
                msg = f"evidence topic {self.topic}: no acknowledgement within {self.timeout_s} s"
                raise StoreError(msg) from exc
            self.sent_messages += 1
            self.sent_entries += len(chunk)

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        """Send the entries as one message (split only past 4 MiB); return after the broker's ack.

        The returned entries have index -1: the notary assigns indices when it sequences them.
        """
        canonical = [canonical_bytes(e) for e in entries]
        self.append_canonical(canonical)
        return [_pending(data) for data in canonical]

    def append_canonical(self, canonical: Sequence[bytes]) -> None:
        """Send entries already in canonical form (as a local log stores them), in order; return after
        the broker's ack. A store-and-forward log sends what it logged this way, unchanged."""
        for data in canonical:
            if len(data) > 0xFFFF:
                msg = f"entry is {len(data)} bytes; the evidence topic carries entries up to 65535"
                raise EntryError(msg)
        if canonical:
            self._send(canonical)

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        """Return the logged entry with the same (event, subject, actor) if the store has one; else send
        it marked `once`, so the notary also checks before it appends."""
        data = canonical_bytes(entry)
        normalized = entry_from_canonical(data)
        if self._reader is not None:
            for item in self._reader.find(normalized.subject):
                if (item.entry.event, item.entry.actor) == (normalized.event, normalized.actor):
                    return item
        self._send([data], once=True)
        return _pending(data)

    def sync(self) -> None:
        """Nothing to do: every append returned only after the broker acknowledged it (acks=all)."""

    # -- reads: served by the store ---------------------------------------------------------------

    @property
    def can_read(self) -> bool:
        """True when the sink has a store to serve reads (`find`, `size`, proofs)."""
        return self._reader is not None

    @property
    def reader(self) -> EvidenceLog:
        if self._reader is None:
            msg = f"this evidence sink ({self.topic}) only appends; give it the store as `reader` to read"
            raise EvidenceError(msg)
        return self._reader

    def size(self) -> int:
        """Entries the store holds (those the notary sequenced so far)."""
        return self.reader.size()

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        """Entries of the store."""
        return self.reader.read(start, end)

    def find(self, subject: str) -> list[LoggedEntry]:
        """Entries of the store by subject."""
        return self.reader.find(subject)

    def by_input(self, subject: str) -> list[LoggedEntry]:
        """Entries of the store by input."""
        return self.reader.by_input(subject)

    def root(self, size: int | None = None) -> bytes:
        """Root of the store's tree."""
        return self.reader.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof from the store."""
        return self.reader.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from the store."""
        return self.reader.consistency_proof(old_size, new_size)

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        """A checkpoint of the store (normally the notary signs them)."""
        return self.reader.checkpoint(signer, origin)


def _pending(canonical: bytes) -> LoggedEntry:
    return LoggedEntry(-1, entry_from_canonical(canonical), canonical, merkle.leaf_hash(canonical))


def _chunks(canonical: Sequence[bytes]) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for data in canonical:
        if chunk and size + len(data) + 2 > _MESSAGE_BUDGET:
            yield chunk
            chunk, size = [], 0
        chunk.append(data)
        size += len(data) + 2
    if chunk:
        yield chunk


def decode_message(message: Message) -> list[bytes]:
    """The canonical entries a sink message carries; `EntryError` if it is not a valid one."""
    try:
        entries = decode_bundle(message.value, message.where())
    except TamperError as exc:
        msg = f"{message.where()}: {exc.what}"
        raise EntryError(msg) from None
    for position, data in enumerate(entries):
        try:
            entry_from_canonical(data)
        except EntryError as exc:
            msg = f"{message.where()}: entry {position}: {exc}"
            raise EntryError(msg) from None
    return entries


@dataclass
class NotaryStats:
    messages: int = 0
    appended: int = 0
    duplicates: int = 0
    rejected: int = 0
    checkpoints: int = 0
    last_checkpoint: str | None = None


class Notary:
    """The single sequencer of the evidence log (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        topic: str,
        store: EvidenceLog,
        signers: Signer | Sequence[Signer],
        *,
        group_id: str = "tidm-notary",
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 5.0,
        origin: str | None = None,
        max_records: int = 5000,
        actor: str = "notary",
        dedup_window: int = 1_000_000,
    ) -> None:
        self._transport = transport
        self.topic = topic
        self.store = store
        self.signers = [signers] if isinstance(signers, Signer) else list(signers)
        if not self.signers:
            msg = "the notary needs at least one signer"
            raise EvidenceError(msg)
        self.group_id = group_id
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.origin = origin
        self.max_records = max_records
        self.actor = actor if ":" in actor else f"notary:{actor}"
        self.stats = NotaryStats()
        # A replay re-reads what was appended but not yet committed: far less than this window of the
        # most recent leaf hashes, which bounds the notary's memory however long the log grows.
        self.dedup_window = dedup_window
        self._seen: set[bytes] = set()
        self._recent: deque[bytes] = deque()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> NotaryStats:
        """Sequence until `stop` is set, then sign a last checkpoint of what was appended."""
        await self._transport.ensure_topics([self.topic], partitions=1)
        self._seen = await asyncio.to_thread(self._load_seen)
        consumer = self._transport.consumer([self.topic], group_id=self.group_id)
        await consumer.start()
        self.ready.set()
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                if fetched:
                    await self._sequence(consumer, fetched)
                if self._since_checkpoint and (
                    self._since_checkpoint >= self.checkpoint_every
                    or time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_s
                ):
                    await asyncio.to_thread(self._checkpoint)
            # Drain what is already in the topic, so a clean stop leaves nothing unsequenced.
            for _ in range(50):
                fetched = await consumer.getmany(timeout_ms=300, max_records=self.max_records)
                if not fetched:
                    break
                await self._sequence(consumer, fetched)
        finally:
            await consumer.stop()
        if self._since_checkpoint or self.stats.checkpoints == 0:
            await asyncio.to_thread(self._checkpoint)
        return self.stats

    def _load_seen(self) -> set[bytes]:
        start = max(self.store.size() - self.dedup_window, 0)
        raw = getattr(self.store, "read_raw", None)
        if raw is not None:  # unparsed: only the leaf hashes are needed
            self._recent = deque(row[2] for chunk in raw(start) for row in chunk)
        else:
            self._recent = deque(item.leaf_hash for item in self.store.read(start))
        return set(self._recent)

    def _remember(self, leaf: bytes) -> None:
        self._seen.add(leaf)
        self._recent.append(leaf)
        if len(self._recent) > self.dedup_window:
            self._seen.discard(self._recent.popleft())

    async def _sequence(self, consumer: Consumer, fetched: dict[TopicPartition, list[Message]]) -> None:
        batches: list[tuple[bool, list[bytes]]] = []
        rejected: list[EvidenceEntry] = []
        for messages in fetched.values():
            for message in messages:
                self.stats.messages += 1
                try:
                    entries = decode_message(message)
                except EntryError as exc:
                    log.warning("evidence message rejected: %s", exc)
                    self.stats.rejected += 1
                    rejected.append(self._rejection(message, exc))
                    continue
                batches.append((message.header(_ONCE_HEADER) == b"1", entries))
        await asyncio.to_thread(self._append, batches, rejected)
        await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in fetched.items()})

    def _rejection(self, message: Message, error: EntryError) -> EvidenceEntry:
        return EvidenceEntry(
            event=EventType.ROUTE,
            subject=hashlib.sha256(message.value).hexdigest(),
            actor=self.actor,
            time_us=time.time_ns() // 1000,
            attributes={
                "route": "rejected",
                "reason": "invalid_evidence_message",
                "detail": str(error)[:500],
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        )

    def _append(self, batches: list[tuple[bool, list[bytes]]], rejected: list[EvidenceEntry]) -> None:
        pending: list[bytes] = []
        bulk = getattr(self.store, "append_canonical", None)

        def flush() -> None:
            if not pending:
                return
            if bulk is not None:
                bulk(pending)  # the bytes as sent: checked in bulk, never re-encoded
            else:
                self.store.append(entries_from_canonical(pending))
            self.stats.appended += len(pending)
            self._since_checkpoint += len(pending)
            pending.clear()

        for once, entries in batches:
            for data in entries:
                leaf = merkle.leaf_hash(data)
                if leaf in self._seen:
                    self.stats.duplicates += 1
                    continue
                self._remember(leaf)
                if once:
                    flush()
                    before = self.store.size()
                    self.store.append_once(entry_from_canonical(data))
                    grown = self.store.size() - before
                    self.stats.appended += grown
                    self.stats.duplicates += 1 - grown
                    self._since_checkpoint += grown
                else:
                    pending.append(data)
        pending.extend(canonical_bytes(entry) for entry in rejected)
        flush()

    def _checkpoint(self) -> None:
        note = self.store.checkpoint(self.signers, self.origin)
        self.stats.checkpoints += 1
        self.stats.last_checkpoint = note
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
