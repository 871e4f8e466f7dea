#!/usr/bin/env python3
"""Peak RSS of `tidm serve` while it streams large reads, against the previous read path, in one run.

    .venv/bin/python bench/serve_memory.py [--rows 10000000 100000000] [--baseline-max 10000000]

Builds a synthetic lake in a temporary folder, fast (one asset, 20 signals at 10 Hz, hourly objects
sorted by signal then time as the clean job lands them), then for each size starts a fresh server and
reads the whole range over HTTP, measuring the server's peak RSS (VmHWM) and the time:
  - `current`: `tidm serve` as shipped (k-way merge of the objects, batch by batch);
  - `baseline`: the read path before it (a copy kept only here: a global sort, then batches; parquet
    collected whole), served the same way, for sizes up to --baseline-max (it needs the whole result
    in memory: 100M rows would not fit a 2 GiB pod, nor this machine's share).
Also a client that stops after 64 KB: the server's RSS after the abandoned stream, against its RSS
when idle. Prints one line per read and the ratios baseline/current.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAY0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ASSET = "urn:tidm:asset:press-1"
SIGNALS = [f"Signal{j:02d}" for j in range(20)]
HZ = 10
TOKEN = "bench-token"  # noqa: S105 - a bench token


def build(root: Path, rows: int) -> int:
    """Hourly objects of one asset until `rows` rows; returns the rows written."""
    from tidm.storage import Lake, object_key

    lake = Lake.local(root)
    per_signal = 3600 * HZ
    step = 1_000_000 // HZ
    written, hour = 0, 0
    rng = np.random.default_rng(3)
    while written < rows:
        start = DAY0 + dt.timedelta(hours=hour)
        t0 = int(start.timestamp() * 1_000_000)
        n = min(per_signal, (rows - written) // len(SIGNALS)) or 1
        ts = np.tile(t0 + np.arange(n, dtype=np.int64) * step, len(SIGNALS))
        total = n * len(SIGNALS)
        signal = pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(len(SIGNALS), dtype=np.int32), n)), pa.array(SIGNALS)
        )
        asset = pa.DictionaryArray.from_arrays(pa.array(np.zeros(total, dtype=np.int32)), pa.array([ASSET]))
        table = pa.table(
            {
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "recv_ts": pa.array(ts + 7, pa.timestamp("us", tz="UTC")),
                "asset_id": asset,
                "signal": signal,
                "value": rng.normal(size=total),
                "value_text": pa.nulls(total, pa.string()),
                "quality": pa.array(np.zeros(total, dtype=np.uint8)),
                "status_code": pa.array(np.zeros(total, dtype=np.uint32)),
                "seq": pa.array(np.arange(written, written + total, dtype=np.uint64)),
                "flags": pa.array(np.zeros(total, dtype=np.uint8)),
            }
        )
        key = object_key(
            "clean",
            site="plant",
            asset=ASSET,
            date=start.date(),
            topic="t",
            partition=0,
            first=written,
            last=written + total - 1,
        )
        lake.write_parquet(key, table)
        written += total
        hour += 1
    return written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _config(work: Path, lake: Path, port: int) -> Path:
    grants = {
        "principals": {
            "bench": {
                "token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()],
                "grants": [{"id": "all", "ceiling": "core"}],
            }
        }
    }
    (work / "grants.yaml").write_text(yaml.safe_dump(grants))
    config = {
        "lake": {"url": str(lake)},
        "evidence": {"path": str(work / f"evidence-{port}.db")},
        "read": {"grants": str(work / "grants.yaml")},
        "serve": {"port": port, "max_span": "P3650D", "max_rows": 10**10},
    }
    path = work / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Server:
    def __init__(self, kind: str, work: Path, lake: Path) -> None:
        self.port = _free_port()
        config = _config(work, lake, self.port)
        args = (
            [sys.executable, "-m", "tidm.cli.main", "serve", "--config", str(config)]
            if kind == "current"
            else [sys.executable, __file__, "--serve-baseline", str(config)]
        )
        self.log = (work / f"{kind}-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.1)

    def peak(self) -> int:
        return _status(self.proc.pid, "VmHWM")

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def read_all(
    server: Server, fmt: str, end: dt.datetime, *, stop_after: int | None = None
) -> tuple[int, float]:
    params = {"from": DAY0.isoformat(), "to": end.isoformat(), "format": fmt}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    got = 0
    t = time.perf_counter()
    with httpx.stream(
        "GET", f"{server.url}/v1/units/{ASSET}/samples", params=params, headers=headers, timeout=3600
    ) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            got += len(chunk)
            if stop_after is not None and got >= stop_after:
                break
    return got, time.perf_counter() - t


def measure(kind: str, work: Path, lake: Path, fmt: str, end: dt.datetime) -> tuple[int, int, float]:
    server = Server(kind, work, lake)
    try:
        idle = server.rss()
        size, seconds = read_all(server, fmt, end)
        return idle, server.peak(), seconds
    finally:
        server.close()


def abandoned(kind: str, work: Path, lake: Path, end: dt.datetime) -> tuple[int, int, int]:
    """(idle RSS, RSS once the abandoned stream is released, peak) for a client that reads 64 KB."""
    server = Server(kind, work, lake)
    try:
        idle = server.rss()
        read_all(server, "csv", end, stop_after=64 << 10)
        # The server notices the disconnect at its next write; poll until its RSS settles (bounded).
        deadline, last = time.monotonic() + 30, -1
        while time.monotonic() < deadline:
            now = server.rss()
            if abs(now - last) < (1 << 20):
                break
            last = now
            time.sleep(0.5)
        return idle, server.rss(), server.peak()
    finally:
        server.close()


# -- the previous read path, kept only here as the baseline ----------------------------------------


def serve_baseline(config_path: Path) -> None:
    import polars as pl
    import uvicorn
    from fastapi import FastAPI, Header, Query
    from fastapi.responses import Response, StreamingResponse

    from tidm.evidence import SqliteEvidenceLog
    from tidm.storage import Lake
    from tidm.storage.access import load_access
    from tidm.storage.read import LakeReader

    config = yaml.safe_load(config_path.read_text())
    lake = Lake.local(Path(config["lake"]["url"]))
    access = load_access(Path(config["read"]["grants"]), SqliteEvidenceLog(Path(config["evidence"]["path"])))
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/units/{asset}/samples")
    def samples(
        asset: str,
        start: str = Query(alias="from"),
        end: str = Query(alias="to"),
        format: str = "arrow",  # noqa: A002
        authorization: str | None = Header(default=None),
    ) -> Response:
        reader = LakeReader(lake, access=access, principal="bench", channel="http")
        frame = reader.read_unit(asset, dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
        frame = frame.sort("signal", "ts")
        if format == "parquet":
            data = frame.collect()
            sink = io.BytesIO()
            data.write_parquet(sink, compression="zstd")
            return Response(sink.getvalue())

        def stream() -> Iterator[bytes]:
            first = True
            for batch in frame.collect_batches(chunk_size=100_000):
                if format == "csv":
                    yield (
                        batch.with_columns(pl.col(pl.Categorical).cast(pl.String))
                        .write_csv(include_header=first)
                        .encode()
                    )
                    first = False
                else:
                    sink = io.BytesIO()
                    batch.write_ipc_stream(sink)
                    yield sink.getvalue()

        return StreamingResponse(stream())

    uvicorn.run(app, host="127.0.0.1", port=int(config["serve"]["port"]), log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--baseline-max", type=int, default=10_000_000)
    parser.add_argument("--formats", nargs="+", default=["arrow", "csv", "parquet"])
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return
    work = Path(tempfile.mkdtemp(prefix="tidm-bench-serve-"))
    try:
        print(f"{'rows':>12} {'format':<8}{'server':<10}{'idle MB':>9}{'peak MB':>9}{'s':>8}{'Mrows/s':>9}")
        for rows in args.rows:
            lake = work / f"lake-{rows}"
            t = time.perf_counter()
            written = build(lake, rows)
            hours = -(-written // (3600 * HZ * len(SIGNALS)))
            end = DAY0 + dt.timedelta(hours=hours)
            print(f"# lake of {written:,} rows, {hours} objects, built in {time.perf_counter() - t:.0f} s")
            for fmt in args.formats if rows <= args.baseline_max else ["arrow"]:
                peaks = {}
                for kind in ("baseline", "current") if rows <= args.baseline_max else ("current",):
                    idle, peak, seconds = measure(kind, work, lake, fmt, end)
                    peaks[kind] = peak
                    print(
                        f"{written:>12,} {fmt:<8}{kind:<10}{idle / 2**20:>9.0f}{peak / 2**20:>9.0f}"
                        f"{seconds:>8.1f}{written / seconds / 1e6:>9.2f}"
                    )
                if "baseline" in peaks:
                    ratio = peaks["baseline"] / peaks["current"]
                    print(f"{'':>12} {fmt:<8}peak RSS baseline/current: {ratio:.1f}x")
            for kind in ("baseline", "current") if rows <= args.baseline_max else ("current",):
                idle, after, peak = abandoned(kind, work, lake, end)
                print(
                    f"{written:>12,} {'csv 64KB':<8}{kind:<10}{idle / 2**20:>9.0f}{peak / 2**20:>9.0f}"
                    f"   after the client left: {after / 2**20:.0f} MB"
                )
            shutil.rmtree(lake)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _ = os


if __name__ == "__main__":
    main()
