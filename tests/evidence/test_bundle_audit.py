"""Proof bundles (offline, public key only), object audits with deletions, the verifier state file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.evidence._support import digest, landed_lineage

from tidm.evidence import (
    EventType,
    EvidenceEntry,
    MemoryEvidenceLog,
    Signer,
    VerificationError,
    open_checkpoint,
)
from tidm.evidence.audit import check_consistency_with_state, check_objects, save_state
from tidm.evidence.bundle import build_bundle, check_bundle

KEY = "clean/site=s/asset=a/date=2026-01-01/t-0-0-9.parquet"
DATA = b"PAR1 landed bytes PAR1"


def _log() -> tuple[MemoryEvidenceLog, str]:
    log = MemoryEvidenceLog()
    subject, entries = landed_lineage(KEY, hashlib.sha256(DATA).hexdigest())
    log.append(entries)
    other, more = landed_lineage("clean/other.parquet", tag="o")
    log.append(more)
    return log, subject


def test_bundle_verifies_offline_with_the_public_key_alone(signer: Signer) -> None:
    log, subject = _log()
    note = log.checkpoint(signer)
    bundle = build_bundle(log, subject, note, object_key=KEY)
    text = json.dumps(bundle)
    report = check_bundle(text, [signer.verifier.vkey], object_bytes=DATA)
    assert report.ok, report.problems
    assert len(report.sources) == 2 and report.entries == 8


def test_bundle_problems_name_the_entry(signer: Signer) -> None:
    log, subject = _log()
    bundle = build_bundle(log, subject, log.checkpoint(signer), object_key=KEY)
    assert not check_bundle(bundle, [signer.verifier], object_bytes=DATA + b"x").ok
    changed = json.loads(json.dumps(bundle))
    changed["entries"][6]["entry"] = changed["entries"][6]["entry"].replace('"rows":5', '"rows":6')
    report = check_bundle(changed, [signer.verifier])
    assert not report.ok and any(p.startswith("entries[6]") for p in report.problems)
    dropped = json.loads(json.dumps(bundle))
    del dropped["entries"][0]
    report = check_bundle(dropped, [signer.verifier])
    assert not report.ok and any("lineage" in p for p in report.problems)
    other = Signer.generate("someone.else/log")
    assert not check_bundle(bundle, [other.verifier]).ok


def test_bundle_needs_a_checkpoint_covering_the_lineage(signer: Signer) -> None:
    log, subject = _log()
    note = log.checkpoint(signer)
    newer, entries = landed_lineage("clean/late.parquet", tag="late")
    log.append(entries)
    with pytest.raises(VerificationError, match="newer than the checkpoint"):
        build_bundle(log, newer, note)


def test_objects_audit_reports_tamper_and_recorded_deletions(signer: Signer) -> None:
    log, _ = _log()
    gone, entries = landed_lineage("clean/gone.parquet", tag="g")
    log.append(entries)
    unrecorded, entries = landed_lineage("clean/vanished.parquet", tag="v")
    log.append(entries)
    log.append(
        [
            EvidenceEntry(
                EventType.DROP,
                gone,
                "user:ops",
                1_800_000_000_000_000,
                (),
                {"object": "clean/gone.parquet", "reason": "retention"},
            )
        ]
    )
    checkpoint, _ = open_checkpoint(log.checkpoint(signer), [signer.verifier])
    lake = {KEY: DATA, "clean/other.parquet": b"changed", "clean/unknown.parquet": b"?"}
    findings = {f.key: f for f in check_objects(log, checkpoint, lake, lake.__getitem__, every_landed=True)}
    assert findings[KEY].status == "ok"
    assert findings["clean/other.parquet"].status == "failed"
    assert "content changed" in findings["clean/other.parquet"].message
    assert "no evidence entry" in findings["clean/unknown.parquet"].message
    assert findings["clean/gone.parquet"].status == "deleted"
    assert (
        "DROP" in findings["clean/gone.parquet"].message
        and "retention" in findings["clean/gone.parquet"].message
    )
    assert findings["clean/vanished.parquet"].status == "failed"
    assert "no DROP/EXPIRE" in findings["clean/vanished.parquet"].message
    del unrecorded


def test_state_file_catches_a_rewritten_history(tmp_path: Path, signer: Signer) -> None:
    state = tmp_path / "state.json"
    log, _ = _log()
    first, _ = open_checkpoint(note := log.checkpoint(signer), [signer.verifier])
    assert check_consistency_with_state(log, first, state) is None
    save_state(first, note, state)
    log.append([EvidenceEntry(EventType.FETCH, digest("x"), "user:u", 1, (), {})])
    grown, _ = open_checkpoint(log.checkpoint(signer), [signer.verifier])
    assert check_consistency_with_state(log, grown, state) is None
    forked = MemoryEvidenceLog()
    _, entries = landed_lineage(KEY, tag="fork")
    forked.append(entries + entries)
    rewritten, _ = open_checkpoint(forked.checkpoint(signer), [signer.verifier])
    problem = check_consistency_with_state(forked, rewritten, state)
    assert problem is not None and "not an extension" in str(problem)
    shrunk = MemoryEvidenceLog()
    shrunk.append(entries[:2])
    small, _ = open_checkpoint(shrunk.checkpoint(signer), [signer.verifier])
    problem = check_consistency_with_state(shrunk, small, state)
    assert problem is not None and "shrank" in str(problem)
