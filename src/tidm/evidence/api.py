"""The evidence log's public contract: what every hop appends and what verifiers read.

Other parts depend only on `EvidenceLog`; stores (SQLite embedded, tiles on S3) implement it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tidm.evidence.checkpoint import Signer

__all__ = ["AuditableLog", "EventType", "EvidenceEntry", "EvidenceLog", "LoggedEntry"]


class EventType(enum.StrEnum):
    """NiFi's provenance vocabulary, plus the few hops TIDM names itself."""

    CREATE = "CREATE"
    RECEIVE = "RECEIVE"
    FETCH = "FETCH"
    SEND = "SEND"
    DOWNLOAD = "DOWNLOAD"
    DROP = "DROP"
    EXPIRE = "EXPIRE"
    FORK = "FORK"
    JOIN = "JOIN"
    CLONE = "CLONE"
    CONTENT_MODIFIED = "CONTENT_MODIFIED"
    ATTRIBUTES_MODIFIED = "ATTRIBUTES_MODIFIED"
    ROUTE = "ROUTE"
    ADDINFO = "ADDINFO"
    REPLAY = "REPLAY"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class EvidenceEntry:
    """One event about one object.

    `subject` and `inputs` are lowercase hex SHA-256 digests of object bytes (batch IPC bytes, Parquet
    file bytes). `time_us` is µs since the epoch, UTC. `attributes` holds JSON-compatible values only:
    digests, ids, counts, offsets, never payloads or secrets.
    """

    event: EventType
    subject: str
    actor: str
    time_us: int
    inputs: Sequence[str] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedEntry:
    """An entry as stored: its index in the log, its canonical bytes and its RFC 9162 leaf hash."""

    index: int
    entry: EvidenceEntry
    canonical: bytes
    leaf_hash: bytes


@runtime_checkable
class EvidenceLog(Protocol):
    """An append-only, tamper-evident log of evidence entries."""

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        """Append entries durably, in order, and return them as logged."""
        ...

    def size(self) -> int:
        """Number of entries in the log."""
        ...

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        """Entries with start <= index < end, in index order."""
        ...

    def find(self, subject: str) -> list[LoggedEntry]:
        """Entries whose subject is `subject`, in index order."""
        ...

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        """Append `entry` unless one with the same (event, subject, actor) is logged; return the logged one.

        Replays after a crash call this, so an event is never logged twice.
        """
        ...

    def by_input(self, subject: str) -> list[LoggedEntry]:
        """Entries that list `subject` among their inputs, in index order (one step of a lineage walk)."""
        ...

    def root(self, size: int | None = None) -> bytes:
        """RFC 9162 root hash of the first `size` entries (default: all)."""
        ...

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of entry `index` in the tree of `size` entries (default: all)."""
        ...

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of `old_size` entries to `new_size` (default: all)."""
        ...

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        """Sign a C2SP checkpoint of the current tree (origin defaults to the first signer's name)."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


@runtime_checkable
class AuditableLog(Protocol):
    """A log that exposes what it serves proofs from, so `verify_log` can audit that too."""

    def node_hashes(self, level: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Stored (index, hash) of complete subtrees at `level` with start <= index < end, by index."""
        ...

    def checkpoints(self) -> list[str]:
        """Signed checkpoint notes this log has issued, oldest first."""
        ...
