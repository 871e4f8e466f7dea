"""The evidence log's public contract: what every hop appends and what verifiers read.

Other parts depend only on `EvidenceLog`; stores (SQLite embedded, tiles on S3) implement it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["EventType", "EvidenceEntry", "EvidenceLog", "LoggedEntry"]


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

    def close(self) -> None:
        """Release the store's resources."""
        ...
