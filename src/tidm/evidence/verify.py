"""Audit a whole evidence log against a signed checkpoint, or one entry against its proof.

`verify_log` trusts nothing stored: it recomputes every leaf hash from the canonical bytes and the root
from those, compares the root with the signed checkpoint, and cross-checks what the store would serve
(stored leaf hashes, stored subtree hashes, older signed checkpoints) to say *where* it was altered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tidm.evidence import merkle
from tidm.evidence.api import AuditableLog, EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Checkpoint, Verifier, open_checkpoint
from tidm.evidence.entry import all_canonical, canonical_bytes, entry_from_canonical
from tidm.evidence.errors import (
    EntryError,
    NoteError,
    TamperError,
    UnverifiedNoteError,
    VerificationError,
)

__all__ = ["VerifyReport", "verify_entry", "verify_log"]


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_log` found. `ok` only if there is no problem at all."""

    checkpoint: Checkpoint | None
    log_size: int
    root_hash: bytes | None
    """The root recomputed from the canonical bytes of the first `checkpoint.size` entries."""
    problems: tuple[VerificationError, ...] = field(default=())
    truncated: bool = False
    """True if there were more problems than the report keeps."""

    @property
    def ok(self) -> bool:
        """True if the log matches the signed checkpoint and is consistent with itself."""
        return not self.problems

    @property
    def first_bad_index(self) -> int | None:
        """The lowest log index a problem points at, if any problem has one."""
        indices = [problem.index for problem in self.problems if problem.index is not None]
        return min(indices) if indices else None

    @property
    def unsigned_entries(self) -> int:
        """Entries appended after the checkpoint: checked for consistency, not covered by its signature."""
        return max(self.log_size - self.checkpoint.size, 0) if self.checkpoint else self.log_size

    def raise_for_problems(self) -> None:
        """Raise the problem with the lowest index (or the first one) if verification failed."""
        if self.problems:
            raise self.problems[0]


