"""The embedded transport: Kafka's log model in a local folder.

For the one-process demo, gateways without Kafka, and tests. Layout under `root`:

    <topic>/partitions.json   {"format": 1, "partitions": N}, written last when a topic is created
    <topic>/<partition>.log   the append-only segment of one partition
    _groups/<group>.json      committed offsets {"offsets": {topic: {partition: offset}}}
    _groups/<group>.lock      held (flock) by the group's active member

A segment is a sequence of frames, big-endian:

    u32 body length | u32 CRC-32 of the body | body
    body = u8 format | i64 timestamp ms | i32 key length (-1: no key) | u32 value length | key | value
           | u16 header count | per header: u16 name length | u32 value length | name (UTF-8) | value

The offset of a record is its index in the segment. A send appends one frame under an exclusive
`flock` of the segment (so several processes can append), fsyncs, and only then returns its
`Delivery`: the embedded acks=all. A crash mid-append leaves at most one torn frame at the end of a
segment; readers stop before it and the next writer truncates it.

Limits, on purpose: one segment per partition (no retention or compaction); one active member per
consumer group (the holder of the group lock owns every partition of its topics, the others wait and
take over when it stops or dies: a fail-over, not a load split); one fsync per message (no group
commit); local POSIX filesystems only (`flock` is not reliable over NFS).
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import json
import logging
import os
import struct
import threading
import time
import urllib.parse
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidm.ingest.transports.base import (
    MAX_MESSAGE_BYTES,
    Delivery,
    Message,
    RebalanceCallback,
    TopicPartition,
    Transport,
    is_valid_topic_name,
)
from tidm.ingest.transports.errors import (
    CommitFailedError,
    CorruptLogError,
    MessageTooLargeError,
    NotAssignedError,
    TransportClosedError,
    TransportConfigError,
    TransportUnavailable,
    UnknownTopicError,
)

__all__ = ["EmbeddedConsumer", "EmbeddedProducer", "EmbeddedTransport", "murmur2", "partition_for_key"]

log = logging.getLogger(__name__)

_FORMAT = 1
_FRAME = struct.Struct(">II")  # body length, CRC-32 of the body
_BODY = struct.Struct(">BqiI")  # format, timestamp ms, key length, value length
_COUNT = struct.Struct(">H")
_HEADER = struct.Struct(">HI")
_MIN_BODY = _BODY.size + _COUNT.size
# A declared length above this is not a record but garbage (a torn or foreign tail). Fixed, not
# derived from MAX_MESSAGE_BYTES, so that changing the send limit never makes old records unreadable.
_MAX_BODY = 1 << 30
# The most a single torn append can leave behind; a larger unreadable tail is corruption, not a crash.
_MAX_TORN = _FRAME.size + MAX_MESSAGE_BYTES + (1 << 20)
_FETCH_MAX_BYTES = 50 * 1024 * 1024  # Kafka's fetch.max.bytes default
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1
_DISCOVERY_S = 0.5
_GROUPS = "_groups"
_META = "partitions.json"


# --- partitioning ------------------------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (Java `Utils.murmur2`) as a signed 32-bit int."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key`: positive(murmur2(key)) % n."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- framing -----------------------------------------------------------------------------------


def _payload_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value) + sum(len(n.encode()) + len(v) for n, v in headers)


def _encode(
    key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]], timestamp_ms: int
) -> list[bytes]:
    """The frame of one record, as buffers for one `pwritev` (the value is not copied)."""
    head = _BODY.pack(_FORMAT, timestamp_ms, -1 if key is None else len(key), len(value)) + (key or b"")
    tail = bytearray(_COUNT.pack(len(headers)))
    for name, hval in headers:
        raw = name.encode()
        tail += _HEADER.pack(len(raw), len(hval))
        tail += raw
        tail += hval
    crc = zlib.crc32(tail, zlib.crc32(value, zlib.crc32(head)))
    return [_FRAME.pack(len(head) + len(value) + len(tail), crc), head, value, bytes(tail)]


def _decode(tp: TopicPartition, offset: int, body: memoryview) -> Message:
    where = f"{tp}@{offset}"
    try:
        fmt, timestamp_ms, klen, vlen = _BODY.unpack_from(body, 0)
        if fmt != _FORMAT:
            msg = f"{where}: unknown record format {fmt}"
            raise CorruptLogError(msg)
        pos = _BODY.size
        key = None
        if klen >= 0:
            key = bytes(body[pos : pos + klen])
            pos += klen
        value = bytes(body[pos : pos + vlen])
        pos += vlen
        (count,) = _COUNT.unpack_from(body, pos)
        pos += _COUNT.size
        headers = []
        for _ in range(count):
            nlen, hlen = _HEADER.unpack_from(body, pos)
            pos += _HEADER.size
            name = bytes(body[pos : pos + nlen]).decode()
            pos += nlen
            headers.append((name, bytes(body[pos : pos + hlen])))
            pos += hlen
    except (struct.error, UnicodeDecodeError) as exc:
        msg = f"{where}: malformed record body: {exc}"
        raise CorruptLogError(msg) from exc
    if pos != len(body) or len(value) != vlen:
        msg = f"{where}: record fields do not add up to its length"
        raise CorruptLogError(msg)
    return Message(tp.topic, tp.partition, offset, key, value, tuple(headers), timestamp_ms)


# --- files -------------------------------------------------------------------------------------


@contextmanager
def _flocked(fd: int, op: int) -> Iterator[None]:
    fcntl.flock(fd, op)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _pread(fd: int, size: int, pos: int) -> bytes:
    """Read up to `size` bytes at `pos` (short only at the end of the file)."""
    first = os.pread(fd, size, pos)
    if len(first) == size or not first:
        return first
    chunks = [first]
    got = len(first)
    while got < size:
        more = os.pread(fd, size - got, pos + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _pwrite_all(fd: int, buffers: list[bytes], pos: int) -> int:
    total = sum(len(b) for b in buffers)
    done = os.pwritev(fd, buffers, pos)
    while done < total:  # a short write: finish the rest piece by piece
        skip = done
        rest = []
        for b in buffers:
            if skip >= len(b):
                skip -= len(b)
                continue
            rest.append(memoryview(b)[skip:])
            skip = 0
        done += os.pwritev(fd, rest, pos + done)
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class _Segment:
    """One partition's segment file and the start position of every valid record in it.

    `refresh` extends the index from where it stopped, so reading from any offset is O(1) after the
    first scan. It walks frame headers and checks the CRC of the last frame it reaches; every other
    frame is followed by more data, so it cannot be torn, and its CRC is checked when it is read.
    """

    def __init__(self, tp: TopicPartition, path: Path, *, writable: bool) -> None:
        self.tp = tp
        self.path = path
        flags = (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY
        self.fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        self.positions = array("q")
        self.end = 0  # just past the last valid record
        self.tail = 0  # bytes after `end` that are not (yet) a valid record

    @property
    def count(self) -> int:
        return len(self.positions)

    def close(self) -> None:
        os.close(self.fd)

    def refresh(self, *, locked: bool) -> None:
        """Index the records appended since the last call. `locked`: the caller holds the segment
        lock, so no append or truncation is in flight and conclusions are final."""
        if locked:
            self._walk(strict=True)
            return
        if not self._walk(strict=False):
            # Something looked wrong, possibly a writer truncating a torn tail under our feet:
            # look again while no writer can be active.
            with _flocked(self.fd, fcntl.LOCK_SH):
                self._walk(strict=True)

    def _walk(self, *, strict: bool) -> bool:
        size = os.fstat(self.fd).st_size
        if size < self.end:
            # Only records never fsynced can disappear (a power loss while we were reading them).
            log.warning("%s: segment shrank from %d to %d bytes; re-indexing", self.tp, self.end, size)
            self.positions = array("q")
            self.end = 0
        pos = self.end
        found = self.count
        last: tuple[int, int, int] | None = None
        while pos + _FRAME.size <= size:
            head = _pread(self.fd, _FRAME.size, pos)
            if len(head) < _FRAME.size:
                if strict:
                    break
                del self.positions[found:]
                return False
            length, crc = _FRAME.unpack(head)
            end = pos + _FRAME.size + length
            if length < _MIN_BODY or length > _MAX_BODY or end > size:
                break  # incomplete: an append in flight, or a torn one
            self.positions.append(pos)
            last = (pos, length, crc)
            pos = end
        if last is not None:
            lpos, length, crc = last
            if zlib.crc32(_pread(self.fd, length, lpos + _FRAME.size)) != crc:
                offset = self.count - 1
                if pos == size:  # the tail frame is torn (or was being replaced): not a record
                    self.positions.pop()
                    pos = lpos
                else:
                    del self.positions[found:]
                    if not strict:
                        return False
                    msg = (
                        f"{self.tp}@{offset}: CRC mismatch at byte {lpos} of {self.path}, "
                        f"followed by {size - pos} more bytes"
                    )
                    raise CorruptLogError(msg)
        self.end = pos
        self.tail = size - pos
        return True

    def truncate_tail(self) -> None:
        """Cut a torn tail off; the caller holds the exclusive segment lock."""
        if self.tail > _MAX_TORN:
            msg = (
                f"{self.tp}@{self.count}: {self.tail} unreadable bytes after byte {self.end} of "
                f"{self.path}: more than one torn append can leave; refusing to truncate"
            )
            raise CorruptLogError(msg)
        log.warning(
            "%s@%d: truncating a torn tail of %d bytes at byte %d of %s",
            self.tp,
            self.count,
            self.tail,
            self.end,
            self.path,
        )
        os.ftruncate(self.fd, self.end)
        self.tail = 0

    def append(self, frame: list[bytes]) -> int:
        """Append one frame, fsync, and return its offset; the caller holds the exclusive lock."""
        offset = self.count
        try:
            written = _pwrite_all(self.fd, frame, self.end)
            os.fsync(self.fd)
        except BaseException:
            # Leave no torn frame behind if we can help it (ENOSPC mid-frame, ...).
            try:
                os.ftruncate(self.fd, self.end)
            except OSError:
                log.exception("%s: could not cut a failed append at byte %d", self.tp, self.end)
            raise
        self.positions.append(self.end)
        self.end += written
        return offset

    def read(self, offset: int, max_records: int, max_bytes: int) -> list[Message]:
        """Up to `max_records` records from `offset`, within `max_bytes` (at least one record)."""
        n = self.count
        if offset >= n or max_records <= 0:
            return []
        start = self.positions[offset]
        limit = start + max_bytes
        # positions[j] <= limit means records offset..j-1 all end within the budget
        j = bisect.bisect_right(self.positions, limit, offset + 1, n)
        take = (n - offset) if (j == n and self.end <= limit) else (j - 1 - offset)
        take = max(1, min(take, max_records))
        stop = self.positions[offset + take] if offset + take < n else self.end
        data = memoryview(_pread(self.fd, stop - start, start))
        if len(data) != stop - start:
            msg = f"{self.tp}@{offset}: segment {self.path} is shorter than its index"
            raise CorruptLogError(msg)
        out = []
        pos = 0
        for i in range(offset, offset + take):
            length, crc = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if zlib.crc32(body) != crc:
                msg = f"{self.tp}@{i}: CRC mismatch at byte {start + pos} of {self.path}"
                raise CorruptLogError(msg)
            out.append(_decode(self.tp, i, body))
            pos += _FRAME.size + length
        return out


# --- the transport -----------------------------------------------------------------------------


def _group_file_stem(group_id: str) -> str:
    stem = urllib.parse.quote(group_id, safe="")
    return "%2E" + stem[1:] if stem.startswith(".") else stem


def _check_topic(topic: str) -> None:
    if not is_valid_topic_name(topic) or topic == _GROUPS:
        msg = f"invalid topic name {topic!r}: use 1-249 of [A-Za-z0-9._-], not '.', '..' or {_GROUPS!r}"
        raise TransportConfigError(msg)


class _Store:
    """The folder: where topics, segments and group files live. Blocking: call from a worker thread."""

    def __init__(self, root: Path, *, default_partitions: int, auto_create_topics: bool) -> None:
        self.root = root
        self.default_partitions = default_partitions
        self.auto_create_topics = auto_create_topics

    def segment_path(self, tp: TopicPartition) -> Path:
        return self.root / tp.topic / f"{tp.partition}.log"

    def group_path(self, group_id: str, suffix: str) -> Path:
        return self.root / _GROUPS / f"{_group_file_stem(group_id)}{suffix}"

    def partition_count(self, topic: str) -> int | None:
        """The partition count of `topic`, or None if it does not exist."""
        try:
            meta = json.loads((self.root / topic / _META).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            msg = f"{topic}: unreadable {_META} under {self.root}: {exc}"
            raise TransportUnavailable(msg) from exc
        count = meta.get("partitions") if isinstance(meta, dict) else None
        if not isinstance(count, int) or count < 1:
            msg = f"{topic}: {_META} under {self.root} has no valid partition count"
            raise CorruptLogError(msg)
        return count

    def partition_count_for_send(self, topic: str) -> int:
        count = self.partition_count(topic)
        if count is None:
            if not self.auto_create_topics:
                msg = f"{topic}: no such topic under {self.root}"
                raise UnknownTopicError(msg)
            _check_topic(topic)
            self.create_topics([topic], self.default_partitions)
            count = self.partition_count(topic)
            if count is None:  # pragma: no cover - created just above
                msg = f"{topic}: topic vanished right after its creation under {self.root}"
                raise UnknownTopicError(msg)
        return count

    def create_topics(self, topics: list[str], partitions: int) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                with _flocked(root_fd, fcntl.LOCK_EX):  # one creator at a time, across processes
                    for topic in topics:
                        if self.partition_count(topic) is None:
                            self._create_topic(topic, partitions)
            finally:
                os.close(root_fd)
        except OSError as exc:
            msg = f"cannot create topics {topics} under {self.root}: {exc}"
            raise TransportUnavailable(msg) from exc

    def _create_topic(self, topic: str, partitions: int) -> None:
        folder = self.root / topic
        folder.mkdir(exist_ok=True)
        for p in range(partitions):
            fd = os.open(folder / f"{p}.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(fd)
        _fsync_dir(folder)
        meta = {"format": _FORMAT, "partitions": partitions}
        _write_atomic(folder / _META, json.dumps(meta).encode())  # last: now the topic exists
        _fsync_dir(self.root)
        log.info("created embedded topic %s with %d partitions under %s", topic, partitions, self.root)


class EmbeddedTransport:
    """A partitioned, offset-addressed log in the folder `root` (see the module docstring).

    `partitions`: the partition count of topics created implicitly, when a producer sends to a topic
    that does not exist and `auto_create_topics` is on (like Kafka's `num.partitions`).
    """

    def __init__(self, root: Path | str, *, partitions: int = 1, auto_create_topics: bool = True) -> None:
        if partitions < 1:
            msg = f"partitions must be at least 1, not {partitions}"
            raise TransportConfigError(msg)
        self.root = Path(root)
        self._store = _Store(self.root, default_partitions=partitions, auto_create_topics=auto_create_topics)

    def __repr__(self) -> str:
        return f"EmbeddedTransport({str(self.root)!r})"

    async def ensure_topics(self, topics: Sequence[str], *, partitions: int) -> None:
        """Create the topics that do not exist yet; existing ones keep their partition count."""
        if partitions < 1:
            msg = f"partitions must be at least 1, not {partitions}"
            raise TransportConfigError(msg)
        for topic in topics:
            _check_topic(topic)
        await asyncio.to_thread(self._store.create_topics, list(topics), partitions)

    def producer(self) -> EmbeddedProducer:
        return EmbeddedProducer(self._store)

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> EmbeddedConsumer:
        for topic in topics:
            _check_topic(topic)
        if not group_id:
            msg = "a consumer needs a non-empty group_id"
            raise TransportConfigError(msg)
        return EmbeddedConsumer(
            self._store, topics, group_id=group_id, on_assign=on_assign, on_revoke=on_revoke
        )


class EmbeddedProducer:
    """Appends to the embedded log; `send` returns after the record is fsynced."""

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._segments: dict[TopicPartition, _Segment] = {}
        self._partitions: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._order = asyncio.Lock()  # sends hit the log in call order
        self._io = threading.Lock()  # one append at a time, even if a cancelled send's thread runs on
        self._state = "new"
        self._closed = False

    async def start(self) -> None:
        if self._state == "stopped":
            msg = "an embedded producer cannot be restarted; create a new one"
            raise TransportClosedError(msg)
        self._state = "started"

    async def stop(self) -> None:
        """Wait for sends in flight, then close the segment files."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        async with self._order:
            await asyncio.to_thread(self._close)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Delivery:
        """Append one record and return where it landed, once it is on disk."""
        if self._state != "started":
            msg = f"{topic}: send on a producer that is {self._state}, not started"
            raise TransportClosedError(msg)
        size = _payload_size(key, value, headers)
        if size > MAX_MESSAGE_BYTES:
            msg = f"{topic}: message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
            raise MessageTooLargeError(msg)
        if len(headers) > 0xFFFF or any(len(name.encode()) > 0xFFFF for name, _ in headers):
            msg = f"{topic}: more than 65535 headers, or a header name over 65535 bytes"
            raise MessageTooLargeError(msg)
        timestamp_ms = time.time_ns() // 1_000_000
        async with self._order:
            return await asyncio.to_thread(self._append, topic, key, value, tuple(headers), timestamp_ms)

    def _append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...],
        timestamp_ms: int,
    ) -> Delivery:
        with self._io:
            if self._closed:
                msg = f"{topic}: send on a stopped producer"
                raise TransportClosedError(msg)
            partitions = self._partition_count(topic)
            if key is not None:
                partition = partition_for_key(key, partitions)
            else:
                partition = self._next.get(topic, 0) % partitions
                self._next[topic] = partition + 1
            tp = TopicPartition(topic, partition)
            frame = _encode(key, value, headers, timestamp_ms)
            try:
                segment = self._segments.get(tp)
                if segment is None:
                    segment = self._segments[tp] = _Segment(tp, self._store.segment_path(tp), writable=True)
                with _flocked(segment.fd, fcntl.LOCK_EX):
                    segment.refresh(locked=True)
                    if segment.tail:
                        segment.truncate_tail()
                    offset = segment.append(frame)
            except OSError as exc:
                msg = f"{tp}: append to {self._store.segment_path(tp)} failed: {exc}"
                raise TransportUnavailable(msg) from exc
            return Delivery(topic, partition, offset)

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = self._store.partition_count_for_send(topic)
        return count

    def _close(self) -> None:
        with self._io:
            self._closed = True
            for segment in self._segments.values():
                segment.close()
            self._segments.clear()


