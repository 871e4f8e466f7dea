"""The EvidenceLog contract, run against every store (in-memory and SQLite)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.evidence._support import digest, make_entry

from tidm.evidence import (
    AuditableLog,
    EntryError,
    EventType,
    EvidenceLog,
    MemoryEvidenceLog,
    OutOfRangeError,
    Signer,
    SqliteEvidenceLog,
    canonical_bytes,
    leaf_hash,
    merkle,
    open_checkpoint,
)


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EvidenceLog]:
    store: EvidenceLog = (
        MemoryEvidenceLog() if request.param == "memory" else SqliteEvidenceLog(tmp_path / "e.db")
    )
    yield store
    store.close()


def test_implements_the_protocols(log: EvidenceLog) -> None:
    assert isinstance(log, EvidenceLog)
    assert isinstance(log, AuditableLog)


def test_empty_log(log: EvidenceLog) -> None:
    assert log.size() == 0
    assert list(log.read()) == []
    assert log.root() == merkle.EMPTY_ROOT
    assert log.append([]) == []
    with pytest.raises(OutOfRangeError):
        log.inclusion_proof(0)


def test_append_and_read(log: EvidenceLog) -> None:
    entries = [make_entry(i) for i in range(10)]
    logged = log.append(entries[:4]) + log.append(entries[4:])
    assert [item.index for item in logged] == list(range(10))
    for item, entry in zip(logged, entries, strict=True):
        assert item.canonical == canonical_bytes(entry)
        assert item.leaf_hash == leaf_hash(item.canonical)
        assert item.entry.subject == entry.subject
    assert log.size() == 10
    assert list(log.read()) == logged
    assert list(log.read(3, 6)) == logged[3:6]
    assert list(log.read(8)) == logged[8:]


def test_invalid_entries_append_nothing(log: EvidenceLog) -> None:
    bad = dataclasses.replace(make_entry(2), subject="nope")
    with pytest.raises(EntryError):
        log.append([make_entry(1), bad])
    assert log.size() == 0


def test_find_and_by_input(log: EvidenceLog) -> None:
    collected = digest("collected")
    published = digest("published")
    log.append(
        [
            make_entry(0, event=EventType.CREATE),
            make_entry(1, inputs=(collected,)),
            make_entry(2, inputs=(collected, published)),
            make_entry(0, event=EventType.SEND),
        ]
    )
    assert [item.index for item in log.find(digest("object-0"))] == [0, 3]
    assert [item.index for item in log.by_input(collected)] == [1, 2]
    assert [item.index for item in log.by_input(published)] == [2]
    assert log.find(digest("nothing")) == []
    with pytest.raises(EntryError):
        log.find("NOT-A-DIGEST")


def test_append_once_is_idempotent(log: EvidenceLog) -> None:
    first = log.append_once(make_entry(5))
    again = log.append_once(make_entry(5))  # a replay after a crash
    assert again == first
    assert log.size() == 1
    other_actor = log.append_once(make_entry(5, actor="agent-2"))
    other_event = log.append_once(make_entry(5, event=EventType.SEND))
    assert (other_actor.index, other_event.index) == (1, 2)


def test_roots_and_proofs_match_the_merkle_module(log: EvidenceLog) -> None:
    logged = log.append([make_entry(i) for i in range(21)])
    leaves = [item.leaf_hash for item in logged]
    for size in range(22):
        assert log.root(size) == merkle.root(leaves[:size])
    for index in range(21):
        proof = log.inclusion_proof(index)
        assert proof == merkle.inclusion_proof(index, 21, leaves)
        merkle.verify_inclusion(leaves[index], index, 21, proof, log.root())
        assert log.inclusion_proof(index, 17 if index < 17 else 21) == merkle.inclusion_proof(
            index, 17 if index < 17 else 21, leaves
        )
    for old in range(22):
        proof = log.consistency_proof(old)
        assert proof == merkle.consistency_proof(old, 21, leaves)
        merkle.verify_consistency(old, 21, log.root(old), log.root(), proof)
    assert log.consistency_proof(3, 9) == merkle.consistency_proof(3, 9, leaves)
    with pytest.raises(OutOfRangeError):
        log.root(22)
    with pytest.raises(OutOfRangeError):
        log.consistency_proof(5, 22)


def test_checkpoint(log: EvidenceLog, signer: Signer) -> None:
    log.append([make_entry(i) for i in range(5)])
    note = log.checkpoint(signer, "tidm.test/log")
    checkpoint, _ = open_checkpoint(note, [signer.verifier], origin="tidm.test/log")
    assert (checkpoint.size, checkpoint.root_hash) == (5, log.root())
    witness = Signer.generate("tidm.test/witness")
    cosigned = log.checkpoint([signer, witness])
    assert open_checkpoint(cosigned, [witness.verifier])[0].origin == signer.name
    assert isinstance(log, AuditableLog)
    assert log.checkpoints() == [note, cosigned]
