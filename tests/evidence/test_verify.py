"""verify_log finds tampering, done by editing the SQLite file directly, and says where it is."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.evidence._support import make_entry

from tidm.evidence import (
    MemoryEvidenceLog,
    NoteError,
    ProofError,
    Signer,
    SqliteEvidenceLog,
    TamperError,
    UnverifiedNoteError,
    Verifier,
    canonical_bytes,
    leaf_hash,
    merkle,
    verify_entry,
    verify_log,
)

SIZE = 40


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "evidence.db"


@pytest.fixture
def signed(db: Path, signer: Signer) -> str:
    """A log of SIZE entries with a signed checkpoint over all of them; returns the checkpoint note."""
    with SqliteEvidenceLog(db) as log:
        log.append([make_entry(i) for i in range(SIZE)])
        return log.checkpoint(signer)


@pytest.fixture
def raw(db: Path, signed: str) -> Iterator[sqlite3.Connection]:
    """A plain connection to the file, as an attacker with write access would have."""
    connection = sqlite3.connect(db, isolation_level=None)
    yield connection
    connection.close()


def verify(db: Path, verifier: Verifier, note: str) -> tuple[bool, int | None, list[TamperError]]:
    with SqliteEvidenceLog(db) as log:
        report = verify_log(log, [verifier], note)
    problems = [p for p in report.problems if isinstance(p, TamperError)]
    return report.ok, report.first_bad_index, problems


def rebuild_tree(connection: sqlite3.Connection) -> None:
    """What a careful attacker does after editing entries: make every stored hash agree again."""
    rows = connection.execute("SELECT idx, canonical FROM entries ORDER BY idx").fetchall()
    frontier = merkle.Frontier()
    connection.execute("DELETE FROM tree")
    for idx, canonical in rows:
        connection.execute("UPDATE entries SET leaf_hash = ? WHERE idx = ?", (leaf_hash(canonical), idx))
        connection.executemany("INSERT INTO tree VALUES (?, ?, ?)", frontier.append(leaf_hash(canonical)))


def forged_bytes(number: int) -> bytes:
    entry = make_entry(number)
    return canonical_bytes(entry).replace(b'"actor":"agent-1"', b'"actor":"mallory"')


def test_untouched_log_verifies(db: Path, signed: str, verifier: Verifier, signer: Signer) -> None:
    with SqliteEvidenceLog(db) as log:
        report = verify_log(log, [verifier.vkey], signed)
        assert report.ok, report.problems
        assert report.root_hash == log.root(SIZE)
        assert report.checkpoint is not None and report.checkpoint.size == SIZE
        # Entries appended after the checkpoint are checked too, just not covered by its signature.
        log.append([make_entry(i) for i in range(SIZE, SIZE + 7)])
        later = verify_log(log, [verifier], signed)
        assert later.ok and later.unsigned_entries == 7
        later.raise_for_problems()


def test_changed_entry_bytes(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    raw.execute("UPDATE entries SET canonical = ? WHERE idx = 17", (forged_bytes(17),))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok
    assert first == 17
    assert "entry bytes changed" in problems[0].what


def test_changed_entry_bytes_and_leaf_hash(
    raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier
) -> None:
    forged = forged_bytes(17)
    raw.execute("UPDATE entries SET canonical = ?, leaf_hash = ? WHERE idx = 17", (forged, leaf_hash(forged)))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 17
    assert "does not match the stored tree" in problems[0].what
    assert problems[0].object == "tree(0,17)"


def test_rewritten_store_is_caught_by_the_signed_root(
    raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier
) -> None:
    raw.execute("UPDATE entries SET canonical = ? WHERE idx = 17", (forged_bytes(17),))
    rebuild_tree(raw)
    ok, first, problems = verify(db, verifier, signed)
    assert not ok
    assert first is None  # with one checkpoint, the signed root cannot say which entry changed
    assert any("differs from the signed checkpoint root" in p.what for p in problems)


def test_older_checkpoints_narrow_a_rewrite_down(db: Path, signer: Signer, verifier: Verifier) -> None:
    with SqliteEvidenceLog(db) as log:
        log.append([make_entry(i) for i in range(17)])
        log.checkpoint(signer)
        log.append([make_entry(17)])
        log.checkpoint(signer)
        log.append([make_entry(i) for i in range(18, SIZE)])
        note = log.checkpoint(signer)
    with sqlite3.connect(db, isolation_level=None) as raw:
        raw.execute("UPDATE entries SET canonical = ? WHERE idx = 17", (forged_bytes(17),))
        rebuild_tree(raw)
    raw.close()
    ok, first, problems = verify(db, verifier, note)
    assert not ok
    assert first == 17  # checkpoints at sizes 17 and 18 bracket the change exactly
    assert any(p.object == "checkpoints[1]" for p in problems)


def test_deleted_entry(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    raw.execute("DELETE FROM entries WHERE idx = 9")
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 9
    assert "missing" in problems[0].what


def test_deleted_and_renumbered_entry(
    raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier
) -> None:
    raw.execute("DELETE FROM entries WHERE idx = 9")
    for idx in range(10, SIZE):
        raw.execute("UPDATE entries SET idx = ? WHERE idx = ?", (idx - 1, idx))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 9
    assert any("missing" in p.what and p.index == SIZE - 1 for p in problems)


def test_deleted_last_entry(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    raw.execute("DELETE FROM entries WHERE idx = ?", (SIZE - 1,))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == SIZE - 1
    assert any("missing" in p.what and p.index == SIZE - 1 for p in problems)


def test_swapped_entries(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    columns = "canonical, leaf_hash, event, subject, actor, time_us"
    row_a = raw.execute(f"SELECT {columns} FROM entries WHERE idx = 5").fetchone()  # noqa: S608
    row_b = raw.execute(f"SELECT {columns} FROM entries WHERE idx = 23").fetchone()  # noqa: S608
    update = "UPDATE entries SET canonical=?, leaf_hash=?, event=?, subject=?, actor=?, time_us=? WHERE idx=?"
    raw.execute(update, (*row_b, 5))
    raw.execute(update, (*row_a, 23))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 5
    assert [p.index for p in problems if p.index is not None] == [5, 23]
    assert "moved, swapped or replaced" in problems[0].what


def test_swapped_entry_bytes_only(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    a = raw.execute("SELECT canonical FROM entries WHERE idx = 5").fetchone()[0]
    b = raw.execute("SELECT canonical FROM entries WHERE idx = 23").fetchone()[0]
    raw.execute("UPDATE entries SET canonical = ? WHERE idx = 5", (b,))
    raw.execute("UPDATE entries SET canonical = ? WHERE idx = 23", (a,))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 5
    assert [p.index for p in problems if p.index is not None] == [5, 23]


def test_garbage_entry_bytes(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    raw.execute("UPDATE entries SET canonical = ? WHERE idx = 3", (b"\x00garbage",))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 3
    assert "not a valid canonical entry" in problems[0].what


def test_changed_subtree_hash(raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier) -> None:
    raw.execute("UPDATE tree SET hash = ? WHERE level = 2 AND idx = 3", (bytes(32),))
    ok, first, problems = verify(db, verifier, signed)
    assert not ok and first == 12
    assert problems[0].object == "tree(2,3)"
    with SqliteEvidenceLog(db) as log:
        # The proofs the store now serves no longer verify: that is what the audit protects.
        with pytest.raises(ProofError):
            merkle.verify_inclusion(
                leaf_hash(canonical_bytes(make_entry(8))), 8, SIZE, log.inclusion_proof(8), log.root(SIZE)
            )


def test_tampered_stored_checkpoint(
    raw: sqlite3.Connection, db: Path, signed: str, verifier: Verifier
) -> None:
    raw.execute("UPDATE checkpoints SET note = replace(note, ?, ?)", (f"\n{SIZE}\n", f"\n{SIZE - 1}\n"))
    ok, _, problems = verify(db, verifier, signed)
    assert not ok
    assert problems[0].object == "checkpoints[0]"


def test_checkpoint_problems(db: Path, signed: str, verifier: Verifier) -> None:
    with SqliteEvidenceLog(db) as log:
        stranger = verify_log(log, [Signer.generate("x").verifier], signed)
        assert not stranger.ok and isinstance(stranger.problems[0], UnverifiedNoteError)
        forged = verify_log(log, [verifier], signed.replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n"))
        assert not forged.ok and isinstance(forged.problems[0], NoteError)
        with pytest.raises(NoteError):
            forged.raise_for_problems()


def test_checkpoint_beyond_the_log(db: Path, signed: str, signer: Signer, verifier: Verifier) -> None:
    """A signed checkpoint for more entries than the file holds: the tail was cut off."""
    other = db.with_name("truncated.db")
    with SqliteEvidenceLog(db) as log, SqliteEvidenceLog(other) as short:
        short.append([item.entry for item in log.read(0, SIZE - 5)])
        report = verify_log(short, [verifier], signed)
    assert not report.ok and report.first_bad_index == SIZE - 5


def test_memory_log_verifies(signer: Signer) -> None:
    log = MemoryEvidenceLog()
    log.append([make_entry(i) for i in range(13)])
    assert verify_log(log, [signer.verifier], log.checkpoint(signer)).ok


def test_empty_log_verifies(signer: Signer) -> None:
    log = MemoryEvidenceLog()
    report = verify_log(log, [signer.verifier], log.checkpoint(signer))
    assert report.ok and report.root_hash == merkle.EMPTY_ROOT


def test_verify_entry_with_only_the_files(db: Path, signed: str, verifier: Verifier) -> None:
    """What a third party holds: entry bytes, an inclusion proof, the checkpoint and a vkey."""
    with SqliteEvidenceLog(db) as log:
        item = next(log.read(11, 12))
        proof = log.inclusion_proof(11, SIZE)
    checkpoint = verify_entry(item.canonical, 11, proof, signed, [verifier.vkey])
    assert checkpoint.size == SIZE
    with pytest.raises(ProofError):
        verify_entry(forged_bytes(11), 11, proof, signed, [verifier])
    with pytest.raises(ProofError):
        verify_entry(item.canonical, 12, proof, signed, [verifier])
