"""Resampling to a fixed time grid: one row per bucket [origin + k·step, origin + (k+1)·step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tidm.stream_processing.kernels._arrays import F64, I64, empty, f64, i64, offsets_for, same_length
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["RESAMPLE_METHODS", "Resampled", "resample"]

RESAMPLE_METHODS = {"mean": 0, "first": 1, "last": 2, "min": 3, "max": 4, "sum": 5, "linear": 6}

# Segments with more buckets than this are refused: a stray timestamp must not allocate terabytes.
MAX_BUCKETS = 1 << 31


@njit(nogil=True, cache=True)
def _count_kernel(ts: I64, offsets: I64, step_us: int, origin_us: int, out_offsets: I64) -> bool:
    out_offsets[0] = 0
    total = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b > a:
            if ts[b - 1] < ts[a]:
                return False
            total += (ts[b - 1] - origin_us) // step_us - (ts[a] - origin_us) // step_us + 1
        out_offsets[s + 1] = total
    return True


@njit(nogil=True, cache=True)
def _flush(out_values: F64, out_count: I64, o: int, acc: float, c: int, method: int) -> None:
    if c > 0:
        out_values[o] = acc / c if method == 0 else acc
        out_count[o] = c


@njit(nogil=True, cache=True)
def _resample_kernel(
    ts: I64,
    values: F64,
    offsets: I64,
    step_us: int,
    origin_us: int,
    method: int,
    out_offsets: I64,
    out_ts: I64,
    out_values: F64,
    out_count: I64,
) -> bool:
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        o0 = out_offsets[s]
        if b == a:
            continue
        k0 = (ts[a] - origin_us) // step_us
        for o in range(o0, out_offsets[s + 1]):
            out_ts[o] = origin_us + (k0 + o - o0) * step_us
            out_count[o] = 0
            out_values[o] = np.nan
        if method == 6:
            # Value at each bucket start, interpolated between the finite samples around it.
            j = a  # the first finite sample at or after the grid point
            prev = -1  # the last finite sample before j
            for o in range(o0, out_offsets[s + 1]):
                g = out_ts[o]
                while j < b and (ts[j] < g or not np.isfinite(values[j])):
                    if np.isfinite(values[j]):
                        prev = j
                    j += 1
                if j < b and ts[j] == g:
                    out_values[o] = values[j]
                elif j < b and prev >= 0:
                    t0 = ts[prev]
                    out_values[o] = values[prev] + (values[j] - values[prev]) * (
                        float(g - t0) / float(ts[j] - t0)
                    )
            for i in range(a, b):
                if i > a and ts[i] < ts[i - 1]:
                    return False
                o = o0 + (ts[i] - origin_us) // step_us - k0
                if o >= out_offsets[s + 1]:
                    return False
                if not np.isnan(values[i]):
                    out_count[o] += 1
            continue
        # Walk the buckets along with the sorted samples instead of dividing each timestamp, and keep
        # the bucket's accumulator in registers until the bucket ends.
        o = o0
        o_end = out_offsets[s + 1]
        bucket_end = out_ts[o0] + step_us
        seg_t = ts[a:b]
        seg_v = values[a:b]
        acc = np.nan
        c = 0
        prev = seg_t[0]
        for i in range(b - a):
            t = seg_t[i]
            if t < prev:
                return False
            prev = t
            if t >= bucket_end:
                _flush(out_values, out_count, o, acc, c, method)
                acc = np.nan
                c = 0
                while t >= bucket_end:
                    o += 1
                    bucket_end += step_us
                if o >= o_end:
                    return False
            v = seg_v[i]
            if v != v:
                continue
            if c == 0:
                acc = v
            elif method == 0 or method == 5:
                acc += v
            elif method == 2:
                acc = v
            elif method == 3:
                acc = min(acc, v)
            elif method == 4:
                acc = max(acc, v)
            c += 1
        _flush(out_values, out_count, o, acc, c, method)
        if method == 5:
            for o in range(o0, o_end):
                if out_count[o] == 0:
                    out_values[o] = 0.0
    return True


@dataclass(frozen=True)
class Resampled:
    """One row per bucket from each segment's first to its last bucket; `count` = non-NaN samples."""

    ts: I64  # bucket start
    values: F64
    count: I64
    offsets: I64


def resample(
    ts: Any,
    values: Any,
    *,
    step_us: int,
    method: str = "mean",
    origin_us: int = 0,
    offsets: Any = None,
) -> Resampled:
    """Aggregate each segment onto the grid origin + k·step (buckets closed left, labelled by start).

    mean/first/last/min/max/sum skip NaN (an empty bucket is NaN, sum 0); linear is the value at the
    bucket start interpolated between the finite samples around it (NaN outside them; expects unique
    timestamps). Segments must be sorted by time.
    """
    if method not in RESAMPLE_METHODS:
        msg = f"resample: method must be one of {sorted(RESAMPLE_METHODS)}, got {method!r}"
        raise KernelError(msg)
    if step_us <= 0:
        msg = f"resample: step_us must be > 0, got {step_us}"
        raise KernelError(msg)
    t = i64(ts)
    v = f64(values)
    n = same_length("resample", ts=t, values=v)
    off = offsets_for(offsets, n, where="resample")
    out_off = np.empty(off.size, dtype=np.int64)
    if not _count_kernel(t, off, int(step_us), int(origin_us), out_off):
        msg = "resample: timestamps are not sorted within segments (sort them first)"
        raise KernelError(msg)
    m = int(out_off[-1])
    if m > MAX_BUCKETS:
        msg = f"resample: {m} buckets of {step_us} µs requested; a segment spans too long a time"
        raise KernelError(msg)
    out_ts = empty(m, np.int64)
    out_v = empty(m, np.float64)
    out_c = empty(m, np.int64)
    if not _resample_kernel(
        t, v, off, int(step_us), int(origin_us), RESAMPLE_METHODS[method], out_off, out_ts, out_v, out_c
    ):
        msg = "resample: timestamps are not sorted within segments (sort them first)"
        raise KernelError(msg)
    return Resampled(out_ts, out_v, out_c, out_off)
