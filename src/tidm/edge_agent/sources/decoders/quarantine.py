"""Quarantine of payloads a decoder rejected: a JSON-lines file, appended and fsynced, plus counters.

Each line: {"topic", "recv_us", "recv_time" (ISO 8601 UTC), "reasons", "details", "sha256",
"payload_b64"}. The file is opened per write batch (append mode) so a rotated or removed file is
simply recreated, and nothing stays open between batches.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tidm.edge_agent.sources.decoders.base import Reject

__all__ = ["PayloadQuarantine", "QuarantineRecord", "QuarantineStats"]


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected payload and why."""

    topic: str
    recv_us: int
    payload: bytes
    rejects: tuple[Reject, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def to_json(self) -> str:
        when = dt.datetime.fromtimestamp(self.recv_us / 1e6, tz=dt.UTC).isoformat()
        return json.dumps(
            {
                "topic": self.topic,
                "recv_us": self.recv_us,
                "recv_time": when,
                "reasons": sorted({r.reason for r in self.rejects}),
                "details": [r.detail for r in self.rejects],
                "sha256": self.sha256,
                "payload_b64": base64.b64encode(self.payload).decode("ascii"),
            },
            ensure_ascii=True,
        )


@dataclass
class QuarantineStats:
    """What was quarantined: payloads in total and rejects per reason (for metrics)."""

    payloads: int = 0
    bytes: int = 0
    rejects_by_reason: Counter[str] = field(default_factory=Counter)


class PayloadQuarantine:
    """Appends rejected payloads to `<folder>/<name>.jsonl` durably and counts them."""

    def __init__(self, folder: Path, name: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "mqtt"
        self.path = Path(folder) / f"{safe}.jsonl"
        self.stats = QuarantineStats()

    def write(self, records: list[QuarantineRecord]) -> None:
        """Append `records` and fsync before returning (callers acknowledge the messages after)."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(r.to_json() + "\n" for r in records).encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        for r in records:
            self.stats.payloads += 1
            self.stats.bytes += len(r.payload)
            self.stats.rejects_by_reason.update(x.reason for x in r.rejects)