class EmbeddedConsumer:
    """A consumer-group member over the embedded log.

    The member holding the group lock owns all partitions of its topics; the others get an empty
    assignment and take over, from the committed offsets, when the owner stops or dies.
    """

    def __init__(
        self,
        store: _Store,
        topics: Sequence[str],
        *,
        group_id: str,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        self._store = store
        self._topics = tuple(dict.fromkeys(topics))
        self.group_id = group_id
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._lock_fd: int | None = None
        self._owner = False
        self._partitions: dict[str, int] = {}
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._segments: dict[TopicPartition, _Segment] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._next_discovery = 0.0
        self._rotation = 0
        self._fetching = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._state = "new"

    def __repr__(self) -> str:
        return f"EmbeddedConsumer(group={self.group_id!r}, topics={list(self._topics)!r})"

    async def start(self) -> None:
        if self._state != "new":
            msg = f"group {self.group_id!r}: consumer already {self._state}"
            raise TransportClosedError(msg)
        path = self._store.group_path(self.group_id, ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            msg = f"group {self.group_id!r}: cannot open {path}: {exc}"
            raise TransportUnavailable(msg) from exc
        self._state = "started"

    async def stop(self) -> None:
        """Leave the group (another member takes over) and close the files."""
        if self._state != "started":
            self._state = "stopped"
            return
        self._state = "stopped"
        self._wakeup.set()  # a getmany waiting for data returns now
        async with self._fetching:
            for segment in self._segments.values():
                segment.close()
            self._segments.clear()
            self._assignment = frozenset()
            self._owner = False
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the group lock
                self._lock_fd = None

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Message]]:
        """Records after each assigned partition's position; waits up to `timeout_ms` for some."""
        self._check_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_ms, 0) / 1000
        delay = _POLL_MIN_S
        async with self._fetching:
            while True:
                await self._maintain(loop.time())
                if self._assignment:
                    batch = await self._fetch_once(max_records)
                    if batch:
                        return batch
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return {}
                try:
                    await asyncio.wait_for(self._wakeup.wait(), min(delay, remaining))
                except TimeoutError:
                    pass
                if self._state != "started":
                    return {}
                delay = min(delay * 2, _POLL_MAX_S)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Durably record, per partition, the offset of the next message to read."""
        self._check_started()
        for tp, offset in offsets.items():
            if tp not in self._assignment:
                msg = f"group {self.group_id!r}: cannot commit {tp}@{offset}: not assigned to this member"
                raise CommitFailedError(msg)
            if offset < 0:
                msg = f"{tp}: cannot commit negative offset {offset}"
                raise ValueError(msg)
        merged = {**self._committed, **offsets}
        await asyncio.to_thread(self._write_committed, merged)
        self._committed = merged

    async def committed(self, tp: TopicPartition) -> int | None:
        self._check_started()
        offsets = await asyncio.to_thread(self._read_committed)
        return offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._assignment:
            msg = f"group {self.group_id!r}: cannot seek {tp}: not assigned to this member"
            raise NotAssignedError(msg)
        if offset < 0:
            msg = f"{tp}: cannot seek to negative offset {offset}"
            raise ValueError(msg)
        self._positions[tp] = offset

    async def offsets_for_times(
        self, times: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        self._check_started()
        out: dict[TopicPartition, int | None] = {}
        for tp, ms in times.items():
            segment = self._segments.get(tp)
            if tp not in self._assignment or segment is None:
                msg = f"group {self.group_id!r}: cannot look up times of {tp}: not assigned to this member"
                raise NotAssignedError(msg)
            out[tp] = await asyncio.to_thread(self._offset_for_time, segment, ms)
        return out

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self._paused.update(tp for tp in tps if tp in self._assignment)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(tps)
        self._wakeup.set()

    def paused(self) -> frozenset[TopicPartition]:
        return frozenset(self._paused)

    # -- internals --

    @staticmethod
    def _offset_for_time(segment: _Segment, ms: int) -> int | None:
        """The first offset whose timestamp is >= `ms` (a scan: record timestamps need not be sorted)."""
        try:
            segment.refresh(locked=False)
            offset = 0
            while offset < segment.count:
                records = segment.read(offset, 1024, _FETCH_MAX_BYTES)
                for m in records:
                    if m.timestamp_ms >= ms:
                        return m.offset
                offset += len(records)
        except OSError as exc:
            msg = f"{segment.tp}: cannot read {segment.path}: {exc}"
            raise TransportUnavailable(msg) from exc
        return None

    def _check_started(self) -> None:
        if self._state != "started":
            msg = f"group {self.group_id!r}: consumer is {self._state}, not started"
            raise TransportClosedError(msg)

    async def _maintain(self, now: float) -> None:
        """Take the group lock if free, and follow topics that appear (Kafka's eager rebalance)."""
        if not self._owner:
            if self._lock_fd is None:
                return
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another member owns the group
            except OSError as exc:
                msg = f"group {self.group_id!r}: cannot lock the group: {exc}"
                raise TransportUnavailable(msg) from exc
            self._owner = True
            self._next_discovery = 0.0
            log.info("group %r: this member now owns topics %s", self.group_id, list(self._topics))
        if now < self._next_discovery and len(self._partitions) == len(self._topics):
            return
        self._next_discovery = now + _DISCOVERY_S
        wanted = await asyncio.to_thread(self._discover)
        if wanted != self._assignment:
            await self._reassign(wanted)

    def _discover(self) -> frozenset[TopicPartition]:
        for topic in self._topics:
            if topic not in self._partitions:
                count = self._store.partition_count(topic)
                if count is not None:
                    self._partitions[topic] = count
        return frozenset(
            TopicPartition(topic, p) for topic, count in self._partitions.items() for p in range(count)
        )

    async def _reassign(self, wanted: frozenset[TopicPartition]) -> None:
        revoked = self._assignment
        if revoked:
            self._assignment = frozenset()
            if self._on_revoke is not None:
                await self._on_revoke(revoked)
        committed = await asyncio.to_thread(self._read_committed)
        try:
            for tp in wanted - self._segments.keys():
                self._segments[tp] = _Segment(tp, self._store.segment_path(tp), writable=False)
        except OSError as exc:
            msg = f"group {self.group_id!r}: cannot open segments: {exc}"
            raise TransportUnavailable(msg) from exc
        self._committed = committed
        self._positions = {tp: committed.get(tp, 0) for tp in wanted}  # earliest when none
        self._paused.intersection_update(wanted)
        self._assignment = wanted
        if self._on_assign is not None:
            await self._on_assign(wanted)

    async def _fetch_once(self, max_records: int | None) -> dict[TopicPartition, list[Message]]:
        order = sorted(self._assignment - self._paused)
        if not order:
            return {}
        self._rotation = (self._rotation + 1) % len(order)
        order = order[self._rotation :] + order[: self._rotation]  # no partition starves the others
        asked = {tp: self._positions[tp] for tp in order}
        fetched = await asyncio.to_thread(self._read, asked, max_records)
        out: dict[TopicPartition, list[Message]] = {}
        for tp, (start, records) in fetched.items():
            if self._positions.get(tp) != asked[tp] or tp not in self._assignment:
                continue  # a seek (or a rebalance) happened while we were reading: drop
            self._positions[tp] = start + len(records)
            if records:
                out[tp] = records
        return out

    def _read(
        self, asked: dict[TopicPartition, int], max_records: int | None
    ) -> dict[TopicPartition, tuple[int, list[Message]]]:
        records_left = max_records if max_records is not None else 1 << 62
        bytes_left = _FETCH_MAX_BYTES
        out: dict[TopicPartition, tuple[int, list[Message]]] = {}
        for tp, position in asked.items():
            if records_left <= 0 or bytes_left <= 0:
                break
            segment = self._segments[tp]
            try:
                segment.refresh(locked=False)
                if position > segment.count:
                    log.warning(
                        "%s@%d: position is past the end of the log (%d); resetting to the earliest",
                        tp,
                        position,
                        segment.count,
                    )
                    position = 0
                records = segment.read(position, records_left, bytes_left)
            except OSError as exc:
                msg = f"{tp}@{position}: cannot read {segment.path}: {exc}"
                raise TransportUnavailable(msg) from exc
            records_left -= len(records)
            bytes_left -= sum(len(m.value) for m in records)
            out[tp] = (position, records)
        return out

    def _read_committed(self) -> dict[TopicPartition, int]:
        path = self._store.group_path(self.group_id, ".json")
        try:
            doc: Any = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            msg = f"group {self.group_id!r}: unreadable committed offsets in {path}: {exc}"
            raise TransportUnavailable(msg) from exc
        offsets = doc.get("offsets", {}) if isinstance(doc, dict) else {}
        return {
            TopicPartition(topic, int(p)): int(offset)
            for topic, parts in offsets.items()
            for p, offset in parts.items()
        }

    def _write_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        nested: dict[str, dict[str, int]] = {}
        for tp, offset in sorted(offsets.items()):
            nested.setdefault(tp.topic, {})[str(tp.partition)] = offset
        doc = {"format": _FORMAT, "group": self.group_id, "offsets": nested}
        path = self._store.group_path(self.group_id, ".json")
        try:
            _write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            where = ", ".join(f"{tp}@{o}" for tp, o in sorted(offsets.items()))
            msg = f"group {self.group_id!r}: cannot commit {where} to {path}: {exc}"
            raise TransportUnavailable(msg) from exc


if TYPE_CHECKING:  # mypy proves that the transport, its producers and consumers meet the contract
    _conforms: Transport = EmbeddedTransport(Path())
