"""Quarantine: where messages that fail verification go, kept whole, counted and evidenced.

A rejected message is never dropped. Its bytes are stored unchanged (a Kafka topic next to the source
topic, or a folder in embedded mode) with the reason and its origin, and a ROUTE entry in the
evidence log names the SHA-256 of the bytes, so an auditor can match the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.errors import EnvelopeError
from tidm.ingest.transports.base import Message, Producer

__all__ = ["FolderQuarantine", "Quarantine", "QuarantineRecord", "TopicQuarantine", "quarantine_topic"]

HEADER_REASON = "tidm-q-reason"
HEADER_ORIGIN = "tidm-q-origin"
HEADER_DETAIL = "tidm-q-detail"


def quarantine_topic(topic: str) -> str:
    return f"{topic}.quarantine"


@dataclass(frozen=True)
class QuarantineRecord:
    origin: str
    reason: str
    detail: str
    subject: str
    stored_at: str


class Quarantine:
    """Stores rejected messages and records each in the evidence log. Subclasses choose the store."""

    def __init__(self, evidence: EvidenceLog, *, actor: str) -> None:
        self._evidence = evidence
        self._actor = actor
        self.count = 0

    async def _store(self, message: Message, reason: str, detail: str) -> str:
        raise NotImplementedError

    async def put(self, message: Message, error: EnvelopeError) -> QuarantineRecord:
        """Keep `message` with the reason of `error`; return where it went."""
        subject = hashlib.sha256(message.value).hexdigest()
        detail = str(error)
        stored_at = await self._store(message, error.reason, detail)
        entry = EvidenceEntry(
            event=EventType.ROUTE,
            subject=subject,
            actor=self._actor,
            time_us=time.time_ns() // 1000,
            inputs=(),
            attributes={
                "route": "quarantine",
                "reason": error.reason,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "stored_at": stored_at,
            },
        )
        self._evidence.append([entry])
        self.count += 1
        return QuarantineRecord(message.where(), error.reason, detail, subject, stored_at)


class TopicQuarantine(Quarantine):
    """Quarantine into `<topic>.quarantine` on the same transport, original headers kept."""

    def __init__(self, producer: Producer, evidence: EvidenceLog, *, actor: str) -> None:
        super().__init__(evidence, actor=actor)
        self._producer = producer

    async def _store(self, message: Message, reason: str, detail: str) -> str:
        headers = [
            *message.headers,
            (HEADER_REASON, reason.encode("utf-8")),
            (HEADER_ORIGIN, message.where().encode("utf-8")),
            (HEADER_DETAIL, detail.encode("utf-8")),
        ]
        delivery = await self._producer.send(
            quarantine_topic(message.topic), message.value, key=message.key, headers=headers
        )
        return f"{delivery.topic}[{delivery.partition}]@{delivery.offset}"


class FolderQuarantine(Quarantine):
    """Quarantine into `<root>/<topic>/<partition>-<offset>.msg` plus a `.json` sidecar."""

    def __init__(self, root: Path, evidence: EvidenceLog, *, actor: str) -> None:
        super().__init__(evidence, actor=actor)
        self._root = root

    async def _store(self, message: Message, reason: str, detail: str) -> str:
        folder = self._root / message.topic
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{message.partition}-{message.offset}"
        meta = {
            "origin": message.where(),
            "reason": reason,
            "detail": detail,
            "key": message.key.decode("utf-8", "replace") if message.key is not None else None,
            "headers": {k: v.hex() for k, v in message.headers},
            "timestamp_ms": message.timestamp_ms,
        }
        _atomic_write(folder / f"{stem}.msg", message.value)
        _atomic_write(folder / f"{stem}.json", json.dumps(meta, indent=2).encode("utf-8"))
        return str(folder / f"{stem}.msg")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
