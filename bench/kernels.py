"""Benchmark of the stream-processing kernels against NumPy, polars and pandas equivalents and against
a memcpy of the same bytes, all in one run.

    python bench/kernels.py [--quick] [--n N] [--repeat R]

ns/sample is the best of R runs. GB/s is the kernel's *input* bytes (timestamps/values/flags it reads)
per second; the memcpy row of each kernel copies exactly those input arrays with np.copyto into
preallocated buffers, the bandwidth bound for a single pass. "% memcpy" = memcpy time / kernel time.
Kernels that OR into a flags column update a preallocated one in place (as in a job, where the flags
column flows from step to step); the baselines allocate their outputs, as NumPy/polars/pandas do.
Targets (issue 6): single-pass kernels ≥ 50% of memcpy; rolling and despiking ≥ 2× the fastest of
NumPy/polars. Baselines compute the same result where a vectorized form exists; where they compute an
approximation that is the usual vectorized stand-in, the table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The entry point decides where Numba caches compiled kernels (the package never reads the env).
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from tidm.stream_processing import kernels as K  # noqa: E402
from tidm.stream_processing.steps import Flag  # noqa: E402


@dataclass
class Row:
    kernel: str
    impl: str
    seconds: float
    in_bytes: int
    n: int
    note: str = ""


def best_of(fn: Callable[[], Any], repeat: int, min_seconds: float = 0.5) -> float:
    """Best time of at least `repeat` runs, and of more while they add up to < `min_seconds` (fast
    functions get more tries: the machine is shared and the minimum is the least disturbed run)."""
    fn()  # warm-up: Numba loads from its cache (or compiles), pages of outputs get touched once
    best = float("inf")
    spent = 0.0
    runs = 0
    while runs < repeat or (spent < min_seconds and runs < 50):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return best


def memcpy(arrays: list[np.ndarray]) -> Callable[[], None]:
    dst = [np.empty_like(a) for a in arrays]

    def run() -> None:
        for d, a in zip(dst, arrays, strict=True):
            np.copyto(d, a)

    return run


def make_data(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    ts = np.arange(n, dtype=np.int64) * 1000 + rng.integers(0, 10, n)  # 1 kHz with jitter, µs
    ts[:: max(1, n // 1000)] += 5000  # some gaps
    ts = np.maximum.accumulate(ts)
    values = np.sin(np.arange(n) * 2 * np.pi / 500.0) * 10 + rng.normal(0, 0.5, n)
    values[rng.integers(0, n, n // 1000)] += 40.0  # spikes
    values[rng.integers(0, n, n // 1000)] = np.nan
    values[n // 3 : n // 3 + 500] = 3.0  # a stuck stretch
    arrival = ts.copy()
    swap = rng.integers(1, n, n // 1000)
    arrival[swap] = arrival[swap - 1] - 1  # late arrivals
    dup_ts = ts.copy()
    dup_ts[1::50] = dup_ts[0:-1:50]  # duplicates
    dup_ts = np.maximum.accumulate(dup_ts)
    return {
        "ts": ts,
        "values": values,
        "flags": np.zeros(n, dtype=np.uint32),
        "arrival": arrival,
        "dup_ts": dup_ts,
    }


# --- NumPy / polars / pandas equivalents ------------------------------------------------------------


def np_range(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    flags = np.zeros(v.size, dtype=np.uint32)
    nan = np.isnan(v)
    inf = np.isinf(v)
    flags[nan] |= np.uint32(Flag.NAN_VALUE)
    flags[inf] |= np.uint32(Flag.NOT_FINITE)
    with np.errstate(invalid="ignore"):
        flags[~nan & ~inf & ((v < lo) | (v > hi))] |= np.uint32(Flag.OUT_OF_RANGE)
    return flags


def np_flatline(v: np.ndarray, min_count: int) -> np.ndarray:
    new = np.empty(v.size, dtype=bool)
    new[0] = True
    new[1:] = v[1:] != v[:-1]
    run = np.cumsum(new) - 1
    length = np.bincount(run)
    return (length[run] >= min_count) & np.isfinite(v)


def np_gap_fill(
    ts: np.ndarray, v: np.ndarray, gap: int, step: int, max_fill: int
) -> tuple[np.ndarray, np.ndarray]:
    dt = np.diff(ts)
    extra = np.where(dt > gap, np.minimum((dt - 1) // step, max_fill), 0)
    reps = np.concatenate(([1], extra + 1))
    out_idx = np.repeat(np.arange(ts.size), reps)
    k = np.arange(out_idx.size) - np.repeat(np.cumsum(reps) - reps, reps)  # 0 for real, 1.. for filled
    # Filled rows precede real row i: they are (i-1) + k·step, real rows are k = 0 of their group.
    starts = np.cumsum(reps) - reps
    real = np.zeros(out_idx.size, dtype=bool)
    real[starts + reps - 1] = True
    prev = np.maximum(out_idx - 1, 0)
    kk = k + 1
    out_ts = np.where(real, ts[out_idx], ts[prev] + kk * step)
    frac = (out_ts - ts[prev]) / np.maximum(ts[out_idx] - ts[prev], 1)
    out_v = np.where(real, v[out_idx], v[prev] + (v[out_idx] - v[prev]) * frac)
    return out_ts, out_v


def np_resample_mean(ts: np.ndarray, v: np.ndarray, step: int) -> np.ndarray:
    b = ts // step
    b -= b[0]
    ok = ~np.isnan(v)
    s = np.bincount(b[ok], weights=v[ok], minlength=int(b[-1]) + 1)
    c = np.bincount(b[ok], minlength=int(b[-1]) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / c


def np_rolling(v: np.ndarray, w: int) -> dict[str, np.ndarray]:
    """O(n) prefix sums of powers for the moments (numerically the crude version), chunked sliding
    windows for min/max."""
    x = np.nan_to_num(v)
    c = [np.concatenate(([0.0], np.cumsum(x**p))) for p in (1, 2, 3, 4)]
    s = [ci[w:] - ci[:-w] for ci in c]
    n = float(w)
    m1, e2, e3, e4 = (si / n for si in s)
    var = e2 - m1 * m1
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = (e3 - 3 * m1 * e2 + 2 * m1**3) / var**1.5
        kurt = (e4 - 4 * m1 * e3 + 6 * m1**2 * e2 - 3 * m1**4) / var**2 - 3
        mn = np.concatenate(
            [
                sliding_window_view(x[i : i + 1_000_000 + w - 1], w).min(axis=1)
                for i in range(0, x.size - w + 1, 1_000_000)
            ]
        )
        mx = np.concatenate(
            [
                sliding_window_view(x[i : i + 1_000_000 + w - 1], w).max(axis=1)
                for i in range(0, x.size - w + 1, 1_000_000)
            ]
        )
        rms = np.sqrt(e2)
        crest = np.maximum(np.abs(mn), np.abs(mx)) / rms
    return {
        "mean": m1,
        "std": np.sqrt(var * n / (n - 1)),
        "skew": skew,
        "kurt": kurt,
        "min": mn,
        "max": mx,
        "rms": rms,
        "crest": crest,
        "p2p": mx - mn,
    }


def pl_rolling_exprs(w: int) -> list[pl.Expr]:
    x = pl.col("v")
    mn = x.rolling_min(w)
    mx = x.rolling_max(w)
    rms = (x * x).rolling_mean(w).sqrt()
    return [
        x.rolling_mean(w).alias("mean"),
        x.rolling_std(w).alias("std"),
        mn.alias("min"),
        mx.alias("max"),
        rms.alias("rms"),
        x.rolling_skew(w).alias("skew"),
        x.rolling_kurtosis(w).alias("kurt"),
        (pl.max_horizontal(mn.abs(), mx.abs()) / rms).alias("crest"),
        (mx - mn).alias("p2p"),
    ]


def pd_rolling(s: pd.Series, w: int | str) -> list[pd.Series]:
    r = s.rolling(w)
    mn, mx = r.min(), r.max()
    rms = np.sqrt((s * s).rolling(w).mean())
    return [r.mean(), r.std(), mn, mx, rms, r.skew(), r.kurt(), np.maximum(mn.abs(), mx.abs()) / rms, mx - mn]


def np_hampel(v: np.ndarray, k: int, n_sigmas: float) -> np.ndarray:
    """Exact Hampel with np.median over sliding windows (chunked to bound memory)."""
    w = 2 * k + 1
    padded = np.concatenate((np.full(k, np.nan), v, np.full(k, np.nan)))
    out = np.empty(v.size, dtype=bool)
    chunk = 200_000
    for i in range(0, v.size, chunk):
        win = sliding_window_view(padded[i : i + chunk + w - 1], w)
        med = np.nanmedian(win, axis=1)
        mad = np.nanmedian(np.abs(win - med[:, None]), axis=1)
        x = v[i : i + chunk]
        with np.errstate(invalid="ignore"):
            out[i : i + chunk] = np.abs(x - med) > n_sigmas * K.MAD_SCALE * mad
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1M samples, 2 repeats")
    parser.add_argument("--n", type=int, default=None, help="samples (default 10M, 1M with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="best of R runs (default 3, 2 with --quick)")
    parser.add_argument(
        "--only", default="", help="comma-separated kernel name prefixes to measure (default: all)"
    )
    args = parser.parse_args()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    n = args.n or (1_000_000 if args.quick else 10_000_000)
    repeat = args.repeat or (2 if args.quick else 3)
    d = make_data(n)
    ts, v, flags, arrival, dup_ts = d["ts"], d["values"], d["flags"], d["arrival"], d["dup_ts"]
    df_pl = pl.DataFrame({"ts": ts, "v": v, "arrival": arrival, "dup": dup_ts})
    s_pd = pd.Series(v)
    s_pd_time = pd.Series(v, index=pd.to_datetime(ts, unit="us"))
    rows: list[Row] = []

    def bench(
        kernel: str,
        inputs: list[np.ndarray],
        impls: dict[str, Callable[[], Any]],
        notes: dict[str, str] | None = None,
    ) -> None:
        if only and not kernel.startswith(only):
            return
        in_bytes = sum(a.nbytes for a in inputs)
        rows.append(Row(kernel, "memcpy", best_of(memcpy(inputs), repeat), in_bytes, n))
        for impl, fn in impls.items():
            rows.append(Row(kernel, impl, best_of(fn, repeat), in_bytes, n, (notes or {}).get(impl, "")))
        print(f"  measured {kernel}", file=sys.stderr, flush=True)

    lo, hi = -12.0, 12.0
    si_out = np.empty_like(v)
    bench(
        "range/validity",
        [v, flags],
        {
            "kernel": lambda: K.range_flags(v, lo, hi, flags=flags),
            "numpy": lambda: np_range(v, lo, hi),
            "polars": lambda: df_pl.select(
                pl.when(pl.col("v").is_nan())
                .then(2)
                .when(pl.col("v").is_infinite())
                .then(8)
                .when((pl.col("v") < lo) | (pl.col("v") > hi))
                .then(4)
                .otherwise(0)
                .cast(pl.UInt32)
            ),
            "pandas": lambda: np.where(
                s_pd.isna(), 2, np.where(np.isinf(s_pd), 8, np.where((s_pd < lo) | (s_pd > hi), 4, 0))
            ),
        },
    )
    bench(
        "flatline",
        [ts, v],
        {
            "kernel": lambda: K.flatline_flags(ts, v, min_count=50, flags=flags),
            "numpy": lambda: np_flatline(v, 50),
            "polars": lambda: df_pl.select(
                ((pl.len().over(pl.col("v").rle_id()) >= 50) & pl.col("v").is_finite()).alias("f")
            ),
            "pandas": lambda: s_pd.groupby((s_pd != s_pd.shift()).cumsum()).transform("size") >= 50,
        },
    )
    bench(
        "deadband",
        [ts, v],
        {"kernel": lambda: K.deadband(ts, v, d=1.5)},
        {"kernel": "d = 3 sigma of the noise; sequential: no vectorized equivalent"},
    )
    bench(
        "swinging_door",
        [ts, v],
        {"kernel": lambda: K.swinging_door(ts, v, e=1.5)},
        {"kernel": "e = 3 sigma of the noise; sequential: no vectorized equivalent"},
    )
    bench(
        "duplicates",
        [dup_ts],
        {
            "kernel": lambda: K.duplicate_flags(dup_ts, flags=flags),
            "numpy": lambda: np.concatenate((dup_ts[1:] == dup_ts[:-1], [False])),
            "polars": lambda: df_pl.select(~pl.col("dup").is_last_distinct()),
            "pandas": lambda: pd.Series(dup_ts).duplicated(keep="last"),
        },
    )
    bench(
        "out_of_order",
        [arrival],
        {
            "kernel": lambda: K.out_of_order_flags(arrival, flags=flags),
            "numpy": lambda: arrival[1:] < np.maximum.accumulate(arrival)[:-1],
            "polars": lambda: df_pl.select(pl.col("arrival") < pl.col("arrival").cum_max().shift(1)),
            "pandas": lambda: pd.Series(arrival) < pd.Series(arrival).cummax().shift(1),
        },
    )
    bench(
        "gap_fill",
        [ts, v],
        {
            "kernel": lambda: K.fill_gaps(ts, v, gap_us=2000, step_us=1000, max_fill=10),
            "numpy": lambda: np_gap_fill(ts, v, 2000, 1000, 10),
        },
    )
    bench(
        "resample_mean",
        [ts, v],
        {
            "kernel": lambda: K.resample(ts, v, step_us=100_000, method="mean"),
            "numpy": lambda: np_resample_mean(ts, v, 100_000),
            "polars": lambda: df_pl.group_by((pl.col("ts") // 100_000).alias("b")).agg(
                pl.col("v").fill_nan(None).mean()
            ),
            "pandas": lambda: s_pd_time.resample("100ms").mean(),
        },
    )
    bench(
        "to_si",
        [v, flags],
        {
            "kernel": lambda: K.convert(v, 1.0, 273.15, flags=flags, out=si_out),
            "numpy": lambda: v * 1.0 + 273.15,
            "polars": lambda: df_pl.select(pl.col("v") * 1.0 + 273.15),
            "pandas": lambda: s_pd * 1.0 + 273.15,
        },
    )
    w = 100
    bench(
        "rolling_count(100)",
        [v],
        {
            "kernel": lambda: K.rolling_stats(None, v, window_n=w),
            "numpy": lambda: np_rolling(v, w),
            "polars": lambda: df_pl.select(pl_rolling_exprs(w)),
            "pandas": lambda: pd_rolling(s_pd, w),
        },
        {"numpy": "prefix sums (crude numerics) + sliding min/max"},
    )
    bench(
        "rolling_time(100ms)",
        [ts, v],
        {
            "kernel": lambda: K.rolling_stats(ts, v, window_us=100_000),
            "polars": lambda: pl.DataFrame({"ts": pl.Series(ts).cast(pl.Datetime("us")), "v": v}).select(
                [
                    getattr(pl.col("v"), f"rolling_{f}_by")("ts", window_size="100ms").alias(f)
                    for f in ("mean", "std", "min", "max")
                ]
                + [(pl.col("v") ** 2).rolling_mean_by("ts", window_size="100ms").sqrt().alias("rms")]
            ),
            "pandas": lambda: pd_rolling(s_pd_time, "100ms"),
        },
        {"polars": "mean/std/min/max/rms only (no skew/kurt _by)"},
    )
    k = 10
    nh = min(n, 2_000_000)  # the exact NumPy median is O(n·k·log k) and memory hungry: measured on a prefix
    vh = v[:nh]
    df_h = pl.DataFrame({"v": vh})
    bench_n = n
    n = nh
    bench(
        f"despike_hampel(k={k})",
        [vh],
        {
            "kernel": lambda: K.hampel(vh, k=k, n_sigmas=3.0),
            "numpy": lambda: np_hampel(vh, k, 3.0),
            "polars": lambda: df_h.select(
                (
                    (pl.col("v") - pl.col("v").rolling_median(2 * k + 1, center=True)).abs()
                    > 3.0
                    * K.MAD_SCALE
                    * (pl.col("v") - pl.col("v").rolling_median(2 * k + 1, center=True))
                    .abs()
                    .rolling_median(2 * k + 1, center=True)
                ).alias("spike")
            ),
            "pandas": lambda: (
                (pd.Series(vh) - pd.Series(vh).rolling(2 * k + 1, center=True).median())
                .abs()
                .rolling(2 * k + 1, center=True)
                .median()
            ),
        },
        {"polars": "approx. MAD (median of |x - rolling median|)", "pandas": "approx. MAD, as polars"},
    )
    n = bench_n
    m = 1024
    starts = K.window_starts(np.array([0, n]), m)
    bands = [(0.0, 50.0), (50.0, 150.0), (150.0, 500.0)]

    def np_spectral() -> Any:
        frames = v[: starts.size * m].reshape(-1, m)
        frames = np.nan_to_num(frames - np.nanmean(frames, axis=1, keepdims=True)) * np.hanning(m + 1)[:-1]
        p = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        f = np.fft.rfftfreq(m, 1e-3)
        return [p[:, (f >= a) & (f < b)].sum(axis=1) for a, b in bands], f[1:][np.argmax(p[:, 1:], axis=1)]

    bench(
        f"spectral(m={m})",
        [v],
        {"kernel": lambda: K.spectral_features(v, starts, m=m, fs=1000.0, bands=bands), "numpy": np_spectral},
        {"kernel": "NumPy rfft inside; taper and band sums in Numba"},
    )
    report(rows)


SINGLE_PASS = {
    "range/validity",
    "flatline",
    "deadband",
    "swinging_door",
    "duplicates",
    "out_of_order",
    "gap_fill",
    "resample_mean",
    "to_si",
}
VS_BASELINES = ("rolling", "despike")


def report(rows: list[Row]) -> None:
    print(
        f"\n{'kernel':<22} {'impl':<8} {'ns/sample':>10} {'GB/s':>7} {'% memcpy':>9} {'vs kernel':>10}  note"
    )
    verdicts: list[str] = []
    by_kernel: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_kernel.setdefault(r.kernel, {})[r.impl] = r
    for kernel, impls in by_kernel.items():
        mc = impls["memcpy"]
        kr = impls["kernel"]
        for impl, r in impls.items():
            ns = r.seconds / r.n * 1e9
            gbs = r.in_bytes / r.seconds / 1e9
            pct = mc.seconds / r.seconds * 100
            speedup = r.seconds / kr.seconds
            print(f"{kernel:<22} {impl:<8} {ns:>10.2f} {gbs:>7.2f} {pct:>8.0f}% {speedup:>9.2f}x  {r.note}")
        if kernel in SINGLE_PASS:
            pct = mc.seconds / kr.seconds * 100
            verdicts.append(
                f"{kernel}: {pct:.0f}% of memcpy (target ≥ 50%): {'MET' if pct >= 50 else 'NOT met'}"
            )
        if kernel.startswith(VS_BASELINES):
            base = {i: r for i, r in impls.items() if i in ("numpy", "polars")}
            if base:
                fastest = min(base.values(), key=lambda r: r.seconds)
                ratio = fastest.seconds / kr.seconds
                verdicts.append(
                    f"{kernel}: {ratio:.2f}x the fastest of NumPy/polars ({fastest.impl}) (target ≥ 2x): "
                    f"{'MET' if ratio >= 2 else 'NOT met'}"
                )
        print()
    print("Targets:")
    for line in verdicts:
        print("  " + line)


if __name__ == "__main__":
    main()
