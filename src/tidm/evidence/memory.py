"""An in-memory `EvidenceLog`, for unit tests of the parts that append evidence.

Same canonical bytes, tree and checkpoints as the SQLite store; nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from tidm.evidence import merkle
from tidm.evidence.api import EvidenceEntry, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint, Signer, sign_checkpoint
from tidm.evidence.entry import _parse_entry, canonical_bytes, is_digest
from tidm.evidence.errors import EntryError, EvidenceError, OutOfRangeError

__all__ = ["MemoryEvidenceLog"]


class MemoryEvidenceLog:
    """An `EvidenceLog` (and `AuditableLog`) held in lists; thread-safe, not durable."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: list[LoggedEntry] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._frontier = merkle.Frontier()
        self._checkpoints: list[str] = []

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        """Append entries in order and return them as logged."""
        prepared = [(canonical, _parse_entry(canonical)) for canonical in map(canonical_bytes, entries)]
        with self._lock:
            logged = []
            for canonical, entry in prepared:
                leaf = merkle.leaf_hash(canonical)
                item = LoggedEntry(self._frontier.size, entry, canonical, leaf)
                for level, index, value in self._frontier.append(leaf):
                    self._nodes[level, index] = value
                self._entries.append(item)
                logged.append(item)
            return logged

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        """Append unless an entry with the same (event, subject, actor) exists; return the logged one."""
        normalized = _parse_entry(canonical_bytes(entry))
        with self._lock:
            for item in self._entries:
                logged = item.entry
                if (logged.event, logged.subject, logged.actor) == (
                    normalized.event,
                    normalized.subject,
                    normalized.actor,
                ):
                    return item
            return self.append([normalized])[0]

    def size(self) -> int:
        """Number of entries in the log."""
        with self._lock:
            return len(self._entries)

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        """Entries with start <= index < end, in index order."""
        with self._lock:
            snapshot = self._entries[max(start, 0) : end]
        yield from snapshot

    def read_raw(self, start: int = 0, end: int | None = None) -> Iterator[list[tuple[int, bytes, bytes]]]:
        """(index, canonical bytes, leaf hash) in chunks: the audit's fast path."""
        items = list(self.read(start, end))
        for first in range(0, len(items), 8192):
            yield [(i.index, i.canonical, i.leaf_hash) for i in items[first : first + 8192]]

    def find(self, subject: str) -> list[LoggedEntry]:
        """Entries whose subject is `subject`, in index order."""
        _check_digest(subject)
        with self._lock:
            return [item for item in self._entries if item.entry.subject == subject]

    def by_input(self, subject: str) -> list[LoggedEntry]:
        """Entries that list `subject` among their inputs, in index order."""
        _check_digest(subject)
        with self._lock:
            return [item for item in self._entries if subject in item.entry.inputs]

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first `size` entries (default: all)."""
        with self._lock:
            size = self._bounded(size)
            if size == 0:
                return merkle.EMPTY_ROOT
            return merkle.Frontier(size, self._read(merkle.border(size))).root()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of entry `index` in the tree of `size` entries (default: all)."""
        with self._lock:
            return merkle.inclusion_proof(index, self._bounded(size), self._read)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from the tree of `old_size` entries to the one of `new_size` (default: all)."""
        with self._lock:
            return merkle.consistency_proof(old_size, self._bounded(new_size), self._read)

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        """Sign a C2SP checkpoint of the whole log, keep it, and return the note text."""
        signers = [signer] if isinstance(signer, Signer) else list(signer)
        if not signers:
            msg = "a checkpoint needs at least one signer"
            raise EvidenceError(msg)
        with self._lock:
            body = Checkpoint(origin or signers[0].name, self._frontier.size, self._frontier.root())
            note = sign_checkpoint(body, signers)
            self._checkpoints.append(note)
            return note

    def close(self) -> None:
        """Nothing to release."""

    def node_hashes(self, level: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Stored (index, hash) of complete subtrees at `level`, start <= index < end, by index."""
        with self._lock:
            count = self._frontier.size >> level
            stop = count if end is None else min(end, count)
            snapshot = [(index, self._nodes[level, index]) for index in range(max(start, 0), stop)]
        yield from snapshot

    def checkpoints(self) -> list[str]:
        """Signed checkpoint notes this log issued, oldest first."""
        with self._lock:
            return list(self._checkpoints)

    def _read(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self._nodes[coord] for coord in coords]

    def _bounded(self, size: int | None) -> int:
        current = self._frontier.size
        if size is None:
            return current
        if not 0 <= size <= current:
            msg = f"tree size {size} is outside the log, which has {current} entries"
            raise OutOfRangeError(msg)
        return size


def _check_digest(subject: str) -> None:
    if not is_digest(subject):
        msg = f"subjects are 64 lowercase hex characters, got {subject!r}"
        raise EntryError(msg)
