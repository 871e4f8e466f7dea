"""Quarantine of payloads a decoder rejected: a JSON-lines file, appended and fsynced, plus counters.

Each line: {"topic", "recv_us", "recv_time" (ISO 8601 UTC), "reasons", "details", "sha256", "bytes",
"redaction", "payload_b64"?}. `sha256` and `bytes` are those of the payload as received (the subject
of its evidence entry); what is kept of it depends on `redaction`:

- `policy`: `payload_b64` is the payload with the desensitization policy applied to every field the
  decoder knows (dropped fields replaced by a marker, masked/pseudonymized/generalized ones
  rewritten as the samples would be) and every other field replaced by a marker;
- `hash-only`: the payload could not be parsed into fields (or a dropped field is the whole
  payload): only its hash, size and the reasons are kept, no `payload_b64`;
- `none`: no policy is configured (the agent shares every value in clear): the payload as received.

Retention (`QuarantineRetention`): after each write, lines older than `max_age_s` and, oldest first,
lines beyond `max_bytes` are removed (the file is rewritten atomically); each removed line is counted
and returned so the source records it (an EXPIRE evidence entry), never silently.
The file is opened per write batch (append mode) so a rotated or removed file is simply recreated,
and nothing stays open between batches.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tidm.edge_agent.sources.decoders.base import Reject

__all__ = [
    "DROPPED",
    "ExpiredRecord",
    "FieldPolicy",
    "FieldValue",
    "PayloadQuarantine",
    "QuarantineRecord",
    "QuarantineRetention",
    "QuarantineStats",
    "Redaction",
]

log = logging.getLogger(__name__)

Redaction = Literal["none", "policy", "hash-only"]


class _Dropped:
    def __repr__(self) -> str:
        return "DROPPED"


DROPPED: Final = _Dropped()
"""What `FieldPolicy.rewrite` returns for a field the policy drops."""


@dataclass(frozen=True, slots=True)
class FieldValue:
    """One field of a rejected payload as the decoder understood it: whose value it is."""

    asset_id: str
    signal: str
    value: Any  # the JSON scalar (or text/number of a plain payload) as received
    ts_us: int


class FieldPolicy(Protocol):
    """The desensitization policy as the quarantine applies it (the agent's `Desensitizer`)."""

    def rewrite(self, fields: Sequence[FieldValue]) -> list[Any]:
        """Per field, the value the policy lets be kept (rewritten if it must be), or `DROPPED`."""
        ...


class QuarantineRetention(BaseModel):
    """How long the edge quarantine keeps rejected payloads. None turns a limit off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Lines received longer ago than this are removed (counted, EXPIRE evidence entry each).
    max_age_s: float | None = Field(default=7 * 86_400.0, gt=0)
    # The file is kept below this size, removing the oldest lines first.
    max_bytes: int | None = Field(default=64 * 1024 * 1024, ge=1024)


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected payload, why, and what of it may be kept (see the module docstring)."""

    topic: str
    recv_us: int
    payload: bytes
    rejects: tuple[Reject, ...]
    kept: bytes | None = None
    redaction: Redaction = "none"

    def __post_init__(self) -> None:
        if self.redaction == "none" and self.kept is None:
            object.__setattr__(self, "kept", self.payload)
        if self.redaction == "hash-only" and self.kept is not None:
            msg = "a hash-only quarantine record keeps no payload"
            raise ValueError(msg)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def to_json(self) -> str:
        when = dt.datetime.fromtimestamp(self.recv_us / 1e6, tz=dt.UTC).isoformat()
        line: dict[str, Any] = {
            "topic": self.topic,
            "recv_us": self.recv_us,
            "recv_time": when,
            "reasons": sorted({r.reason for r in self.rejects}),
            "details": [r.detail for r in self.rejects],
            "sha256": self.sha256,
            "bytes": len(self.payload),
            "redaction": self.redaction,
        }
        if self.kept is not None:
            line["payload_b64"] = base64.b64encode(self.kept).decode("ascii")
        return json.dumps(line, ensure_ascii=True)


@dataclass(frozen=True)
class ExpiredRecord:
    """A quarantine line removed by retention: enough to evidence it."""

    sha256: str
    topic: str
    recv_us: int
    bytes: int
    why: Literal["max_age", "max_bytes"]


@dataclass
class QuarantineStats:
    """What was quarantined: payloads in total and rejects per reason (for metrics), and expired."""

    payloads: int = 0
    bytes: int = 0
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    expired_bytes: int = 0


class PayloadQuarantine:
    """Appends rejected payloads to `<folder>/<name>.jsonl` durably, counts them, applies retention."""

    def __init__(
        self,
        folder: Path,
        name: str,
        retention: QuarantineRetention | None = None,
        *,
        clock_us: Any = None,
    ) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "mqtt"
        self.path = Path(folder) / f"{safe}.jsonl"
        self.retention = retention if retention is not None else QuarantineRetention()
        self.stats = QuarantineStats()
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)

    def write(self, records: list[QuarantineRecord]) -> list[ExpiredRecord]:
        """Append `records` and fsync before returning (callers acknowledge the messages after);
        then apply retention and return what it removed (the caller evidences it)."""
        if not records:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(r.to_json() + "\n" for r in records).encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            expired = self.enforce_retention()
        except OSError as exc:
            # The records are durable; retention runs again on the next write.
            log.error("quarantine %s: retention could not rewrite the file: %s", self.path, exc)
            expired = []
        # Counted once durable and within retention (readers of the counters see the file settled).
        for r in records:
            self.stats.payloads += 1
            self.stats.bytes += len(r.payload)
            self.stats.rejects_by_reason.update(x.reason for x in r.rejects)
            self.stats.redactions[r.redaction] += 1
        return expired

    def enforce_retention(self) -> list[ExpiredRecord]:
        """Remove lines past the retention limits (atomic rewrite); return what was removed."""
        keep = self.retention
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        oldest_allowed = None if keep.max_age_s is None else self._clock_us() - int(keep.max_age_s * 1e6)
        if keep.max_bytes is None or size <= keep.max_bytes:
            if oldest_allowed is None:
                return []
            with self.path.open("rb") as f:
                if _recv_us(f.readline()) >= oldest_allowed:
                    return []  # the oldest line is young enough: nothing to read further
        lines = self.path.read_bytes().splitlines(keepends=True)
        expired: list[ExpiredRecord] = []
        start = 0
        if oldest_allowed is not None:
            while start < len(lines) and _recv_us(lines[start]) < oldest_allowed:
                expired.append(_expired(lines[start], "max_age"))
                start += 1
        if keep.max_bytes is not None:
            total = sum(len(line) for line in lines[start:])
            # Trim to 90% of the limit, so a full quarantine is not rewritten on every new line.
            target = keep.max_bytes if total <= keep.max_bytes else keep.max_bytes * 9 // 10
            while start < len(lines) and total > target:
                total -= len(lines[start])
                expired.append(_expired(lines[start], "max_bytes"))
                start += 1
        if not expired:
            return []
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, b"".join(lines[start:]))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.stats.expired += len(expired)
        self.stats.expired_bytes += sum(e.bytes for e in expired)
        return expired


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _recv_us(line: bytes) -> int:
    try:
        return int(json.loads(line)["recv_us"])
    except (ValueError, KeyError, TypeError):
        return -1  # a torn or foreign line: the oldest, so age removes it first


def _expired(line: bytes, why: Literal["max_age", "max_bytes"]) -> ExpiredRecord:
    try:
        doc = json.loads(line)
        size = int(doc.get("bytes", len(line)))
        return ExpiredRecord(str(doc["sha256"]), str(doc["topic"]), int(doc["recv_us"]), size, why)
    except (ValueError, KeyError, TypeError):
        return ExpiredRecord(hashlib.sha256(line).hexdigest(), "", -1, len(line), why)
