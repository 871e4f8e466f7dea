#!/usr/bin/env python3
"""Reading one unit-day from the lake on the real S3 server, against a full-scan baseline.

    .venv/bin/python bench/query.py [--quick]

Builds a lake on S3 (the dev SeaweedFS, started if needed): several assets x days, hourly objects
as the clean job lands them. Then, in the same run:
  - one unit-day, one signal, through the read API (grants checked, FETCH logged, pushdown);
  - one unit-day, all signals, through the read API;
  - the baseline: scan every object of the table with polars and filter afterwards.
Prints the median of a few repeats and the speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))

import services  # noqa: E402  (deploy/dev is not a package)
from tidm.evidence import MemoryEvidenceLog  # noqa: E402
from tidm.semantics import samples_table  # noqa: E402
from tidm.semantics.classification import Level  # noqa: E402
from tidm.storage import Lake, object_key  # noqa: E402
from tidm.storage.access import AccessControl, Grant, Principal  # noqa: E402
from tidm.storage.read import LakeReader, SignalInfo  # noqa: E402
from tidm.stream_processing.steps import sort_for_lake, with_flags  # noqa: E402

DAY0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def build(lake: Lake, assets: int, days: int, signals: int, per_hour: int) -> int:
    rows = 0
    rng = np.random.default_rng(1)
    names = [f"Signal{j:03d}" for j in range(signals)]
    for a in range(assets):
        asset = f"urn:tidm:asset:unit-{a:03d}"
        for d in range(days):
            for h in range(24):
                start = DAY0 + dt.timedelta(days=d, hours=h)
                t0 = int(start.timestamp() * 1_000_000)
                n = per_hour * signals
                step = 3_600_000_000 // per_hour
                ts = t0 + np.repeat(np.arange(per_hour, dtype=np.int64) * step, signals)
                table = samples_table(
                    ts_us=ts,
                    recv_ts_us=ts + 5,
                    asset_id=[asset] * n,
                    signal=names * per_hour,
                    value=rng.normal(size=n),
                    value_text=[None] * n,
                    quality=np.zeros(n, dtype=np.uint8),
                    status_code=np.zeros(n, dtype=np.uint32),
                    seq=np.arange(rows, rows + n, dtype=np.uint64),
                )
                key = object_key(
                    "clean",
                    site="plant",
                    asset=asset,
                    date=start.date(),
                    topic="tidm.samples",
                    partition=a % 4,
                    first=rows,
                    last=rows + n - 1,
                )
                lake.write_parquet(key, sort_for_lake(with_flags(table)))
                rows += n
    return rows


def timed(fn, repeats: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times, n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small lake and fewer repeats")
    args = parser.parse_args()
    assets, days, signals, per_hour, repeats = (3, 2, 10, 60, 3) if args.quick else (4, 4, 20, 360, 5)
    state = services.ensure_up(["s3"])
    s3 = state["s3"]
    bucket = f"bench-query-{uuid.uuid4().hex[:8]}"
    from minio import Minio

    endpoint = s3["endpoint"].removeprefix("http://")
    client = Minio(endpoint, access_key=s3["access_key"], secret_key=s3["secret_key"], secure=False)
    client.make_bucket(bucket)
    lake = Lake.s3(
        bucket=bucket,
        prefix="lake",
        endpoint=s3["endpoint"],
        access_key=s3["access_key"],
        secret_key=s3["secret_key"],
        region=s3["region"],
    )
    t = time.perf_counter()
    total = build(lake, assets, days, signals, per_hour)
    print(
        f"lake: {total:,} rows in {len(lake.list_keys('clean'))} objects on S3, "
        f"built in {time.perf_counter() - t:.1f} s"
    )
    catalog = {
        (f"urn:tidm:asset:unit-{a:03d}", f"Signal{j:03d}"): SignalInfo(level=Level.GENERAL)
        for a in range(assets)
        for j in range(signals)
    }
    access = AccessControl(
        [Principal(name="bench", grants=(Grant(id="all", ceiling=Level.CORE),))], MemoryEvidenceLog()
    )
    reader = LakeReader(lake, access=access, principal="bench", catalog=catalog)
    asset, day = "urn:tidm:asset:unit-001", DAY0 + dt.timedelta(days=1)
    end = day + dt.timedelta(days=1)

    def one_signal() -> int:
        return reader.read_unit(asset, day, end, ["Signal007"]).collect().height

    def all_signals() -> int:
        return reader.read_unit(asset, day, end).collect().height

    keys = lake.list_keys("clean")

    def full_scan() -> int:
        frame = pl.scan_parquet(
            [lake.uri(k) for k in keys], storage_options=lake.storage_options, hive_partitioning=False
        )
        lo, hi = pl.lit(day), pl.lit(end)
        return (
            frame.collect()
            .filter(
                (pl.col("asset_id").cast(pl.String) == asset) & (pl.col("ts") >= lo) & (pl.col("ts") < hi)
            )
            .height
        )

    base, n_base = timed(full_scan, max(1, repeats // 2))
    t1, n1 = timed(one_signal, repeats)
    t2, n2 = timed(all_signals, repeats)
    assert n2 == n_base, (n2, n_base)
    print(f"{'read':<38}{'rows':>12}{'median s':>12}{'vs full scan':>14}")
    print(f"{'full scan + filter (baseline)':<38}{n_base:>12,}{base:>12.3f}{1.0:>13.1f}x")
    print(f"{'unit-day, one signal (read API)':<38}{n1:>12,}{t1:>12.3f}{base / t1:>13.1f}x")
    print(f"{'unit-day, all signals (read API)':<38}{n2:>12,}{t2:>12.3f}{base / t2:>13.1f}x")
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name)
    client.remove_bucket(bucket)


if __name__ == "__main__":
    main()
