"""verify_log's chunked fast path: clean chunks are compared level by level, odd ones leaf by leaf."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from tests.evidence._support import make_entry

from tidm.evidence import Signer, SqliteEvidenceLog, canonical_bytes, verify_log

SIZE = 20_000  # more than two read chunks of 8192


@pytest.fixture(scope="module")
def signed_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Signer, str]:
    path = tmp_path_factory.mktemp("chunks") / "log.db"
    signer = Signer.generate("tidm.test/chunks")
    with SqliteEvidenceLog(path) as log:
        log.append_canonical([canonical_bytes(make_entry(n)) for n in range(SIZE)])
        log.checkpoint(signer)  # an older signed size is a target inside a chunk
        log.append_canonical([canonical_bytes(make_entry(n)) for n in range(SIZE, SIZE + 5)])
        note = log.checkpoint(signer)
    return path, signer, note


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "log.db"
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def test_clean_log_verifies(signed_log: tuple[Path, Signer, str]) -> None:
    path, signer, note = signed_log
    with SqliteEvidenceLog(path) as log:
        report = verify_log(log, [signer.verifier], note)
    assert report.ok, report.problems


def test_problems_in_later_chunks_are_each_named(
    signed_log: tuple[Path, Signer, str], tmp_path: Path
) -> None:
    path, signer, note = signed_log
    copy = _copy(path, tmp_path)
    with closing(sqlite3.connect(copy, isolation_level=None)) as db:
        # a subtree hash in the second chunk (leaves 9000..9007), an entry in the third
        db.execute("UPDATE tree SET hash = ? WHERE level = 3 AND idx = 1125", (bytes(32),))
        data = db.execute("SELECT canonical FROM entries WHERE idx = 17000").fetchone()[0]
        db.execute(
            "UPDATE entries SET canonical = ? WHERE idx = 17000", (data.replace(b'"offset":', b'"offset":1'),)
        )
    with SqliteEvidenceLog(copy) as log:
        report = verify_log(log, [signer.verifier], note)
    assert not report.ok
    by_index = {p.index: p for p in report.problems if p.index is not None}
    assert by_index[9000].object == "tree(3,1125)"
    assert "entry bytes changed" in by_index[17000].what
    assert report.first_bad_index == 9000
