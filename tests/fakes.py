"""Small in-memory fakes of TIDM's own interfaces, for unit tests only."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from tidm.evidence.api import EvidenceEntry, LoggedEntry
from tidm.ingest.transports.base import Delivery, Message


class MemoryEvidence:
    """An EvidenceLog that keeps entries in a list (no Merkle tree, no durability)."""

    def __init__(self) -> None:
        self.entries: list[LoggedEntry] = []

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        out = []
        for e in entries:
            raw = repr(e).encode()
            logged = LoggedEntry(len(self.entries), e, raw, hashlib.sha256(b"\0" + raw).digest())
            self.entries.append(logged)
            out.append(logged)
        return out

    def size(self) -> int:
        return len(self.entries)

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        yield from self.entries[start:end]

    def find(self, subject: str) -> list[LoggedEntry]:
        return [e for e in self.entries if e.entry.subject == subject]

    def close(self) -> None:
        pass


class MemoryProducer:
    """A Producer that appends to per-topic lists; partition 0 only."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Delivery:
        log = self.messages.setdefault(topic, [])
        log.append(Message(topic, 0, len(log), key, value, tuple(headers), 0))
        return Delivery(topic, 0, len(log) - 1)
