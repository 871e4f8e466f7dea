"""Streamed reads: the k-way merge gives exactly the sorted result, under caps, in bounded batches."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from tests.storage.test_read_access import ASSET, CATALOG, DAY1, _access, _fill, _rows

from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.storage import Lake, object_key
from tidm.storage.errors import RequestTooLarge
from tidm.storage.read import LakeReader


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    return lake


def _reader(lake: Lake, evidence: MemoryEvidenceLog | None = None) -> LakeReader:
    return LakeReader(
        lake, access=_access(evidence or MemoryEvidenceLog()), principal="maint-a", catalog=CATALOG
    )


def _sorted_reference(lake: Lake, start: dt.datetime, end: dt.datetime, signals: list[str]) -> pl.DataFrame:
    full = pl.concat(
        [pl.read_parquet(lake.uri(k)) for k in lake.list_keys("clean")], how="vertical_relaxed"
    ).with_columns(pl.col("signal").cast(pl.String), pl.col("asset_id").cast(pl.String))
    return full.filter(
        (pl.col("asset_id") == ASSET)
        & (pl.col("ts") >= start)
        & (pl.col("ts") < end)
        & pl.col("signal").is_in(signals)
    ).sort("signal", "ts", "seq")


def _collect(stream_batches: list[pa.RecordBatch]) -> pl.DataFrame:
    frame = pl.from_arrow(pa.Table.from_batches(stream_batches))
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_streamed_rows_are_the_sorted_rows_in_small_batches(lake: Lake) -> None:
    start, end = DAY1 + dt.timedelta(hours=5), DAY1 + dt.timedelta(days=2, hours=7)
    stream = _reader(lake).stream_unit(ASSET, start, end, ["pressure", "flow"], batch_rows=97)
    batches = list(stream.batches)
    assert all(b.num_rows <= 97 for b in batches) and len(batches) > 10
    got = _collect(batches)
    want = _sorted_reference(lake, start, end, ["pressure", "flow"])
    assert got.height == want.height > 0
    assert got.select("signal", "ts", "seq").equals(want.select("signal", "ts", "seq"))
    assert got.schema["signal"] == pl.String and got.schema["ts"] == pl.Datetime("us", "UTC")


def test_overlapping_objects_merge_in_order(tmp_path: Path) -> None:
    """Objects whose time ranges interleave (replicas landing side by side) still come out sorted."""
    lake = Lake.local(tmp_path / "lake")
    rng = random.Random(7)
    for part in range(4):
        table = _rows(ASSET, DAY1 + dt.timedelta(seconds=rng.randrange(0, 3000)), 400, part * 1000)
        key = object_key(
            "clean", site="s", asset=ASSET, date=DAY1.date(), topic="t", partition=part, first=0, last=1
        )
        lake.write_parquet(key, table)
    stream = _reader(lake).stream_unit(
        ASSET, DAY1, DAY1 + dt.timedelta(days=1), ["pressure", "flow"], batch_rows=50
    )
    got = _collect(list(stream.batches))
    want = _sorted_reference(lake, DAY1, DAY1 + dt.timedelta(days=1), ["pressure", "flow"])
    assert got.height == want.height == 4 * 400 * 2 // 3 + 2  # 400 rows cycle 3 signals: 134 + 133
    assert got.select("signal", "ts").equals(want.select("signal", "ts"))
    assert sorted(got["seq"].to_list()) == sorted(want["seq"].to_list())


def test_caps_refuse_before_the_read_is_counted(lake: Lake) -> None:
    evidence = MemoryEvidenceLog()
    reader = _reader(lake, evidence)
    with pytest.raises(RequestTooLarge, match="above the per-request cap of 1 day"):
        reader.stream_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=2), ["flow"], max_span=dt.timedelta(days=1))
    with pytest.raises(RequestTooLarge, match="holds 480 rows, above the per-request cap of 479"):
        reader.stream_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=1), ["flow"], max_rows=479)
    assert not [e for e in evidence.read() if e.entry.attributes.get("decision") == "allowed"]
    # At the cap exactly, the read goes ahead.
    stream = reader.stream_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=1), ["flow"], max_rows=480)
    assert sum(b.num_rows for b in stream.batches) == 480
    fetches = [e.entry for e in evidence.read() if e.entry.event == EventType.FETCH]
    assert [f.attributes["decision"] for f in fetches] == ["allowed"]


def test_a_consumer_that_stops_early_releases_the_stream(lake: Lake) -> None:
    stream = _reader(lake).stream_unit(ASSET, DAY1, DAY1 + dt.timedelta(days=3), batch_rows=10)
    first = next(iter(stream.batches))
    assert first.num_rows == 10
    stream.close()
    with pytest.raises(StopIteration):
        next(iter(stream.batches))


def test_metadata_columns_are_joined_per_batch(lake: Lake) -> None:
    stream = _reader(lake).stream_unit(
        ASSET, DAY1, DAY1 + dt.timedelta(days=1), with_metadata=True, batch_rows=100
    )
    got = _collect(list(stream.batches))
    assert set(got["signal"].to_list()) == {"pressure", "flow"}, "setpoint is above the ceiling"
    units = dict(zip(got["signal"].to_list(), got["unit"].to_list(), strict=True))
    assert units == {"pressure": "bar", "flow": "m3/h"}
