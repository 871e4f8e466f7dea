"""The Evidence view's work: the audit report (`tidm evidence report`) of the whole log, the log
verified against its latest signed checkpoint (`tidm evidence verify`), and one landed object proven
back to the agent-signed batches it came from, with its lineage drawn."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tidm.evidence.api import EvidenceLog
from tidm.evidence.audit import check_objects
from tidm.evidence.checkpoint import Verifier, open_checkpoint
from tidm.evidence.errors import EvidenceError
from tidm.evidence.report import build_report
from tidm.evidence.verify import verify_log

__all__ = ["LogVerdict", "ObjectVerdict", "evidence_report", "verify_object", "verify_whole_log"]


@dataclass(frozen=True)
class LogVerdict:
    ok: bool
    signed_size: int
    unsigned: int
    problems: tuple[str, ...]

    @property
    def summary(self) -> str:
        """The line `tidm evidence verify` prints for the same log."""
        if not self.ok:
            return f"FAILED: {len(self.problems)} problem(s)"
        return f"ok: {self.signed_size} entries match the signed checkpoint ({self.unsigned} appended since)"


@dataclass(frozen=True)
class ObjectVerdict:
    key: str
    status: str
    message: str
    lineage: dict[str, Any] | None


def evidence_report(log: EvidenceLog, checkpoint: str | None, keys: Sequence[str]) -> dict[str, Any]:
    """The audit report of the whole log (its checkpoint's signature checked with `keys`)."""
    return build_report(log, checkpoint=checkpoint, verifier_keys=keys)


def _signed(checkpoint: str | None, keys: Sequence[str]) -> tuple[Any, str | None]:
    if checkpoint is None:
        return None, "the log holds no checkpoint yet"
    if not keys:
        return None, "no verifier key configured (console.verifier_keys)"
    try:
        signed, _ = open_checkpoint(checkpoint, [Verifier.from_vkey(k) for k in keys])
    except EvidenceError as exc:
        return None, f"checkpoint: {exc}"
    return signed, None


def verify_whole_log(log: EvidenceLog, checkpoint: str | None, keys: Sequence[str]) -> LogVerdict:
    """Every entry against the latest signed checkpoint, as `tidm evidence verify` does."""
    signed, problem = _signed(checkpoint, keys)
    if problem is not None or checkpoint is None:
        return LogVerdict(False, 0, log.size(), (problem or "no checkpoint",))
    report = verify_log(log, [Verifier.from_vkey(k) for k in keys], checkpoint)
    return LogVerdict(
        report.ok, signed.size, report.unsigned_entries, tuple(str(p) for p in report.problems[:50])
    )


def verify_object(
    log: EvidenceLog,
    checkpoint: str | None,
    keys: Sequence[str],
    key: str,
    read: Callable[[str], bytes],
) -> ObjectVerdict:
    """One lake object: logged as landed, included in the signed tree, lineage back to agent batches."""
    signed, problem = _signed(checkpoint, keys)
    if problem is not None:
        return ObjectVerdict(key, "failed", problem, None)
    try:
        data = read(key)
    except Exception as exc:  # any storage failure is this object's verdict
        return ObjectVerdict(key, "failed", f"cannot read the object: {type(exc).__name__}", None)
    finding = check_objects(log, signed, [key], lambda _k: data)[0]
    subject = hashlib.sha256(data).hexdigest()
    lineage = build_report(log, subject=subject, object_label=key, until_us=0)["lineage"]
    return ObjectVerdict(key, finding.status, finding.message, lineage)
