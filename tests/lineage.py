"""Checks shared by end-to-end tests: exactly-once against the simulator, and the evidence chain."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa

from tidm.evidence import trace
from tidm.evidence.api import EventType, EvidenceLog
from tidm.simulator import ProducedSample
from tidm.storage import Lake


def landed_rows(lake: Lake) -> pa.Table:
    """clean + rejected rows of the lake (both hold samples; together they are everything received)."""
    parts = [t for t in (lake.read_table("clean"), lake.read_table("rejected")) if t.num_rows]
    return pa.concat_tables(
        [p.select(["asset_id", "signal", "ts", "seq", "quality", "value"]) for p in parts]
    )


def assert_exactly_once(produced: list[ProducedSample], lake: Lake) -> None:
    table = landed_rows(lake)
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    keys = Counter(
        zip(table.column("asset_id").to_pylist(), table.column("signal").to_pylist(), ts, strict=True)
    )
    dupes = [k for k, n in keys.items() if n > 1]
    assert not dupes, f"{len(dupes)} samples landed more than once, e.g. {dupes[:3]}"
    expected = {(p.asset_id, p.signal, p.ts_us) for p in produced}
    missing = expected - keys.keys()
    extra = keys.keys() - expected
    assert not missing, (
        f"{len(missing)} of {len(expected)} produced samples never landed, e.g. {sorted(missing)[:3]}"
    )
    assert not extra, f"{len(extra)} landed samples were never produced, e.g. {sorted(extra)[:3]}"
    seqs = table.column("seq").to_pylist()
    assert len(set(seqs)) == len(seqs), "seq is unique per source"
    clean = lake.read_table("clean")
    assert set(clean.column("quality").to_pylist()) <= {0}


def assert_lineage(lake: Lake, evidence: EvidenceLog) -> int:
    """Every landed object is evidenced and walks back to collected batches; returns objects checked."""
    checked = 0
    for table in ("clean", "rejected"):
        for key in lake.list_keys(table):
            digest = hashlib.sha256(lake.read_bytes(key)).hexdigest()
            landed = [e.entry for e in evidence.find(digest) if e.entry.event == EventType.SEND]
            assert landed, f"no landing entry for {key}"
            (clean_hash,) = landed[0].inputs
            steps = [
                e.entry for e in evidence.find(clean_hash) if e.entry.event == EventType.CONTENT_MODIFIED
            ]
            assert steps, f"no clean-step entry for the batch landed as {key}"
            assert steps[0].inputs, f"clean step of {key} names no input batches"
            for batch in steps[0].inputs:
                events = {e.entry.event for e in evidence.find(batch)}
                assert {EventType.CREATE, EventType.SEND, EventType.RECEIVE} <= events, (
                    f"batch {batch} of {key} lacks a hop: has {sorted(events)}"
                )
            walk = trace(evidence, digest)
            assert walk.ok, f"lineage of {key}: {walk.problems[:3]}"
            assert set(walk.sources) == set(steps[0].inputs)
            checked += 1
    return checked
