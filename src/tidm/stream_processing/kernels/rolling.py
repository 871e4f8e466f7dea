"""Rolling window statistics by count or by time, O(n): compensated running power sums for the moments,
a two-stack queue for min and max.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidm.stream_processing.kernels._arrays import F64, I64, empty, f64, i64, offsets_for, same_length
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError
from tidm.stream_processing.kernels.ordering import _is_sorted_kernel

__all__ = ["ROLLING_STATS", "rolling_stats"]

# Row order of the kernel's output. std/skew/kurt are the bias-corrected sample statistics (as pandas:
# std with ddof=1, adjusted Fisher-Pearson skewness, excess kurtosis); crest = max|x| / rms.
ROLLING_STATS = ("mean", "std", "min", "max", "rms", "skew", "kurt", "crest", "p2p", "count")

# Relative variance below which a window is treated as constant: skew/kurt NaN, std 0 (the power sums
# cancel to rounding noise there).
_FLAT = 1e-14

# Counts up to this get their factors from a table built once per call (bounded by the input's size).
_TABLE_MAX = 1 << 16


@njit(nogil=True, cache=True)
def _rolling_kernel(
    ts: I64,
    values: F64,
    offsets: I64,
    window_n: int,
    window_us: int,
    min_periods: int,
    out: F64,
    suf_max: F64,
    suf_min: F64,
) -> None:
    n_all = values.size
    # The factors that depend only on the window's count, by count: divisions and square roots bound
    # this loop's speed, and a window's count takes few distinct values.
    n_tab = min(n_all, _TABLE_MAX) + 1
    tab = np.empty((n_tab, 5), dtype=np.float64)
    for c in range(n_tab):
        _count_factors(c, tab[c])
    fac = np.empty(5, dtype=np.float64)
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        # Sums of y = x - shift (shift = the segment's first finite value, later the window mean) keep
        # the cancellation in the central moments small; Kahan compensation keeps add/remove drift down.
        shift = 0.0
        for i in range(a, b):
            if np.isfinite(values[i]):
                shift = values[i]
                break
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        c1 = 0.0
        c2 = 0.0
        c3 = 0.0
        c4 = 0.0
        cnt = 0
        since = 0
        # Min and max by a two-stack queue: the window [start, i] is a front part [start, m) whose
        # suffix extremes (suf_*) are computed when it forms, and a back part [m, i] with running
        # extremes. When the front runs empty, the whole window becomes the front: one backward pass
        # per window length, and no data-dependent loop per sample (a monotonic deque's pops mispredict).
        start = a
        m = a
        b_max = -np.inf
        b_min = np.inf
        for i in range(a, b):
            x = values[i]
            if np.isfinite(x):
                b_max = max(b_max, x)
                b_min = min(b_min, x)
                y = x - shift
                y2 = y * y
                t = y - c1
                u = s1 + t
                c1 = (u - s1) - t
                s1 = u
                t = y2 - c2
                u = s2 + t
                c2 = (u - s2) - t
                s2 = u
                t = y2 * y - c3
                u = s3 + t
                c3 = (u - s3) - t
                s3 = u
                t = y2 * y2 - c4
                u = s4 + t
                c4 = (u - s4) - t
                s4 = u
                cnt += 1
            if window_n > 0:
                new_start = max(a, i - window_n + 1)
            else:
                new_start = start
                limit = ts[i] - window_us
                while ts[new_start] <= limit:
                    new_start += 1
            while start < new_start:
                xo = values[start]
                if np.isfinite(xo):
                    y = xo - shift
                    y2 = y * y
                    t = -y - c1
                    u = s1 + t
                    c1 = (u - s1) - t
                    s1 = u
                    t = -y2 - c2
                    u = s2 + t
                    c2 = (u - s2) - t
                    s2 = u
                    t = -y2 * y - c3
                    u = s3 + t
                    c3 = (u - s3) - t
                    s3 = u
                    t = -y2 * y2 - c4
                    u = s4 + t
                    c4 = (u - s4) - t
                    s4 = u
                    cnt -= 1
                    if cnt == 0:
                        s1 = s2 = s3 = s4 = 0.0
                        c1 = c2 = c3 = c4 = 0.0
                start += 1
            since += 1
            if since >= 64 and since >= cnt and cnt > 0:
                # Re-centre on the window's mean and recompute its sums exactly: bounds the drift of
                # add/remove and the cancellation when the level moves far from the segment's start.
                shift = s1 / cnt + shift
                s1 = s2 = s3 = s4 = 0.0
                c1 = c2 = c3 = c4 = 0.0
                for j in range(start, i + 1):
                    xj = values[j]
                    if np.isfinite(xj):
                        y = xj - shift
                        y2 = y * y
                        s1 += y
                        s2 += y2
                        s3 += y2 * y
                        s4 += y2 * y2
                since = 0
            if start >= m:
                f_max = -np.inf
                f_min = np.inf
                for j in range(i, start - 1, -1):
                    xj = values[j]
                    if np.isfinite(xj):
                        f_max = max(f_max, xj)
                        f_min = min(f_min, xj)
                    suf_max[j] = f_max
                    suf_min[j] = f_min
                m = i + 1
                b_max = -np.inf
                b_min = np.inf
            out[9, i] = cnt
            if cnt < min_periods or cnt == 0:
                for r in range(9):
                    out[r, i] = np.nan
                continue
            if cnt < n_tab:
                f = tab[cnt]
            else:
                _count_factors(cnt, fac)
                f = fac
            inv_n = f[0]
            m1 = s1 * inv_n
            e2 = s2 * inv_n
            m2 = e2 - m1 * m1
            mean = m1 + shift
            mx = max(suf_max[start], b_max)
            mn = min(suf_min[start], b_min)
            out[0, i] = mean
            out[2, i] = mn
            out[3, i] = mx
            out[8, i] = mx - mn
            # m2² underflowing to 0 (|x| < 1e-154) would divide kurtosis by zero: treat as flat too.
            flat = m2 <= _FLAT * e2 or mx == mn or m2 * m2 == 0.0
            if flat:
                m2 = 0.0
            rms = np.sqrt(m2 + mean * mean)
            out[4, i] = rms
            out[7, i] = max(abs(mx), abs(mn)) / rms if rms > 0 else np.nan
            sd = np.sqrt(m2)
            out[1, i] = sd * f[1]  # NaN below 2 samples
            if flat or cnt < 3:
                out[5, i] = np.nan
                out[6, i] = np.nan
                continue
            e3 = s3 * inv_n
            m3 = e3 - 3.0 * m1 * e2 + 2.0 * m1 * m1 * m1
            inv_sd = 1.0 / sd
            inv_m2 = inv_sd * inv_sd
            out[5, i] = f[2] * m3 * inv_m2 * inv_sd
            if cnt < 4:
                out[6, i] = np.nan
            else:
                e4 = s4 * inv_n
                m4 = e4 - 4.0 * m1 * e3 + 6.0 * m1 * m1 * e2 - 3.0 * m1 * m1 * m1 * m1
                out[6, i] = f[3] * m4 * inv_m2 * inv_m2 - f[4]


@njit(nogil=True, cache=True)
def _count_factors(cnt: int, f: F64) -> None:
    """Into f: 1/n, the sample-std factor sqrt(n/(n-1)), the adjusted skewness factor
    sqrt(n(n-1))/(n-2), and the excess-kurtosis factors (n²-1)/((n-2)(n-3)) and 3(n-1)²/((n-2)(n-3))
    (NaN where the statistic needs more samples)."""
    dn = float(cnt)
    f[0] = 1.0 / dn if cnt > 0 else np.nan
    f[1] = np.sqrt(dn / (dn - 1.0)) if cnt >= 2 else np.nan
    f[2] = np.sqrt(dn * (dn - 1.0)) / (dn - 2.0) if cnt >= 3 else np.nan
    if cnt >= 4:
        d = (dn - 2.0) * (dn - 3.0)
        f[3] = (dn * dn - 1.0) / d
        f[4] = 3.0 * (dn - 1.0) * (dn - 1.0) / d
    else:
        f[3] = np.nan
        f[4] = np.nan


def rolling_stats(
    ts: Any,
    values: Any,
    *,
    window_n: int = 0,
    window_us: int = 0,
    min_periods: int = 1,
    offsets: Any = None,
) -> dict[str, F64]:
    """Rolling statistics ending at each sample (window: the last `window_n` rows, or the samples with
    ts in (t - `window_us`, t]); non-finite values are left out, and a window with fewer than
    `min_periods` of them gives NaN. Returns one float64 array per name in ROLLING_STATS (views of one
    contiguous (10, n) block). Time windows need time-sorted segments.
    """
    if (window_n > 0) == (window_us > 0):
        msg = (
            f"rolling_stats: give exactly one of window_n > 0 or window_us > 0 (got {window_n}, {window_us})"
        )
        raise KernelError(msg)
    if min_periods < 0:
        msg = f"rolling_stats: min_periods must be ≥ 0, got {min_periods}"
        raise KernelError(msg)
    v = f64(values)
    t = i64(ts) if ts is not None else np.zeros(v.size, dtype=np.int64)
    n = same_length("rolling_stats", ts=t, values=v)
    off = offsets_for(offsets, n, where="rolling_stats")
    if window_us > 0 and not _is_sorted_kernel(t, off):
        msg = "rolling_stats: time windows need timestamps sorted within segments (sort them first)"
        raise KernelError(msg)
    out = empty((len(ROLLING_STATS), n), np.float64)
    suf = empty((2, n), np.float64)  # scratch of the min/max queue
    _rolling_kernel(t, v, off, int(window_n), int(window_us), int(min_periods), out, suf[0], suf[1])
    return {name: out[r] for r, name in enumerate(ROLLING_STATS)}
