"""The read API and grants, on a local folder and on the real S3 server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.semantics import samples_table
from tidm.semantics.classification import Level
from tidm.storage import Lake, object_key
from tidm.storage.access import AccessControl, Grant, Principal, grant_subject
from tidm.storage.errors import AccessDenied
from tidm.storage.read import LakeReader, SignalInfo
from tidm.stream_processing.steps import sort_for_lake, with_flags

UTC = dt.UTC
DAY1 = dt.datetime(2026, 11, 27, tzinfo=UTC)
ASSET = "urn:tidm:asset:pump-1"
CATALOG = {
    (ASSET, "pressure"): SignalInfo(unit="bar", semantic_id="0173-1#02-AAB663#003", level=Level.GENERAL),
    (ASSET, "flow"): SignalInfo(unit="m3/h", semantic_id="0173-1#02-AAC789#001", level=Level.GENERAL),
    (ASSET, "setpoint"): SignalInfo(unit="bar", semantic_id=None, level=Level.IMPORTANT),
}


def _rows(asset: str, start: dt.datetime, n: int, seq0: int) -> pa.Table:
    t0 = int(start.timestamp() * 1_000_000)
    signals = ["pressure", "flow", "setpoint"]
    table = samples_table(
        ts_us=[t0 + i * 60_000_000 for i in range(n)],
        recv_ts_us=[t0 + i * 60_000_000 + 7 for i in range(n)],
        asset_id=[asset] * n,
        signal=[signals[i % 3] for i in range(n)],
        value=[float(i) for i in range(n)],
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(seq0, seq0 + n)),
    )
    return sort_for_lake(with_flags(table))


def _fill(lake: Lake) -> None:
    """Three days of one asset and one day of another, in two objects per day (as landings make)."""
    offset = 0
    for asset in (ASSET, "urn:tidm:asset:fan-2"):
        days = 3 if asset == ASSET else 1
        for d in range(days):
            for half in range(2):
                start = DAY1 + dt.timedelta(days=d, hours=12 * half)
                table = _rows(asset, start, 720, offset)
                key = object_key(
                    "clean",
                    site="plant-1",
                    asset=asset,
                    date=start.date(),
                    topic="t",
                    partition=0,
                    first=offset,
                    last=offset + 1,
                )
                lake.write_parquet(key, table)
                offset += 720


def _access(evidence: MemoryEvidenceLog, **grant: object) -> AccessControl:
    g = Grant.model_validate(
        {"id": "g1", "assets": [ASSET], "tables": ["clean"], "ceiling": "general", **grant}
    )
    return AccessControl([Principal(name="maint-a", grants=(g,))], evidence)


def _reader(lake: Lake, evidence: MemoryEvidenceLog, **grant: object) -> LakeReader:
    return LakeReader(lake, access=_access(evidence, **grant), principal="maint-a", catalog=CATALOG)


@pytest.fixture
def local_lake(tmp_path: Path) -> Lake:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    return lake


def _check_reads(lake: Lake) -> None:
    evidence = MemoryEvidenceLog()
    reader = _reader(lake, evidence)
    start, end = DAY1 + dt.timedelta(hours=6), DAY1 + dt.timedelta(days=1, hours=6)
    got = reader.read_unit(ASSET, start, end, ["pressure", "flow"]).collect()
    full = pl.concat(
        [pl.read_parquet(lake.uri(k), storage_options=lake.storage_options) for k in lake.list_keys("clean")],
        how="vertical_relaxed",
    )
    want = full.filter(
        (pl.col("asset_id").cast(pl.String) == ASSET)
        & (pl.col("ts") >= start)
        & (pl.col("ts") < end)
        & pl.col("signal").cast(pl.String).is_in(["pressure", "flow"])
    )
    assert got.height == want.height == 24 * 60 * 2 // 3
    assert sorted(got["seq"].to_list()) == sorted(want["seq"].to_list()), "pushdown equals a full scan"
    fetches = [e.entry for e in evidence.read() if e.entry.event == EventType.FETCH]
    assert len(fetches) == 1 and fetches[0].attributes["decision"] == "allowed"
    assert fetches[0].attributes["object_count"] == 4, "only the two days' objects were read"
    assert all("date=2026-11-29" not in k for k in fetches[0].attributes["objects"])
    # All signals: the important setpoint is above a general ceiling and is withheld.
    every = reader.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=3), with_metadata=True).collect()
    assert set(every["signal"].to_list()) == {"pressure", "flow"}
    assert set(every["unit"].to_list()) == {"bar", "m3/h"}
    assert list(evidence.read())[-1].entry.attributes["withheld"] == ["setpoint"]


def test_reads_on_a_local_folder(local_lake: Lake) -> None:
    _check_reads(local_lake)


@pytest.mark.integration
def test_reads_on_s3(s3_config: dict[str, str], s3_bucket: str) -> None:
    lake = Lake.s3(
        bucket=s3_bucket,
        prefix="lake",
        endpoint=s3_config["endpoint"],
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
        region=s3_config["region"],
    )
    _fill(lake)
    assert lake.read_bytes(lake.list_keys("clean")[0])[:4] == b"PAR1", "read-your-writes"
    _check_reads(lake)


def test_schema_drift_reads_old_and_new_objects_together(local_lake: Lake) -> None:
    newer = _rows(ASSET, DAY1 + dt.timedelta(hours=1), 3, 99_000)
    newer = newer.append_column("value_si", pa.array([1.0, 2.0, 3.0]))
    local_lake.write_parquet(
        object_key(
            "clean", site="plant-1", asset=ASSET, date=DAY1.date(), topic="t", partition=9, first=1, last=2
        ),
        newer,
    )
    got = (
        _reader(local_lake, MemoryEvidenceLog()).read_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=1)).collect()
    )
    assert "value_si" in got.columns
    assert got.filter(pl.col("value_si").is_not_null()).height == 2  # the setpoint row is withheld
    assert got.filter(pl.col("value_si").is_null()).height > 0


def test_duckdb_and_pyarrow_read_the_layout(local_lake: Lake) -> None:
    root = local_lake.path("clean")
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field("asset") == ASSET)
    assert table.num_rows == 3 * 2 * 720
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_dictionary(table.schema.field("signal").type)
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT asset, date, count(*) AS n, min(ts) AS first "
            "FROM read_parquet(?, hive_partitioning=true) "
            "GROUP BY asset, date ORDER BY asset, date",
            [f"{root}/**/*.parquet"],
        ).fetchall()
    finally:
        con.close()
    assert [(r[0], str(r[1]), r[2]) for r in rows] == [
        ("urn:tidm:asset:fan-2", "2026-11-27", 1440),
        (ASSET, "2026-11-27", 1440),
        (ASSET, "2026-11-28", 1440),
        (ASSET, "2026-11-29", 1440),
    ]
    assert rows[1][3] == DAY1


@pytest.mark.parametrize(
    ("grant", "call", "message"),
    [
        ({}, {"asset": "urn:tidm:asset:fan-2"}, "outside its scope"),
        ({}, {"table": "rejected"}, "outside its scope"),
        ({}, {"signals": ["setpoint"]}, "above its classification ceiling 'general'"),
        ({"valid_until": "2026-01-01T00:00:00Z"}, {}, "expired at 2026-01-01"),
        ({"valid_from": "2999-01-01T00:00:00Z"}, {}, "not valid before 2999-01-01"),
    ],
)
def test_refusals_are_clear_and_logged(
    local_lake: Lake, grant: dict[str, object], call: dict[str, object], message: str
) -> None:
    evidence = MemoryEvidenceLog()
    reader = _reader(local_lake, evidence, **grant)
    args: dict[str, object] = {"asset": ASSET, "start": DAY1, "end": DAY1 + dt.timedelta(days=1), **call}
    with pytest.raises(AccessDenied, match=message):
        reader.read_unit(**args)  # type: ignore[arg-type]
    (entry,) = [e.entry for e in evidence.read()]
    assert entry.event == EventType.FETCH and entry.attributes["decision"] == "denied"
    assert message.split("'")[0] in entry.attributes["reason"]
    assert entry.attributes["objects"] == [] and entry.inputs == ()


def test_read_count_limit_is_counted_from_the_log(local_lake: Lake) -> None:
    evidence = MemoryEvidenceLog()
    reader = _reader(local_lake, evidence, max_reads=2)
    for _ in range(2):
        reader.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(hours=1), ["flow"]).collect()
    with pytest.raises(AccessDenied, match="read limit of 2 reached"):
        reader.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(hours=1), ["flow"])
    assert len(evidence.by_input(grant_subject("maint-a", "g1"))) == 2
    # A fresh process with the same log sees the same count: the log is the counter.
    again = _reader(local_lake, evidence, max_reads=2)
    with pytest.raises(AccessDenied, match="read limit"):
        again.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(hours=1), ["flow"])


def test_unknown_signals_count_as_core(local_lake: Lake) -> None:
    reader = LakeReader(local_lake, access=_access(MemoryEvidenceLog()), principal="maint-a", catalog={})
    with pytest.raises(AccessDenied, match="ceiling"):
        reader.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=1), ["pressure"])
    assert reader.read_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=1)).collect().height == 0


def test_times_outside_the_lake_range_are_clear_errors(local_lake: Lake) -> None:
    from tidm.storage.errors import LakeError

    reader = _reader(local_lake, MemoryEvidenceLog())
    with pytest.raises(LakeError, match="outside the lake's range"):
        reader.read_unit(ASSET, dt.datetime(1, 1, 1, tzinfo=UTC), DAY1)
    with pytest.raises(LakeError, match="empty time range"):
        reader.read_unit(ASSET, DAY1, DAY1)
