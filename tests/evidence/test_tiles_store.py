"""The tlog-tiles store on a folder: layout, parity with the in-memory tree, reopen, tamper detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.evidence._support import make_entry

from tidm.evidence import EvidenceLog, MemoryEvidenceLog, Signer, TamperError, verify_log
from tidm.evidence.objectstore import FolderObjectStore
from tidm.evidence.tiles import (
    TILE_WIDTH,
    TileEvidenceLog,
    decode_bundle,
    encode_bundle,
    parse_tile_path,
    tile_path,
)


def _log(path: Path) -> TileEvidenceLog:
    return TileEvidenceLog(FolderObjectStore(path))


def test_tile_paths_follow_the_c2sp_encoding() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(1, 5, 10) == "tile/1/005.p/10"
    assert tile_path("entries", 0) == "tile/entries/000"
    assert parse_tile_path("tile/0/x001/x234/067.p/3") == (0, 1234067, 3)
    assert parse_tile_path("tile/entries/012") == ("entries", 12, TILE_WIDTH)
    assert parse_tile_path("tile/0/12") is None
    assert parse_tile_path("checkpoint") is None


def test_bundle_round_trip_and_cut_bundle_is_named() -> None:
    entries = [b"a", b"bc", b""]
    assert decode_bundle(encode_bundle(entries), "x") == entries
    with pytest.raises(TamperError, match="tile=x"):
        decode_bundle(encode_bundle(entries)[:-1] + b"\x00\x09", "x")


def test_is_an_evidence_log(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert isinstance(log, EvidenceLog)
    assert log.size() == 0
    log.close()


def test_batches_across_tile_boundaries_match_memory_and_survive_reopen(
    tmp_path: Path, signer: Signer
) -> None:
    log, memory = _log(tmp_path), MemoryEvidenceLog()
    number = 0
    for size in (1, 5, 300, 1, 255, 2 * TILE_WIDTH):
        batch = [make_entry(number + i) for i in range(size)]
        number += size
        logged = log.append(batch)
        memory.append(batch)
        assert [i.index for i in logged] == list(range(number - size, number))
        assert log.root() == memory.root()
    # partial tiles are kept beside the full ones, as the spec allows
    assert (tmp_path / "tile/0/000.p/1").exists() and (tmp_path / "tile/0/000").exists()
    assert (tmp_path / "tile/0/000").stat().st_mode & 0o222 == 0
    note = log.checkpoint(signer)
    log.close()
    again = _log(tmp_path)
    assert again.size() == number
    for size in (1, 7, 256, 257, number):
        assert again.root(size) == memory.root(size)
        assert again.inclusion_proof(size - 1, size) == memory.inclusion_proof(size - 1, size)
        assert again.consistency_proof(size // 2, number) == memory.consistency_proof(size // 2, number)
    assert [i.canonical for i in again.read(250, 260)] == [i.canonical for i in memory.read(250, 260)]
    assert again.latest_checkpoint() == note and again.checkpoints() == [note]
    assert verify_log(again, [signer.verifier], note).ok
    assert [i.index for i in again.by_input(make_entry(3).subject)] == []
    assert again.append_once(make_entry(3)).index == 3
    assert again.size() == number
    again.close()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=4))
def test_any_batching_gives_the_same_tree(tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    path = tmp_path_factory.mktemp("tiles")
    log, memory = _log(path), MemoryEvidenceLog()
    number = 0
    for size in sizes:
        batch = [make_entry(number + i) for i in range(size)]
        number += size
        log.append(batch)
        memory.append(batch)
    reopened = _log(path)
    assert reopened.root() == memory.root()
    assert reopened.inclusion_proof(number - 1) == memory.inclusion_proof(number - 1)
    log.close()
    reopened.close()


def _tampered(tmp_path: Path, signer: Signer, count: int = 300) -> tuple[TileEvidenceLog, str]:
    log = _log(tmp_path)
    log.append([make_entry(i) for i in range(count)])
    note = log.checkpoint(signer)
    log.close()
    return _log(tmp_path), note


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_changed_byte_in_an_entry_bundle_is_named(tmp_path: Path, signer: Signer) -> None:
    log, note = _tampered(tmp_path, signer)
    bundle = tmp_path / "tile/entries/001.p/44"
    _flip(bundle, 2 + 40)  # inside the first entry of the second bundle: entry 256
    log = _log(tmp_path)
    report = verify_log(log, [signer.verifier], note)
    assert not report.ok
    assert report.first_bad_index == 256
    assert "tile/entries/001.p/44" in str(report.problems[0])
    log.close()


def test_one_changed_byte_in_a_hash_tile_is_named(tmp_path: Path, signer: Signer) -> None:
    _, note = _tampered(tmp_path, signer)
    _flip(tmp_path / "tile/0/000", 32 * 7 + 3)  # the stored leaf hash of entry 7
    log = _log(tmp_path)
    report = verify_log(log, [signer.verifier], note)
    assert not report.ok
    messages = " ".join(str(p) for p in report.problems)
    assert "index=7" in messages and "tile/0/000" in messages
    log.close()


def test_a_deleted_entry_in_a_bundle_is_found(tmp_path: Path, signer: Signer) -> None:
    _, note = _tampered(tmp_path, signer)
    path = tmp_path / "tile/entries/000"
    entries = decode_bundle(path.read_bytes(), "b")
    os.chmod(path, 0o644)
    path.write_bytes(encode_bundle(entries[:10] + entries[11:]))
    log = _log(tmp_path)
    report = verify_log(log, [signer.verifier], note)
    assert not report.ok
    assert report.first_bad_index == 10
    assert any("tile/entries/000" in str(p) for p in report.problems)
    log.close()


def test_a_changed_checkpoint_fails_its_signature(tmp_path: Path, signer: Signer) -> None:
    _, note = _tampered(tmp_path, signer, 5)
    forged = note.replace("\n5\n", "\n4\n")
    report = verify_log(_log(tmp_path), [signer.verifier], forged)
    assert not report.ok
    assert "signature" in str(report.problems[0])
