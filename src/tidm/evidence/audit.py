"""Auditing objects against the log: each landed file's digest, inclusion and lineage; deletions.

The lake is reached through two callables (list of keys, read bytes) so evidence stays free of the
storage part. The verifier's memory of the last checkpoint it accepted lives in a small JSON state file,
so a later run proves the log only grew (consistency) instead of trusting a rewritten history.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tidm.evidence import merkle
from tidm.evidence.api import EventType, EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint
from tidm.evidence.errors import ProofError, TamperError, VerificationError
from tidm.evidence.lineage import trace

__all__ = [
    "LandingIndex",
    "ObjectFinding",
    "check_consistency_with_state",
    "check_objects",
    "save_state",
]

DELETION_EVENTS = frozenset({EventType.DROP, EventType.EXPIRE})


@dataclass(frozen=True)
class ObjectFinding:
    """The verdict on one object: `ok`, `deleted` (a recorded deletion) or `failed`."""

    key: str
    status: Literal["ok", "deleted", "failed"]
    message: str
    index: int | None = None


@dataclass
class LandingIndex:
    """Landing (SEND with an `object` attribute) and deletion entries by object key, from one log scan."""

    landed: dict[str, list[LoggedEntry]]
    deleted: dict[str, list[LoggedEntry]]
    deleted_subjects: dict[str, list[LoggedEntry]]

    @classmethod
    def scan(cls, log: EvidenceLog) -> LandingIndex:
        landed: dict[str, list[LoggedEntry]] = {}
        deleted: dict[str, list[LoggedEntry]] = {}
        deleted_subjects: dict[str, list[LoggedEntry]] = {}
        for item in log.read():
            entry = item.entry
            key = entry.attributes.get("object")
            if entry.event == EventType.SEND and isinstance(key, str):
                landed.setdefault(key, []).append(item)
            elif entry.event in DELETION_EVENTS:
                if isinstance(key, str):
                    deleted.setdefault(key, []).append(item)
                deleted_subjects.setdefault(entry.subject, []).append(item)
        return cls(landed, deleted, deleted_subjects)

    def deletion_of(self, key: str) -> LoggedEntry | None:
        """The entry recording the deletion of `key` (by key or by any digest it landed with)."""
        found = list(self.deleted.get(key, ()))
        for landing in self.landed.get(key, ()):
            found.extend(self.deleted_subjects.get(landing.entry.subject, ()))
        return min(found, key=lambda i: i.index) if found else None


def _included(log: EvidenceLog, item: LoggedEntry, checkpoint: Checkpoint) -> str | None:
    """None if `item` is provably in the signed tree, else why not."""
    if item.index >= checkpoint.size:
        return (
            f"its entry {item.index} is newer than the signed checkpoint ({checkpoint.size} entries); "
            "sign a new checkpoint"
        )
    try:
        proof = log.inclusion_proof(item.index, checkpoint.size)
        merkle.verify_inclusion(
            merkle.leaf_hash(item.canonical), item.index, checkpoint.size, proof, checkpoint.root_hash
        )
    except (ProofError, TamperError) as exc:
        return f"its entry {item.index} is not included in the signed tree: {exc}"
    return None


def _describe(item: LoggedEntry) -> str:
    attributes = item.entry.attributes
    reason = attributes.get("reason")
    return f"{item.entry.event} at index {item.index} by {item.entry.actor}" + (
        f", reason: {reason}" if reason else ""
    )


def check_objects(
    log: EvidenceLog,
    checkpoint: Checkpoint,
    keys: Iterable[str],
    read: Callable[[str], bytes],
    *,
    every_landed: bool = False,
    index: LandingIndex | None = None,
    progress: Callable[[Iterable[str]], Iterator[str]] | None = None,
) -> list[ObjectFinding]:
    """Check each object: its SHA-256 is logged as landed under its key, included in the signed tree,
    and its lineage reaches agent-created, verified batches.

    With `every_landed`, `keys` are all objects present, and every object the log says landed but is
    absent is reported: as `deleted` if a DROP/EXPIRE entry records it, else as `failed`.
    """
    index = index or LandingIndex.scan(log)
    present = list(keys)
    findings: list[ObjectFinding] = []
    walk = progress(present) if progress is not None else iter(present)
    for key in walk:
        findings.append(_check_one(log, checkpoint, key, read, index))
    if every_landed:
        here = set(present)
        for key in sorted(index.landed.keys() - here):
            first = index.landed[key][0]
            deletion = index.deletion_of(key)
            if deletion is not None:
                findings.append(
                    ObjectFinding(
                        key, "deleted", f"deleted, as recorded: {_describe(deletion)}", deletion.index
                    )
                )
            else:
                findings.append(
                    ObjectFinding(
                        key,
                        "failed",
                        f"landed (entry {first.index}) but missing from the lake, "
                        "and no DROP/EXPIRE entry records its deletion",
                        first.index,
                    )
                )
    return findings


def _check_one(
    log: EvidenceLog, checkpoint: Checkpoint, key: str, read: Callable[[str], bytes], index: LandingIndex
) -> ObjectFinding:
    try:
        data = read(key)
    except Exception as exc:  # noqa: BLE001 - any read failure is this object's verdict, not a crash
        return ObjectFinding(key, "failed", f"cannot read the object: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    landings = [i for i in log.find(digest) if i.entry.event == EventType.SEND]
    matching = [i for i in landings if i.entry.attributes.get("object") == key] or landings
    if not matching:
        logged = index.landed.get(key)
        if logged:
            digests = ", ".join(sorted({i.entry.subject for i in logged}))
            return ObjectFinding(
                key,
                "failed",
                f"content changed: SHA-256 {digest} differs from the digest logged when it landed "
                f"(entry {logged[-1].index}: {digests})",
                logged[-1].index,
            )
        return ObjectFinding(key, "failed", f"no evidence entry records this object (SHA-256 {digest})")
    landing = matching[-1]
    why = _included(log, landing, checkpoint)
    if why is not None:
        return ObjectFinding(key, "failed", why, landing.index)
    walk = trace(log, digest)
    if not walk.ok:
        problems = "; ".join(walk.problems[:3]) or "no agent-created, verified source batch"
        return ObjectFinding(key, "failed", f"lineage broken: {problems}", landing.index)
    for subject, entries in walk.entries.items():
        for item in entries:
            why = _included(log, item, checkpoint)
            if why is not None:
                return ObjectFinding(key, "failed", f"lineage entry of {subject}: {why}", item.index)
    return ObjectFinding(
        key, "ok", f"landed at entry {landing.index}, from {len(walk.sources)} agent batches", landing.index
    )


def check_consistency_with_state(
    log: EvidenceLog, checkpoint: Checkpoint, state_path: Path
) -> VerificationError | None:
    """Compare `checkpoint` with the last one accepted (state file): same origin, grown consistently."""
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return VerificationError(f"cannot read the verifier state: {exc}", object=str(state_path))
    if state.get("origin") != checkpoint.origin:
        return None  # another log: the state speaks of it, not of this one
    old_size, old_root = int(state["size"]), bytes.fromhex(state["root"])
    if checkpoint.size < old_size:
        return TamperError(
            f"the log shrank: a checkpoint of {old_size} entries was accepted before, this one has "
            f"{checkpoint.size}",
            object="checkpoint",
        )
    try:
        proof = log.consistency_proof(old_size, checkpoint.size)
        merkle.verify_consistency(old_size, checkpoint.size, old_root, checkpoint.root_hash, proof)
    except VerificationError as exc:
        return TamperError(
            f"the log is not an extension of the checkpoint accepted before (size {old_size}): {exc.what}",
            index=exc.index,
            object="checkpoint",
        )
    return None


def save_state(checkpoint: Checkpoint, note: str, state_path: Path) -> None:
    """Remember `checkpoint` as the last accepted one (atomic write)."""
    document = {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root": checkpoint.root_hash.hex(),
        "checkpoint": note,
    }
    state_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, state_path)
