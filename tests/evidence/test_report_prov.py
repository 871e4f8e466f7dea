"""Audit report (JSON + HTML with an inline SVG lineage) and the W3C PROV-JSON export."""

from __future__ import annotations

import json

from tests.evidence._support import digest, landed_lineage

from tidm.evidence import EventType, EvidenceEntry, MemoryEvidenceLog, Signer
from tidm.evidence.prov import to_prov_json
from tidm.evidence.report import build_report, render_html


def _log() -> tuple[MemoryEvidenceLog, str]:
    log = MemoryEvidenceLog()
    subject, entries = landed_lineage("clean/a.parquet")
    log.append(entries)
    lost = digest("lost-batch")
    log.append(
        [
            EvidenceEntry(EventType.CREATE, lost, "agent:a1", 5, (), {"policy_hash": "p1", "key_id": "k1"}),
            EvidenceEntry(
                EventType.SEND, lost, "agent:a1", 5, (lost,), {"topic": "t", "partition": 0, "offset": 9}
            ),
            EvidenceEntry(
                EventType.ROUTE,
                digest("bad"),
                "job:clean",
                6,
                (),
                {"route": "quarantine", "reason": "bad_signature"},
            ),
            EvidenceEntry(
                EventType.FETCH,
                subject,
                "user:alice",
                7,
                (subject,),
                {"object": "clean/a.parquet", "dp_epsilon": 0.5},
            ),
            EvidenceEntry(EventType.FETCH, subject, "user:alice", 8, (subject,), {"dp_epsilon": 0.25}),
            EvidenceEntry(
                EventType.EXPIRE,
                digest("old"),
                "job:retention",
                9,
                (),
                {"object": "clean/old.parquet", "reason": "90 days"},
            ),
        ]
    )
    return log, subject


def test_report_counts_hops_losses_quarantines_reads_deletions_and_budget(signer: Signer) -> None:
    log, subject = _log()
    note = log.checkpoint(signer)
    report = build_report(
        log,
        subject=subject,
        object_label="clean/a.parquet",
        checkpoint=note,
        verifier_keys=[signer.verifier.vkey],
    )
    json.dumps(report)  # JSON-ready
    hops = {(h["event"], h["actor_kind"]): h["count"] for h in report["hops"]}
    assert hops[("CREATE", "agent")] == 3 and hops[("RECEIVE", "job")] == 2
    assert report["losses"]["batches_sent_never_received"] == 1
    assert report["quarantines"] == [
        {"reason": "bad_signature", "count": 1, "examples": report["quarantines"][0]["examples"]}
    ]
    assert report["reads"][0]["principal"] == "user:alice" and report["reads"][0]["count"] == 2
    assert report["deletions"][0]["object"] == "clean/old.parquet"
    assert report["policies_and_keys"] == {"key_id": ["k1"], "policy_hash": ["p1"]}
    assert report["dp_budget"] == [{"actor": "user:alice", "epsilon": 0.75}]
    assert report["log"]["checkpoint"]["signature_verified"] is True
    lineage = report["lineage"]
    assert lineage["ok"] and len(lineage["nodes"]) == 4 and lineage["svg"].startswith("<svg")
    page = render_html(report)
    assert "<svg" in page and "bad_signature" in page and "user:alice" in page


def test_report_window_filters_by_time() -> None:
    log, _ = _log()
    report = build_report(log, since_us=7, until_us=9)
    assert report["log"]["entries_in_period"] == 2
    assert {h["event"] for h in report["hops"]} == {"FETCH"}


def test_prov_json_links_entities_activities_and_agents() -> None:
    log, subject = _log()
    document = json.loads(to_prov_json(log, subject=subject))
    assert f"tidm:sha256-{subject}" in document["entity"]
    assert len(document["activity"]) == 10  # the 8 of the lineage and the 2 reads of the object
    assert "tidm:agent-a1" in document["agent"]
    assert document["wasDerivedFrom"]
    whole = json.loads(to_prov_json(log))
    assert whole["wasInvalidatedBy"]
