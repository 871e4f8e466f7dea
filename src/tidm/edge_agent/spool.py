"""The durable spool: every sealed batch is on disk before it is sent, and leaves only once sent.

Layout of the spool folder (one agent per folder, held with `flock` on `lock`):

    lock                  held by the running agent; the kernel releases it when the agent dies
    <n:020d>.open         a group file being written (a temp name: torn by a crash, removed on start)
    <n:020d>.sealed       a durable group of batches n, n+1, ... waiting to be sent (fsynced, renamed,
                          folder fsynced)
    <n:020d>.sent         every batch of the group acknowledged (or dropped); the newest one is kept
                          because it holds the chain head, older ones go at the next group write
    progress.log          appended "A <n>" (acknowledged) / "D <n>" (dropped) lines, so a restart
                          neither resends acknowledged batches of a partly sent group nor revives
                          dropped ones
    corrupt/              group files that failed their checks on start (counted, evidenced)

A group file holds the batches sealed in one round exactly as they go on the wire (key, headers with
SHA-256 and signature, Arrow IPC value) with their provenance, and the chain head after its last
batch (previous batch hash, next seq per source, last source timestamp per (asset, signal)). A resend
is byte-identical, so receivers drop a re-sent copy by its SHA-256.

Writes are group commits off the sealing path: batches accepted while a group is being written form
the next group, so one fsync of a file and one of the folder serve however many batches arrived
meanwhile. A kill at any moment leaves either the old or the new name of a file, never a torn
`.sealed` one. What a kill -9 can cost is bounded: a batch acknowledged just before it (its "A" line
not yet written) is sent again. `progress.log` is not fsynced: after a power cut a batch can be sent
again (harmless) or a dropped one revived (sent after its DROP entry; the evidence then shows both).

Bounded by bytes (unsent batches): when a group does not fit, the `pause` policy waits for
acknowledgements (the agent stops sealing and asks pausable sources to pause), `drop_oldest` removes
the oldest unsent batches, each with a DROP evidence entry naming its batch, asset and seq range.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from tidm.edge_agent.config import SpoolSettings
from tidm.edge_agent.errors import AgentError
from tidm.errors import Terminal
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.envelope import Provenance, SealedBatch

__all__ = [
    "ChainHead",
    "DiskSpool",
    "MemorySpool",
    "Spool",
    "SpoolError",
    "SpoolStats",
    "SpooledBatch",
]

log = logging.getLogger(__name__)

_MAGIC = b"TIDMSPL1"
_LEN = struct.Struct(">I")
_PROGRESS = "progress.log"
_CLOSING_POLL_S = 0.05  # how often a closing spool's reader looks again without being woken
_HOLD_BYTES = 64 << 20  # batches written by this process are sent from memory up to this much
_FORMAT = 1


class SpoolError(AgentError, Terminal):
    """The spool folder cannot be used (held by another agent, unreadable state, bad settings)."""


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class ChainHead:
    """What a restarted agent continues from: the provenance chain, the seq counters per source and
    the last source timestamp per (asset, signal) (a re-subscription's initial values are not new)."""

    prev_batch_hash: str = ""
    next_seq: dict[str, int] = field(default_factory=dict)
    last_ts: dict[str, dict[str, int]] = field(default_factory=dict)

    def copy(self) -> ChainHead:
        return ChainHead(
            self.prev_batch_hash, dict(self.next_seq), {a: dict(s) for a, s in self.last_ts.items()}
        )

    def to_doc(self) -> dict[str, Any]:
        return {"prev_batch_hash": self.prev_batch_hash, "next_seq": self.next_seq, "last_ts": self.last_ts}


@dataclass(frozen=True)
class SpooledBatch:
    """One batch as the publisher sends it: the exact key, value and headers that were sealed."""

    number: int
    value: bytes
    key: bytes
    headers: tuple[tuple[str, bytes], ...]
    sha256: str
    provenance: Provenance

    @property
    def size(self) -> int:
        return len(self.value)


@dataclass
class SpoolStats:
    batches_spooled: int = 0
    batches_sent: int = 0
    batches_recovered: int = 0  # found unsent on start
    batches_dropped: int = 0
    rows_dropped: int = 0
    batches_corrupt: int = 0
    torn_removed: int = 0
    waits_full: int = 0  # times the pause policy made the agent wait


@dataclass
class _Entry:
    number: int
    size: int
    sha256: str
    provenance: Provenance
    batch: SpooledBatch | None = None  # kept in memory only by the memory spool
    written: bool = True  # durable (the disk spool sets False until its group is written)
    dropped: bool = False
    group: int = -1  # first number of the group file holding it
    meta: dict[str, Any] | None = None  # its entry in the group file's header


class Spool(Protocol):
    """What the agent needs of a spool (durable on disk, or the in-memory fallback)."""

    stats: SpoolStats

    @property
    def head(self) -> ChainHead: ...

    @property
    def full(self) -> bool: ...

    async def put(
        self, batches: Sequence[tuple[SealedBatch, ChainHead]], *, force: bool = False
    ) -> list[SpooledBatch]:
        """Store sealed batches (in chain order, each with the head after it); wait or drop per policy."""
        ...

    async def next(self, *, closing: asyncio.Event) -> SpooledBatch | None:
        """The oldest unsent batch (waits for one); None once `closing` is set and nothing is left."""
        ...

    async def next_many(self, limit: int, *, closing: asyncio.Event) -> list[SpooledBatch]:
        """Up to `limit` oldest unsent batches in order (waits for one); [] when closing and empty."""
        ...

    def release(self, batches: Sequence[SpooledBatch]) -> None:
        """Taken batches whose send failed: unsent again."""
        ...

    async def ack(self, batch: SpooledBatch) -> None:
        """The transport acknowledged `batch`: mark it sent and release its space."""
        ...

    def pending(self) -> int:
        """Number of unsent batches."""
        ...

    async def flush(self) -> None:
        """Wait until every accepted batch is durable."""
        ...

    def stop_waiting(self) -> None:
        """Stop applying the bound (the agent is stopping and must not lose what it still seals)."""
        ...

    def recovered(self) -> list[tuple[Provenance, str]]:
        """(provenance, SHA-256) of the unsent batches found on start."""
        ...

    def close(self) -> None: ...


class _Base:
    """Order, bound and full policy, shared by the disk and the memory spools."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_batches: int | None,
        policy: Literal["pause", "drop_oldest"],
        evidence: EvidenceLog | None,
        actor: str,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self.policy = policy
        self._evidence = evidence
        self._actor = actor
        self._queue: deque[_Entry] = deque()
        self._bytes = 0
        self._inflight: set[int] = set()  # numbers of the batches the publisher is sending
        self._items = asyncio.Event()  # set when batches were added
        self._space = asyncio.Event()  # set when space was freed (or waiting is over)
        self._unbounded = False
        self._head = ChainHead()
        self.stats = SpoolStats()

    @property
    def head(self) -> ChainHead:
        return self._head.copy()

    @property
    def full(self) -> bool:
        return self._over(0, 0)

    def pending(self) -> int:
        return len(self._queue)

    def pending_bytes(self) -> int:
        return self._bytes

    def _over(self, extra_bytes: int, extra_batches: int) -> bool:
        if not self._queue:
            return False  # an empty spool always takes a group, so one large batch cannot wedge it
        if self._bytes + extra_bytes > self.max_bytes:
            return True
        return self.max_batches is not None and len(self._queue) + extra_batches > self.max_batches

    async def _make_room(self, size: int, count: int, *, force: bool) -> None:
        self._raise_failure()
        if force or not self._over(size, count):
            return
        if self.policy == "drop_oldest":
            dropped = []
            while self._over(size, count):
                victim = next((e for e in self._queue if e.number not in self._inflight), None)
                if victim is None:
                    break
                self._queue.remove(victim)
                self._bytes -= victim.size
                dropped.append(victim)
            self._record_drops(dropped, reason="spool-full")
            for victim in dropped:
                self._remove(victim)
            self._freed()
            return
        self.stats.waits_full += 1
        while self._over(size, count) and not self._unbounded:
            self._space.clear()
            await self._space.wait()

    def stop_waiting(self) -> None:
        """From now on take every batch whatever the bound (the agent is stopping: the batches it
        still seals must not be lost to a full spool)."""
        self._unbounded = True
        self._space.set()

    def _record_drops(self, dropped: Sequence[_Entry], *, reason: str) -> None:
        if not dropped:
            return
        now = _now_us()
        for victim in dropped:
            p = victim.provenance
            self.stats.batches_dropped += 1
            self.stats.rows_dropped += p.rows
            log.warning(
                "spool full: dropped batch %s of %s (seq %d..%d, %d rows)",
                p.batch_id,
                p.asset_id,
                p.seq_first,
                p.seq_last,
                p.rows,
            )
        if self._evidence is not None:
            self._evidence.append(
                [
                    EvidenceEntry(
                        event=EventType.DROP,
                        subject=v.sha256,
                        actor=self._actor,
                        time_us=now,
                        inputs=(v.sha256,),
                        attributes={
                            "reason": reason,
                            "policy": self.policy,
                            "batch_id": v.provenance.batch_id,
                            "asset": v.provenance.asset_id,
                            "seq_first": v.provenance.seq_first,
                            "seq_last": v.provenance.seq_last,
                            "rows": v.provenance.rows,
                            "bytes": v.size,
                        },
                    )
                    for v in dropped
                ]
            )

    def _remove(self, entry: _Entry) -> None:
        """Forget a dropped entry's storage (the disk spool deletes its file)."""

    async def next(self, *, closing: asyncio.Event) -> SpooledBatch | None:
        while True:
            self._raise_failure()
            if self._queue and self._queue[0].written:
                entry = self._queue[0]
                self._inflight.add(entry.number)
                return await self._load(entry)
            if closing.is_set() and not self._queue:
                return None
            self._items.clear()
            if closing.is_set():
                # Closing, with batches whose group is still being written: wait for the write (not
                # for `closing`, which is set and would return at once, spinning the loop for as long
                # as the fsync takes). Bounded, in case the batches left are dropped instead.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._items.wait(), timeout=_CLOSING_POLL_S)
                continue
            waiters = [asyncio.ensure_future(self._items.wait()), asyncio.ensure_future(closing.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _load(self, entry: _Entry) -> SpooledBatch:
        raise NotImplementedError

    def _raise_failure(self) -> None:
        """Raise what made the spool unusable (a failed group write), if anything did."""

    def _added(self) -> None:
        self._items.set()

    def _freed(self) -> None:
        self._space.set()

    async def next_many(self, limit: int, *, closing: asyncio.Event) -> list[SpooledBatch]:
        """Up to `limit` oldest unsent batches, in order (waits for one); [] once `closing` is set and
        nothing is left. They stay in the spool, never dropped, until acknowledged or released."""
        first = await self.next(closing=closing)
        if first is None:
            return []
        out = [first]
        for entry in list(self._queue)[1:limit]:
            if not entry.written:
                break
            self._inflight.add(entry.number)
            out.append(await self._load(entry))
        return out

    def release(self, batches: Sequence[SpooledBatch]) -> None:
        """Batches taken but not sent (the send failed): unsent again, first in line as before."""
        for batch in batches:
            self._inflight.discard(batch.number)

    def _pop_acked(self, batch: SpooledBatch) -> _Entry | None:
        self._inflight.discard(batch.number)
        for i, entry in enumerate(self._queue):
            if entry.number == batch.number:
                del self._queue[i]
                self._bytes -= entry.size
                self.stats.batches_sent += 1
                return entry
        return None  # dropped while in flight cannot happen (the in-flight one is never dropped)


class MemorySpool(_Base):
    """The fallback without a spool folder: the same order and policies, lost on a crash."""

    def __init__(
        self,
        *,
        max_batches: int,
        max_bytes: int = 1 << 62,
        policy: Literal["pause", "drop_oldest"] = "pause",
        evidence: EvidenceLog | None = None,
        actor: str = "agent",
    ) -> None:
        super().__init__(
            max_bytes=max_bytes, max_batches=max_batches, policy=policy, evidence=evidence, actor=actor
        )
        self._number = 0

    async def put(
        self, batches: Sequence[tuple[SealedBatch, ChainHead]], *, force: bool = False
    ) -> list[SpooledBatch]:
        if not batches:
            return []
        await self._make_room(sum(len(s.value) for s, _ in batches), len(batches), force=force)
        out = []
        for sealed, head in batches:
            item = SpooledBatch(
                self._number,
                sealed.value,
                sealed.key,
                tuple(sealed.headers()),
                sealed.sha256,
                sealed.provenance,
            )
            self._number += 1
            self._queue.append(_Entry(item.number, item.size, item.sha256, item.provenance, item))
            self._bytes += item.size
            self._head = head.copy()
            out.append(item)
        self.stats.batches_spooled += len(out)
        self._added()
        return out

    async def _load(self, entry: _Entry) -> SpooledBatch:
        assert entry.batch is not None  # noqa: S101 - the memory spool keeps every batch
        return entry.batch

    async def ack(self, batch: SpooledBatch) -> None:
        self._pop_acked(batch)
        self._freed()

    async def flush(self) -> None:
        """Nothing to write."""

    def recovered(self) -> list[tuple[Provenance, str]]:
        """Nothing survives a restart in memory."""
        return []

    def close(self) -> None:
        """Nothing to release."""


def _spooled(number: int, sealed: SealedBatch) -> SpooledBatch:
    return SpooledBatch(
        number, sealed.value, sealed.key, tuple(sealed.headers()), sealed.sha256, sealed.provenance
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


# The encoder json.dumps(..., sort_keys=True, separators=(",", ":")) builds on every call, built once.
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_PROVENANCE_FIELDS = tuple(f.name for f in fields(Provenance))
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, as the encoder writes it


def _provenance_json(p: Provenance) -> str:
    """`Provenance.to_json()` as text, without `dataclasses.asdict`'s deep copy (its fields are flat:
    strings, ints, tuples of strings and one str -> str dict, which JSON renders the same)."""
    return _JSON.encode({name: getattr(p, name) for name in _PROVENANCE_FIELDS})


def _sealed_provenance(sealed: SealedBatch) -> str:
    """The provenance JSON the batch was sealed with (the same text `_provenance_json` gives)."""
    return (
        sealed.provenance_json.decode("utf-8")
        if sealed.provenance_json
        else _provenance_json(sealed.provenance)
    )


def _meta_json(sealed: SealedBatch, number: int, offset: int) -> str:
    """A batch's entry in a group header, as `_JSON` encodes the dict of it (keys in sorted order):
    written out directly, it costs half as much, and the group file is written for every batch."""
    headers = ",".join(f"[{_quote(name)},{_quote(_b64(value))}]" for name, value in sealed.headers())
    return (
        f'{{"headers":[{headers}],"key":{_quote(_b64(sealed.key))},"number":{int(number)},'
        f'"offset":{int(offset)},"provenance":{_quote(_sealed_provenance(sealed))},'
        f'"sha256":{_quote(sealed.sha256)},"size":{len(sealed.value)}}}'
    )


def _encode_group(first: int, group: Sequence[tuple[SealedBatch, int]], head: ChainHead) -> bytes:
    """A group file: magic, header length, JSON header (batches, chain head), then the values.

    The header is the sorted-key compact JSON of {"format", "first", "head", "batches": [...]}."""
    metas, offset = [], 0
    for sealed, number in group:
        metas.append(_meta_json(sealed, number, offset))
        offset += len(sealed.value)
    blob = (
        f'{{"batches":[{",".join(metas)}],"first":{int(first)},"format":{_FORMAT},'
        f'"head":{_JSON.encode(head.to_doc())}}}'
    ).encode()
    return b"".join([_MAGIC, _LEN.pack(len(blob)), blob, *(s.value for s, _ in group)])


def _decode_header(data: bytes, where: str) -> tuple[dict[str, Any], int]:
    """A group file's header and where its values start; ValueError (naming `where`) if malformed."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _LEN.size:
        msg = f"{where}: not a spool group file"
        raise ValueError(msg)
    (size,) = _LEN.unpack_from(data, len(_MAGIC))
    start = len(_MAGIC) + _LEN.size
    try:
        header = json.loads(data[start : start + size])
        total = sum(int(m["size"]) for m in header["batches"])
        _head_from(header["head"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"{where}: malformed group header ({exc})"
        raise ValueError(msg) from exc
    if len(data) != start + size + total:
        msg = f"{where}: {len(data)} bytes, the header accounts for {start + size + total}"
        raise ValueError(msg)
    return header, start + size


def _batch_at(data: bytes, base: int, meta: Mapping[str, Any], where: str) -> SpooledBatch:
    value = data[base + int(meta["offset"]) : base + int(meta["offset"]) + int(meta["size"])]
    digest = hashlib.sha256(value).hexdigest()
    if digest != meta["sha256"]:
        msg = f"{where}: batch {meta['number']}: SHA-256 {digest} != {meta['sha256']}"
        raise ValueError(msg)
    try:
        provenance = Provenance.from_json(str(meta["provenance"]).encode("utf-8"), where=where)
        return SpooledBatch(
            number=int(meta["number"]),
            value=value,
            key=base64.b64decode(meta["key"]),
            headers=tuple((str(n), base64.b64decode(v)) for n, v in meta["headers"]),
            sha256=digest,
            provenance=provenance,
        )
    except Exception as exc:  # EnvelopeError from the provenance, binascii.Error from base64
        msg = f"{where}: batch {meta['number']}: malformed ({exc})"
        raise ValueError(msg) from exc


def _head_from(doc: Mapping[str, Any]) -> ChainHead:
    return ChainHead(
        str(doc["prev_batch_hash"]),
        {str(k): int(v) for k, v in doc["next_seq"].items()},
        {str(a): {str(s): int(t) for s, t in m.items()} for a, m in doc["last_ts"].items()},
    )


@dataclass
class _Group:
    first: int
    live: set[int]  # batches neither acknowledged nor dropped
    sent: bool = False


class DiskSpool(_Base):
    """Group files in a local folder; see the module docstring for layout and guarantees."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        policy: Literal["pause", "drop_oldest"] = "pause",
        evidence: EvidenceLog | None = None,
        actor: str = "agent",
    ) -> None:
        if max_bytes < 1:
            msg = f"spool {path}: max_bytes must be at least 1, not {max_bytes}"
            raise SpoolError(msg)
        super().__init__(max_bytes=max_bytes, max_batches=None, policy=policy, evidence=evidence, actor=actor)
        self.path = path
        self._lock_fd: int | None = None
        self._progress_fd: int | None = None
        self._number = 0
        self._groups: dict[int, _Group] = {}
        self._newest = -1  # first number of the newest group file (it holds the chain head)
        self._unwritten: list[tuple[_Entry, SealedBatch, ChainHead]] = []
        self._writing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._cache: tuple[int, bytes, int] | None = None  # (group, file bytes, values start)
        self._held = 0  # bytes of batches kept in memory for sending
        self._recovered: list[tuple[Provenance, str]] = []
        self._closed = False
        # Called (on the event loop) before a group write deletes the files of sent batches: the
        # agent syncs its evidence log there (opened with durability="process", appends are not
        # fsynced one by one), so a batch's evidence is durable before its local copy is gone.
        self.before_delete: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: SpoolSettings, *, evidence: EvidenceLog, actor: str) -> DiskSpool:
        """Open (lock, clean, recover) the spool folder the settings name."""
        spool = cls(
            settings.path,
            max_bytes=settings.max_bytes,
            policy=settings.full_policy,
            evidence=evidence,
            actor=actor,
        )
        return spool.open()

    # -- start ---------------------------------------------------------------------------------------

    def open(self) -> DiskSpool:
        """Lock the folder, clean torn temp files, load the chain head and the unsent batches."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            msg = f"cannot open spool folder {self.path}: {exc.strerror}"
            raise SpoolError(msg) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            msg = f"spool folder {self.path} is in use by another agent process"
            raise SpoolError(msg) from exc
        self._lock_fd = fd
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        return self

    def _read_progress(self) -> set[int]:
        done: set[int] = set()
        try:
            text = (self.path / _PROGRESS).read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return done
        for line in text.splitlines():
            kind, _, number = line.partition(" ")
            if kind in ("A", "D") and number.isdigit():
                done.add(int(number))
        return done

    def _recover(self) -> None:
        done = self._read_progress()
        files: list[tuple[int, Path]] = []
        for child in self.path.iterdir():
            if child.name.endswith((".open", ".tmp")):
                child.unlink()  # torn by a crash before its rename: never acknowledged to anyone
                self.stats.torn_removed += 1
            elif child.suffix in (".sealed", ".sent"):
                try:
                    files.append((int(child.stem), child))
                except ValueError:
                    log.warning("%s: not a spool file name; left alone", child)
        head_found = False
        kept_progress: list[str] = []
        for first, path in sorted(files, reverse=True):  # newest first: it holds the chain head
            try:
                data = path.read_bytes()
                header, base = _decode_header(data, str(path))
                batches = [(m, _batch_at(data, base, m, str(path))) for m in header["batches"]]
            except (OSError, ValueError) as exc:
                self._quarantine(path, str(exc))
                continue
            last = max([first - 1, *(int(m["number"]) for m in header["batches"])])
            self._number = max(self._number, last + 1)
            if not head_found:
                self._head = _head_from(header["head"])
                self._newest = first
                head_found = True
            elif path.suffix == ".sent":
                path.unlink()
                continue
            if path.suffix == ".sent":
                self._groups[first] = _Group(first, set(), sent=True)
                continue
            entries = []
            for meta, batch in batches:
                if batch.number in done:
                    kept_progress.append(f"A {batch.number}")
                    continue
                entries.append(
                    _Entry(batch.number, batch.size, batch.sha256, batch.provenance, group=first, meta=meta)
                )
                self._bytes += batch.size
            self._queue.extendleft(reversed(entries))
            self._groups[first] = _Group(first, {e.number for e in entries})
            if not entries:
                self._mark_sent(first)
        self._recovered = [(e.provenance, e.sha256) for e in self._queue]
        self.stats.batches_recovered = len(self._queue)
        # Only lines about batches of files still here matter; start the log afresh with those.
        tmp = self.path / f"{_PROGRESS}.tmp"
        _write_synced(tmp, "".join(f"{line}\n" for line in kept_progress).encode("ascii"))
        os.replace(tmp, self.path / _PROGRESS)
        _fsync_dir(self.path)
        self._progress_fd = os.open(self.path / _PROGRESS, os.O_WRONLY | os.O_APPEND)
        if self._queue or self.stats.torn_removed:
            log.info(
                "spool %s: %d unsent batch(es) (%d bytes) to send first; %d torn temp file(s) removed",
                self.path,
                len(self._queue),
                self._bytes,
                self.stats.torn_removed,
            )

    def _quarantine(self, path: Path, reason: str) -> None:
        """A group file that fails its checks is kept aside, counted and evidenced, never sent."""
        corrupt = self.path / "corrupt"
        corrupt.mkdir(exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        os.replace(path, corrupt / path.name)
        _fsync_dir(self.path)
        self.stats.batches_corrupt += 1
        log.error("spool: %s; moved to %s", reason, corrupt)
        if self._evidence is not None:
            self._evidence.append(
                [
                    EvidenceEntry(
                        event=EventType.ROUTE,
                        subject=hashlib.sha256(data).hexdigest(),
                        actor=self._actor,
                        time_us=_now_us(),
                        attributes={"reason": "spool-corrupt", "file": path.name, "to": "corrupt"},
                    )
                ]
            )

    def recovered(self) -> list[tuple[Provenance, str]]:
        """(provenance, SHA-256) of the unsent batches found on start, oldest first."""
        return list(self._recovered)

    # -- writing -------------------------------------------------------------------------------------

    async def put(
        self, batches: Sequence[tuple[SealedBatch, ChainHead]], *, force: bool = False
    ) -> list[SpooledBatch]:
        """Accept the batches (per the full policy) and write them in the next group commit. Returns
        at once; the publisher sees a batch only once its group is durable (`flush` waits for it)."""
        if not batches:
            return []
        await self._make_room(sum(len(s.value) for s, _ in batches), len(batches), force=force)
        out = []
        for sealed, head in batches:
            entry = _Entry(self._number, len(sealed.value), sealed.sha256, sealed.provenance, written=False)
            self._number += 1
            item = _spooled(entry.number, sealed)  # frozen: the same object serves both uses
            if self._held + entry.size <= _HOLD_BYTES:
                # Sent from memory while it is there: no read back (the bytes are the ones written).
                entry.batch = item
                self._held += entry.size
            self._queue.append(entry)
            self._bytes += entry.size
            self._unwritten.append((entry, sealed, head))
            out.append(item)
        self._head = batches[-1][1].copy()
        self.stats.batches_spooled += len(out)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_pending(), name="spool-writer")
        return out

    async def _write_pending(self) -> None:
        try:
            while self._unwritten:
                taken, self._unwritten = self._unwritten, []
                group = [(e, s, h) for e, s, h in taken if not e.dropped]
                if not group:
                    continue
                first = group[0][0].number
                obsolete = [g for g in self._groups.values() if g.sent]
                if obsolete and self.before_delete is not None:
                    self.before_delete()
                await asyncio.to_thread(self._write_group, first, group, [g.first for g in obsolete])
                for g in obsolete:
                    del self._groups[g.first]
                self._groups[first] = _Group(first, {e.number for e, _, _ in group})
                self._newest = first
                for entry, _, _ in group:
                    entry.written, entry.group = True, first
                    if entry.dropped:  # dropped while its group was being written
                        self._forget(entry, "D")
                self._added()
        except BaseException as exc:
            self._failure = exc
            self._added()
            self._freed()
            raise

    def _write_group(
        self, first: int, group: Sequence[tuple[_Entry, SealedBatch, ChainHead]], obsolete: Sequence[int]
    ) -> None:
        """The group commit: temp file, fsync, rename, folder fsync; then the old `.sent` files go."""
        data = _encode_group(first, [(s, e.number) for e, s, _ in group], group[-1][2])
        tmp = self._name(first, "open")
        _write_synced(tmp, data)
        os.replace(tmp, self._name(first, "sealed"))
        _fsync_dir(self.path)
        for old in obsolete:  # only after the newer head is durable
            self._name(old, "sent").unlink(missing_ok=True)

    async def flush(self) -> None:
        """Wait until every accepted batch is durable."""
        while self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            msg = f"spool {self.path}: writing failed: {self._failure}"
            raise SpoolError(msg) from self._failure

    def _name(self, first: int, state: str) -> Path:
        return self.path / f"{first:020d}.{state}"

    def _remove(self, entry: _Entry) -> None:
        entry.dropped = True
        if entry.batch is not None:
            entry.batch = None
            self._held -= entry.size
        if entry.written:
            self._forget(entry, "D")

    def _forget(self, entry: _Entry, kind: str) -> None:
        """Record an acknowledged/dropped batch; a group with nothing left becomes `.sent`."""
        if entry.batch is not None:
            entry.batch = None
            self._held -= entry.size
        if self._progress_fd is not None:
            os.write(self._progress_fd, f"{kind} {entry.number}\n".encode("ascii"))
        group = self._groups.get(entry.group)
        if group is None:
            return
        group.live.discard(entry.number)
        if not group.live:
            self._mark_sent(group.first)

    def _mark_sent(self, first: int) -> None:
        if self._groups[first].sent:
            return
        # Not fsynced: if the rename is lost, the progress log still says what was sent.
        os.replace(self._name(first, "sealed"), self._name(first, "sent"))
        self._groups[first].sent = True
        if self._cache is not None and self._cache[0] == first:
            self._cache = None

    # -- sending -------------------------------------------------------------------------------------

    async def _load(self, entry: _Entry) -> SpooledBatch:
        if entry.batch is not None:
            return entry.batch
        path = self._name(entry.group, "sealed")
        try:
            if self._cache is None or self._cache[0] != entry.group:
                data = await asyncio.to_thread(path.read_bytes)
                header, base = _decode_header(data, str(path))
                self._cache = (entry.group, data, base)
                metas = {int(m["number"]): m for m in header["batches"]}
                for e in self._queue:
                    if e.group == entry.group:
                        e.meta = metas.get(e.number)
            _, data, base = self._cache
            if entry.meta is None:
                msg = f"{path}: batch {entry.number} is not in its group file"
                raise ValueError(msg)
            return _batch_at(data, base, entry.meta, str(path))
        except (OSError, ValueError) as exc:
            # Checked on start and fsynced before its rename: only the disk can have done this.
            self._inflight.clear()
            self._cache = None
            for e in [e for e in self._queue if e.group == entry.group]:
                self._queue.remove(e)
                self._bytes -= e.size
            if path.exists():
                self._quarantine(path, str(exc))
            msg = f"spool group file {path} became unreadable: {exc}"
            raise SpoolError(msg) from exc

    async def ack(self, batch: SpooledBatch) -> None:
        entry = self._pop_acked(batch)
        if entry is not None:
            self._forget(entry, "A")
        self._freed()

    def close(self) -> None:
        """Release the folder lock (unsent batches stay for the next start). Call `flush` first."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._progress_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._progress_fd = self._lock_fd = None