def verify_log(
    log: EvidenceLog,
    verifier_keys: Iterable[Verifier | str],
    checkpoint_text: str | bytes,
    *,
    origin: str | None = None,
    max_problems: int = 100,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify every entry of `log` against a signed checkpoint; report each problem and where it is.

    `verifier_keys` are `Verifier`s or vkey strings; the checkpoint must carry a valid signature from
    one of them (and, if given, the `origin`). `progress` is called with the number of entries just
    checked, chunk by chunk (for a progress bar on long runs).
    """
    verifiers = [key if isinstance(key, Verifier) else Verifier.from_vkey(key) for key in verifier_keys]
    try:
        checkpoint, _ = open_checkpoint(checkpoint_text, verifiers, origin)
    except NoteError as exc:
        return VerifyReport(None, log.size(), None, (exc,))
    audit = _Audit(log, verifiers, checkpoint, max_problems)
    audit.progress = progress
    return audit.run()


def verify_entry(
    canonical: bytes,
    index: int,
    proof: Sequence[bytes],
    checkpoint_text: str | bytes,
    verifier_keys: Iterable[Verifier | str],
) -> Checkpoint:
    """Check that `canonical` is entry `index` of the log a signed checkpoint commits to.

    This needs only the entry bytes, its inclusion proof, the checkpoint and a verifier key: what a
    third party gets. Returns the checkpoint; raises `VerificationError` (or `EntryError`) otherwise.
    """
    verifiers = [key if isinstance(key, Verifier) else Verifier.from_vkey(key) for key in verifier_keys]
    checkpoint, _ = open_checkpoint(checkpoint_text, verifiers)
    entry_from_canonical(canonical)
    merkle.verify_inclusion(merkle.leaf_hash(canonical), index, checkpoint.size, proof, checkpoint.root_hash)
    return checkpoint


def _is_canonical(data: bytes) -> bool:
    try:
        entry_from_canonical(data)
    except EntryError:
        return False
    return True


def _encoding_of(item: LoggedEntry) -> bytes | None:
    try:
        return canonical_bytes(item.entry)
    except EntryError:
        return None


class _LevelCursor:
    """Walks one level of stored subtree hashes in index order, answering `get(index)` lazily."""

    def __init__(self, stored: Iterator[tuple[int, bytes]]) -> None:
        self._stored = stored
        self._pending: tuple[int, bytes] | None = None

    def get(self, index: int) -> bytes | None:
        while True:
            if self._pending is None:
                self._pending = next(self._stored, None)
                if self._pending is None:
                    return None
            stored_index, value = self._pending
            if stored_index < index:
                self._pending = None
                continue
            if stored_index == index:
                self._pending = None
                return value
            return None


class _TooManyProblems(Exception):
    pass


class _Audit:
    def __init__(
        self, log: EvidenceLog, verifiers: list[Verifier], checkpoint: Checkpoint, max_problems: int
    ) -> None:
        self.log = log
        self.verifiers = verifiers
        self.checkpoint = checkpoint
        self.max_problems = max_problems
        self.progress: Callable[[int], None] | None = None
        self.problems: list[VerificationError] = []
        self.truncated = False
        self.last_bad = -1
        self.frontier = merkle.Frontier()
        self.cursors: dict[int, _LevelCursor] = {}
        # Checked once: a runtime Protocol isinstance() is too slow to repeat per leaf.
        self.stored: AuditableLog | None = log if isinstance(log, AuditableLog) else None
        # size -> [(label, signed root)]: the checkpoint under audit plus older ones the log kept.
        self.targets: dict[int, list[tuple[str, bytes]]] = {
            checkpoint.size: [("checkpoint", checkpoint.root_hash)]
        }
        self.matched: list[int] = []
        self.mismatched: list[int] = []
        self.root_at_checkpoint: bytes | None = None
        # Stores that know which object holds an entry or a subtree (tile logs) name it in messages.
        self.locate = getattr(log, "locate", None)
        self.locate_node = getattr(log, "locate_node", None)

    def where(self, index: int) -> str:
        """The stored object an entry lives in: "entries" (SQLite) or its entry bundle (tiles)."""
        return str(self.locate(index)) if self.locate is not None else "entries"

    def report(self, problem: VerificationError, *, at_leaf: bool = False) -> None:
        """Record a problem; `at_leaf` ones come in log order and mask the subtrees above them."""
        if len(self.problems) >= self.max_problems:
            self.truncated = True
            raise _TooManyProblems
        self.problems.append(problem)
        if at_leaf and problem.index is not None:
            self.last_bad = max(self.last_bad, problem.index)

    def run(self) -> VerifyReport:
        log_size = self.log.size()
        try:
            self._stored_checkpoints(log_size)
            if log_size < self.checkpoint.size:
                self.report(
                    TamperError(
                        f"the log has {log_size} entries but the signed checkpoint covers "
                        f"{self.checkpoint.size}: entries from index {log_size} on are missing",
                        index=log_size,
                        object="entries",
                    )
                )
            self._entries()
            self._served_root(log_size)
            self._roots()
        except _TooManyProblems:
            pass
        ordered = sorted(self.problems, key=lambda p: (p.index is None, p.index or 0))
        return VerifyReport(
            self.checkpoint, log_size, self.root_at_checkpoint, tuple(ordered), self.truncated
        )

    def _stored_checkpoints(self, log_size: int) -> None:
        if self.stored is None:
            return
        for number, note in enumerate(self.stored.checkpoints()):
            try:
                stored, _ = open_checkpoint(note, self.verifiers)
            except UnverifiedNoteError:
                continue  # signed by keys we were not given (rotated out, other logs): not evidence
            except NoteError as exc:
                self.report(
                    TamperError(
                        f"stored checkpoint does not verify: {exc.what}", object=f"checkpoints[{number}]"
                    )
                )
                continue
            if stored.origin != self.checkpoint.origin:
                continue
            if stored.size > log_size:
                self.report(
                    TamperError(
                        f"a signed checkpoint covers {stored.size} entries but the log has {log_size}",
                        index=log_size,
                        object=f"checkpoints[{number}]",
                    )
                )
                continue
            self.targets.setdefault(stored.size, []).append((f"checkpoints[{number}]", stored.root_hash))

    def _entries(self) -> None:
        raw = getattr(self.log, "read_raw", None)
        position = 0
        while True:
            try:
                if raw is not None:
                    for chunk in raw(position):
                        self._chunk(chunk)
                        if self.progress is not None:
                            self.progress(len(chunk))
                        position = chunk[-1][0] + 1
                else:
                    for item in self.log.read(position):
                        self._entry(item)
                        position = item.index + 1
                return
            except TamperError as exc:
                if exc.index is None or exc.index < position:
                    self.report(exc)
                    return
                self._fill_gap(position, exc.index)
                self.report(exc, at_leaf=True)
                self._leaf(exc.index, self._substitute(exc.index))
                position = exc.index + 1

    def _fill_gap(self, expected: int, index: int) -> None:
        for missing in range(expected, index):
            self.report(
                TamperError(
                    "entry is missing (deleted or renumbered)", index=missing, object=self.where(missing)
                ),
                at_leaf=True,
            )
            self._leaf(missing, self._substitute(missing))

    def _chunk(self, rows: Sequence[tuple[int, bytes, bytes]]) -> None:
        """The fast path: a chunk of raw entries, their canonical form checked in bulk.

        A chunk with nothing odd (contiguous, every leaf as stored, canonical) has its new subtree
        hashes compared with the stored ones level by level, one range read each; anything odd takes
        the leaf-by-leaf path that says where.
        """
        encoded = [row[1] for row in rows]
        canonical = all_canonical(encoded)
        sha256 = hashlib.sha256  # merkle.leaf_hash, inlined: this loop runs once per entry
        leaves = [sha256(b"\x00" + item).digest() for item in encoded]
        if (
            canonical
            and self.stored is not None
            and rows[0][0] == self.frontier.size
            and rows[-1][0] - rows[0][0] == len(rows) - 1
            and leaves == [row[2] for row in rows]
        ):
            self._clean_chunk(leaves, self.stored)
            return
        for (index, data, stored_leaf), recomputed in zip(rows, leaves, strict=True):
            if index != self.frontier.size:
                self._fill_gap(self.frontier.size, index)
            if recomputed != stored_leaf:
                self._entry_problem(index, "changed", data)
            elif not canonical and not _is_canonical(data):
                self._entry_problem(index, "encoding")
            self._leaf(index, recomputed)

    def _clean_chunk(self, leaves: Sequence[bytes], stored_log: AuditableLog) -> None:
        """Build the chunk's subtrees level by level, stopping at each signed size to compare roots."""
        targets = self.targets
        size = self.frontier.size
        end = size + len(leaves)
        stops = sorted(target for target in targets if size < target < end)
        created: dict[int, list[bytes]] = {}
        first_index: dict[int, int] = {}
        position = size
        for stop in [*stops, end]:
            for level, node_index, values in self.frontier.extend(leaves[position - size : stop - size]):
                if level in created:
                    created[level].extend(values)
                else:
                    created[level] = list(values)
                    first_index[level] = node_index
            position = stop
            if stop in targets:
                self._at_target()
        for level, values in created.items():
            start = first_index[level]
            stored = list(stored_log.node_hashes(level, start, start + len(values)))
            if (
                len(stored) == len(values)
                and [v for _, v in stored] == values
                and (not stored or (stored[0][0] == start and stored[-1][0] == start + len(values) - 1))
            ):
                continue
            by_index = dict(stored)
            for offset, value in enumerate(values):
                self._compare_node(level, start + offset, value, by_index.get(start + offset))

    def _compare_node(self, level: int, node_index: int, value: bytes, stored: bytes | None) -> None:
        first = node_index << level
        if stored == value or self.last_bad >= first:
            return
        where = f"tree({level},{node_index})"
        if self.locate_node is not None:
            where = f"{where} in {self.locate_node(level, node_index)}"
        if stored is None:
            what = "the stored tree lacks this subtree"
        elif level == 0:
            what = "entry does not match the stored tree at its index: moved, swapped or replaced"
        else:
            last = first + (1 << level) - 1
            what = f"stored subtree hash differs from the recomputed one (leaves {first}..{last})"
        self.report(TamperError(what, index=first, object=where), at_leaf=True)

    def _entry_problem(self, index: int, kind: str, data: bytes = b"") -> None:
        if kind == "changed":
            what = "entry bytes changed: their leaf hash differs from the one stored at append"
            try:
                entry_from_canonical(data)
            except EntryError as exc:
                what = f"stored entry is not a valid canonical entry (bytes changed): {exc}"
            where = self.where(index)
            if self.locate_node is not None:
                where = f"{where} or {self.locate_node(0, index)}"
        else:
            what = "stored bytes are not a canonical evidence entry"
            where = self.where(index)
        self.report(TamperError(what, index=index, object=where), at_leaf=True)

    def _entry(self, item: LoggedEntry) -> None:
        self._fill_gap(self.frontier.size, item.index)
        recomputed = merkle.leaf_hash(item.canonical)
        if recomputed != item.leaf_hash:
            self.report(
                TamperError(
                    "entry bytes changed: their leaf hash differs from the one stored at append",
                    index=item.index,
                    object=self.where(item.index)
                    if self.locate_node is None
                    else f"{self.where(item.index)} or {self.locate_node(0, item.index)}",
                ),
                at_leaf=True,
            )
        elif _encoding_of(item) != item.canonical:
            self.report(
                TamperError(
                    "stored bytes are not the canonical encoding of the entry",
                    index=item.index,
                    object=self.where(item.index),
                ),
                at_leaf=True,
            )
        self._leaf(item.index, recomputed)

    def _substitute(self, index: int) -> bytes:
        """A stand-in leaf for a missing entry, so later subtrees are still compared one by one."""
        stored = self._stored_node(0, index)
        return stored if stored is not None else bytes(merkle.HASH_SIZE)

    def _stored_node(self, level: int, index: int) -> bytes | None:
        if self.stored is None:
            return None
        if level not in self.cursors:
            self.cursors[level] = _LevelCursor(self.stored.node_hashes(level))
        return self.cursors[level].get(index)

    def _leaf(self, index: int, leaf: bytes) -> None:
        for level, node_index, value in self.frontier.append(leaf):
            if self.stored is None:
                break
            self._compare_node(level, node_index, value, self._stored_node(level, node_index))
        if self.frontier.size in self.targets:
            self._at_target()

    def _at_target(self) -> None:
        """The tree just reached the size of a signed checkpoint: compare the roots."""
        size = self.frontier.size
        if size in self.targets:
            recomputed_root = self.frontier.root()
            if size == self.checkpoint.size:
                self.root_at_checkpoint = recomputed_root
            for label, signed_root in self.targets[size]:
                (self.matched if recomputed_root == signed_root else self.mismatched).append(size)
                if recomputed_root != signed_root and label != "checkpoint":
                    self.report(
                        TamperError(
                            f"recomputed root at size {size} differs from the signed one", object=label
                        )
                    )

    def _served_root(self, log_size: int) -> None:
        if log_size < self.checkpoint.size or self.root_at_checkpoint is None:
            return
        try:
            served = self.log.root(self.checkpoint.size)
        except VerificationError as exc:
            self.report(exc)
            return
        if served != self.root_at_checkpoint:
            self.report(
                TamperError(
                    f"the store serves a root for size {self.checkpoint.size} "
                    "that differs from the recomputed one",
                    object="tree",
                )
            )

    def _roots(self) -> None:
        if self.checkpoint.size == 0:
            self.root_at_checkpoint = merkle.EMPTY_ROOT
            if self.checkpoint.root_hash != merkle.EMPTY_ROOT:
                self.report(
                    TamperError("signed checkpoint of an empty log has a non-empty root", object="checkpoint")
                )
            return
        if self.root_at_checkpoint is None or self.root_at_checkpoint == self.checkpoint.root_hash:
            return
        # Older signed checkpoints bracket where the log diverged when the store was rewritten so
        # consistently that nothing else disagrees.
        bad = min(self.mismatched)
        good = max((size for size in self.matched if size < bad), default=0)
        index = good if bad - good == 1 else None
        self.report(
            TamperError(
                f"recomputed root for size {self.checkpoint.size} differs from the signed checkpoint root; "
                f"the first altered entry is in [{good}, {bad})",
                index=index,
                object="checkpoint",
            )
        )
