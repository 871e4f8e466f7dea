"""Range/validity and flatline (stuck sensor) checks: one pass per segment, results OR-ed into `flags`."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidm.stream_processing.kernels import _flags as fl
from tidm.stream_processing.kernels._arrays import (
    F64,
    I64,
    U32,
    f64,
    flags_or_zeros,
    i64,
    offsets_for,
    per_segment,
    same_length,
)
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["flatline_flags", "range_flags"]


@njit(nogil=True, cache=True)
def _range_kernel(values: F64, offsets: I64, lo: F64, hi: F64, flags: U32) -> None:
    for s in range(offsets.size - 1):
        low = lo[s]
        high = hi[s]
        # Per-segment slices and a branch-free body let LLVM vectorize the loop (indexing the whole
        # arrays between offsets loaded from memory does not). NaN fails every comparison.
        seg_v = values[offsets[s] : offsets[s + 1]]
        seg_f = flags[offsets[s] : offsets[s + 1]]
        for i in range(seg_v.size):
            v = seg_v[i]
            nan = v != v
            inf = abs(v) == np.inf
            out = ((v < low) | (v > high)) & ~inf
            seg_f[i] |= (
                (fl.NAN_VALUE * np.uint32(nan))
                | (fl.NOT_FINITE * np.uint32(inf))
                | (fl.OUT_OF_RANGE * np.uint32(out))
            )


def range_flags(
    values: Any,
    lo: Any = -np.inf,
    hi: Any = np.inf,
    *,
    offsets: Any = None,
    flags: Any = None,
) -> U32:
    """Flag NaN (NAN_VALUE), ±inf (NOT_FINITE) and finite values outside [lo, hi] (OUT_OF_RANGE).

    `lo`/`hi` are scalars or one per segment. `flags` (uint32) is updated in place when given.
    """
    v = f64(values)
    n = same_length("range_flags", values=v)
    off = offsets_for(offsets, n, where="range_flags")
    nseg = off.size - 1
    out = flags_or_zeros(flags, n, where="range_flags")
    _range_kernel(
        v,
        off,
        per_segment(lo, nseg, name="lo", where="range_flags"),
        per_segment(hi, nseg, name="hi", where="range_flags"),
        out,
    )
    return out


@njit(nogil=True, cache=True)
def _flatline_kernel(
    ts: I64, values: F64, offsets: I64, min_count: int, min_duration_us: int, tol: float, flags: U32
) -> None:
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b == a:
            continue
        start = a
        first = values[a]
        for i in range(a + 1, b + 1):
            # A run is a stretch of finite values within `tol` of its first value. One comparison does
            # it: it is False for NaN and, through inf - inf = NaN, for runs of inf.
            if i < b and abs(values[i] - first) <= tol:
                continue
            if (
                i - start >= min_count
                and np.isfinite(first)
                and (min_duration_us <= 0 or ts[i - 1] - ts[start] >= min_duration_us)
            ):
                for j in range(start, i):
                    flags[j] |= fl.FLATLINE
            start = i
            if i < b:
                first = values[i]


def flatline_flags(
    ts: Any,
    values: Any,
    *,
    min_count: int,
    min_duration_us: int = 0,
    tol: float = 0.0,
    offsets: Any = None,
    flags: Any = None,
) -> U32:
    """Flag FLATLINE on runs of ≥ `min_count` consecutive finite values within `tol` of the run's first
    value that, when `min_duration_us` > 0, also span that long (last ts - first ts). A window with zero
    variance is such a run (tol = 0). Runs are taken in array order; NaN/inf end them.
    """
    if min_count < 1:
        msg = f"flatline_flags: min_count must be ≥ 1, got {min_count}"
        raise KernelError(msg)
    if tol < 0:
        msg = f"flatline_flags: tol must be ≥ 0, got {tol}"
        raise KernelError(msg)
    t = i64(ts)
    v = f64(values)
    n = same_length("flatline_flags", ts=t, values=v)
    off = offsets_for(offsets, n, where="flatline_flags")
    out = flags_or_zeros(flags, n, where="flatline_flags")
    _flatline_kernel(t, v, off, int(min_count), int(min_duration_us), float(tol), out)
    return out
