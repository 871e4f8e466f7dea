"""Self-contained proof bundles: one object's lineage, each entry's inclusion proof, a signed checkpoint.

A bundle is JSON a third party checks offline with the log's public key alone:

    {"format": "tidm-proof-bundle/1", "subject": <sha256 of the object>, "object": <key or null>,
     "checkpoint": <signed note text>,
     "entries": [{"index": i, "entry": <canonical entry text>, "proof": [<hex hash>, ...]}, ...]}

`check_bundle` verifies the checkpoint signature, every inclusion proof against the signed root, and
that the entries' `inputs` lead from the subject back to batches an agent created and a job received
with their signature verified; given the object's bytes, also that they hash to the subject.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tidm.evidence import merkle
from tidm.evidence.api import EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint, Verifier, open_checkpoint, parse_checkpoint
from tidm.evidence.entry import entry_from_canonical, is_digest
from tidm.evidence.errors import EntryError, NoteError, ProofError, VerificationError
from tidm.evidence.lineage import Trace, trace

__all__ = ["BUNDLE_FORMAT", "BundleReport", "build_bundle", "check_bundle"]

BUNDLE_FORMAT = "tidm-proof-bundle/1"


def build_bundle(
    log: EvidenceLog, subject: str, checkpoint_text: str, *, object_key: str | None = None
) -> dict[str, Any]:
    """The proof bundle of `subject`'s lineage against a checkpoint of `log` (as a JSON document).

    Raises `VerificationError` if the lineage is broken or an entry is newer than the checkpoint.
    """
    checkpoint = parse_checkpoint(checkpoint_text.split("\n\n", 1)[0] + "\n")
    walk = trace(log, subject)
    if not walk.ok:
        msg = f"the lineage of {subject} does not verify: {'; '.join(walk.problems[:3]) or 'no source'}"
        raise VerificationError(msg, object=object_key)
    items: dict[int, LoggedEntry] = {}
    for entries in walk.entries.values():
        for item in entries:
            items[item.index] = item
    documents = []
    for index in sorted(items):
        if index >= checkpoint.size:
            msg = (
                f"entry {index} of the lineage is newer than the checkpoint ({checkpoint.size} entries): "
                "sign a new checkpoint first"
            )
            raise VerificationError(msg, index=index, object=object_key)
        documents.append(
            {
                "index": index,
                "entry": items[index].canonical.decode("utf-8"),
                "proof": [h.hex() for h in log.inclusion_proof(index, checkpoint.size)],
            }
        )
    return {
        "format": BUNDLE_FORMAT,
        "subject": subject,
        "object": object_key,
        "checkpoint": checkpoint_text,
        "entries": documents,
    }


@dataclass(frozen=True)
class BundleReport:
    """What `check_bundle` found; `ok` only without problems."""

    subject: str
    object: str | None
    checkpoint: Checkpoint | None
    entries: int
    sources: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.sources)


class _Entries:
    """The bundle's entries, looked up by subject (all a lineage walk needs)."""

    def __init__(self, items: Iterable[LoggedEntry]) -> None:
        self._by_subject: dict[str, list[LoggedEntry]] = {}
        for item in sorted(items, key=lambda i: i.index):
            self._by_subject.setdefault(item.entry.subject, []).append(item)

    def find(self, subject: str) -> list[LoggedEntry]:
        return list(self._by_subject.get(subject, ()))


def check_bundle(
    bundle: Mapping[str, Any] | str | bytes,
    verifier_keys: Iterable[Verifier | str],
    *,
    object_bytes: bytes | None = None,
) -> BundleReport:
    """Verify a proof bundle offline; every problem is reported with the entry it concerns."""
    document = json.loads(bundle) if isinstance(bundle, str | bytes) else bundle
    problems: list[str] = []
    subject = str(document.get("subject", ""))
    key = document.get("object")
    if document.get("format") != BUNDLE_FORMAT:
        return BundleReport(subject, key, None, 0, (), (f"not a {BUNDLE_FORMAT} document",))
    if not is_digest(subject):
        return BundleReport(subject, key, None, 0, (), (f"subject {subject!r} is not a SHA-256 digest",))
    verifiers = [k if isinstance(k, Verifier) else Verifier.from_vkey(k) for k in verifier_keys]
    try:
        checkpoint, _ = open_checkpoint(str(document.get("checkpoint", "")), verifiers)
    except NoteError as exc:
        return BundleReport(subject, key, None, 0, (), (f"checkpoint: {exc}",))
    if object_bytes is not None:
        actual = hashlib.sha256(object_bytes).hexdigest()
        if actual != subject:
            problems.append(f"object {key or ''}: its SHA-256 is {actual}, the bundle proves {subject}")
    verified: list[LoggedEntry] = []
    raw_entries = document.get("entries", [])
    for position, raw in enumerate(raw_entries if isinstance(raw_entries, list) else []):
        where = f"entries[{position}]"
        try:
            index = int(raw["index"])
            canonical = str(raw["entry"]).encode("utf-8")
            proof = [bytes.fromhex(h) for h in raw["proof"]]
            entry = entry_from_canonical(canonical)
            leaf = merkle.leaf_hash(canonical)
            merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root_hash)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{where}: malformed ({exc})")
            continue
        except (EntryError, ProofError) as exc:
            problems.append(f"{where} (log index {raw.get('index')}): {exc}")
            continue
        except VerificationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        verified.append(LoggedEntry(index, entry, canonical, leaf))
    walk: Trace = trace(_Entries(verified), subject)
    problems.extend(f"lineage: {p}" for p in walk.problems)
    if not walk.sources and not walk.problems:
        problems.append("lineage: reaches no batch an agent created and a job verified")
    if key is not None:
        landed = [
            e for e in walk.entries.get(subject, []) if e.entry.attributes.get("object") not in (None, key)
        ]
        if landed and len(landed) == len(walk.entries.get(subject, [])):
            problems.append(f"no entry of the bundle names the object key {key!r}")
    return BundleReport(subject, key, checkpoint, len(verified), tuple(walk.sources), tuple(problems))
