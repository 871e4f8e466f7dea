"""The SQLite store: durability settings, O(log n) proofs, reopening, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from tests.evidence._support import REPLAYED_FROM, append_worker, make_entry

from tidm.evidence import (
    EventType,
    EvidenceError,
    Signer,
    SqliteEvidenceLog,
    StoreError,
    TamperError,
    merkle,
    verify_log,
)


def test_durability_settings(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with SqliteEvidenceLog(path) as log:
        assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    raw.close()
    assert {"entries", "inputs", "tree", "checkpoints", "meta"} <= tables


def test_reopen_and_continue(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "e.db"
    with SqliteEvidenceLog(path) as log:
        first = log.append([make_entry(i) for i in range(11)])
        note = log.checkpoint(signer)
    with SqliteEvidenceLog(path) as log:
        assert log.size() == 11
        assert list(log.read()) == first
        more = log.append([make_entry(i) for i in range(11, 30)])
        leaves = [item.leaf_hash for item in first + more]
        assert log.root() == merkle.root(leaves)
        assert log.checkpoints() == [note]
        merkle.verify_consistency(11, 30, log.root(11), log.root(), log.consistency_proof(11))


def test_proofs_read_logarithmically_many_rows(tmp_path: Path) -> None:
    with SqliteEvidenceLog(tmp_path / "e.db") as log:
        for start in range(0, 5000, 500):
            log.append([make_entry(i) for i in range(start, start + 500)])
        statements: list[str] = []
        log._db.set_trace_callback(statements.append)
        proof = log.inclusion_proof(1234)
        consistency = log.consistency_proof(3001)
        log.root(4097)
        log._db.set_trace_callback(None)
        tree_reads = [s for s in statements if "FROM tree" in s]
        # ~log2(5000) = 13 subtrees per proof: a full scan would be thousands.
        assert len(tree_reads) <= 3 * 2 * 13
        assert len(proof) == 13
        assert consistency


def test_schema_version_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    SqliteEvidenceLog(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    raw.close()
    with pytest.raises(EvidenceError, match="schema version 99"):
        SqliteEvidenceLog(path)


def test_closed_log_refuses_work(tmp_path: Path) -> None:
    log = SqliteEvidenceLog(tmp_path / "e.db")
    log.close()
    log.close()
    with pytest.raises(EvidenceError, match="closed"):
        log.size()


def test_a_held_writer_lock_is_a_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = SqliteEvidenceLog(path, timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            log.append([make_entry(1)])
        assert log.size() == 0  # readers are not blocked in WAL mode
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.append([make_entry(1)])
    log.close()


def test_conflicting_rows_are_reported_as_tampering(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with SqliteEvidenceLog(path) as log:
        log.append([make_entry(i) for i in range(4)])
        log._db.execute("DELETE FROM entries WHERE idx = 3")
        with pytest.raises(TamperError):
            log.append([make_entry(9)])  # the tree already has a leaf at index 3


def test_threads_share_one_instance(tmp_path: Path) -> None:
    with SqliteEvidenceLog(tmp_path / "e.db") as log:

        def work(worker: int) -> None:
            for batch in range(10):
                start = (worker * 10 + batch) * 5
                log.append([make_entry(n) for n in range(start, start + 5)])

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logged = list(log.read())
        assert [item.index for item in logged] == list(range(200))
        assert log.root() == merkle.root([item.leaf_hash for item in logged])


def test_two_processes_append_to_one_file(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "shared.db"
    SqliteEvidenceLog(path).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=append_worker, args=(str(path), w, 25, 8, barrier)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with SqliteEvidenceLog(path) as log:
        logged = list(log.read())
        replays = [item for item in logged if item.entry.actor == "replayer"]
        appended = [item for item in logged if item.entry.actor != "replayer"]
        assert [item.index for item in logged] == list(range(410))
        assert sorted(item.entry.attributes["offset"] for item in appended) == list(range(400))
        assert sorted(item.entry.attributes["offset"] for item in replays) == [
            REPLAYED_FROM + i for i in range(10)
        ]
        # Each batch is one transaction: its 8 entries are contiguous in the log.
        for start in range(0, 400, 8):
            batch = appended[start : start + 8]
            assert [item.index for item in batch] == list(range(batch[0].index, batch[0].index + 8))
            assert len({item.entry.actor for item in batch}) == 1
            offsets = [item.entry.attributes["offset"] for item in batch]
            assert offsets == list(range(offsets[0], offsets[0] + 8))
        switches = sum(a.entry.actor != b.entry.actor for a, b in zip(appended, appended[1:], strict=False))
        assert switches >= 2, "the two writers should have taken turns, not run one after the other"
        assert log.root() == merkle.root([item.leaf_hash for item in logged])
        report = verify_log(log, [signer.verifier], log.checkpoint(signer))
        assert report.ok, report.problems


def test_find_filters_by_event_and_actor(tmp_path: Path) -> None:
    entries = [
        make_entry(1, event=EventType.CREATE, actor="agent-1"),
        make_entry(1, event=EventType.RECEIVE, actor="job:a"),
        make_entry(1, event=EventType.RECEIVE, actor="job:b"),
        make_entry(2, event=EventType.RECEIVE, actor="job:a"),
    ]
    with SqliteEvidenceLog(tmp_path / "e.db") as log:
        log.append(entries)
        subject = entries[0].subject
        assert [i.index for i in log.find(subject)] == [0, 1, 2]
        assert [i.index for i in log.find(subject, event=EventType.RECEIVE)] == [1, 2]
        assert [i.index for i in log.find(subject, event=EventType.RECEIVE, actor="job:a")] == [1]
        assert log.find(subject, actor="job:c") == []
