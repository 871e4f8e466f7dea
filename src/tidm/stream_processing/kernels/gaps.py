"""Gap detection and filling: samples after a gap are flagged, rows are generated into the gap."""

from __future__ import annotations

from dataclasses import dataclass
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
    same_length,
)
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["FILL_METHODS", "Filled", "fill_gaps"]

FILL_METHODS = {"linear": 0, "previous": 1}


@njit(nogil=True, cache=True)
def _gap_rows(dt: int, gap_us: int, step_us: int, max_fill: int) -> int:
    if dt <= gap_us:
        return 0
    return min((dt - 1) // step_us, max_fill)


@njit(nogil=True, cache=True)
def _count_kernel(ts: I64, offsets: I64, gap_us: int, step_us: int, max_fill: int, out_offsets: I64) -> bool:
    total = 0
    out_offsets[0] = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        total += b - a
        for i in range(a + 1, b):
            dt = ts[i] - ts[i - 1]
            if dt < 0:
                return False
            total += _gap_rows(dt, gap_us, step_us, max_fill)
        out_offsets[s + 1] = total
    return True


@njit(nogil=True, cache=True)
def _fill_kernel(
    ts: I64,
    values: F64,
    flags: U32,
    offsets: I64,
    gap_us: int,
    step_us: int,
    max_fill: int,
    method: int,
    out_ts: I64,
    out_values: F64,
    out_flags: U32,
    source: I64,
) -> int:
    o = 0
    gaps = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        i = a
        while i < b:
            # Rows i..j-1 have no gap between them: copy them in bulk (per-run slices vectorize).
            j = i + 1
            while j < b and ts[j] - ts[j - 1] <= gap_us:
                j += 1
            n = j - i
            src_t = ts[i:j]
            src_v = values[i:j]
            src_f = flags[i:j]
            dst_t = out_ts[o : o + n]
            dst_v = out_values[o : o + n]
            dst_f = out_flags[o : o + n]
            dst_s = source[o : o + n]
            for k in range(n):
                dst_t[k] = src_t[k]
                dst_v[k] = src_v[k]
                dst_f[k] = src_f[k]
                dst_s[k] = i + k
            if i > a:
                dst_f[0] |= fl.GAP_BEFORE  # a run after the first starts after a gap
            o += n
            if j < b:
                gaps += 1
                t0 = ts[j - 1]
                t1 = ts[j]
                v0 = values[j - 1]
                v1 = values[j]
                for k in range(1, _gap_rows(t1 - t0, gap_us, step_us, max_fill) + 1):
                    t = t0 + k * step_us
                    out_ts[o] = t
                    if method == 0:
                        out_values[o] = v0 + (v1 - v0) * (float(t - t0) / float(t1 - t0))
                    else:
                        out_values[o] = v0
                    out_flags[o] = fl.GAP_FILLED
                    source[o] = -1
                    o += 1
            i = j
    return gaps


@dataclass(frozen=True)
class Filled:
    """Arrays after gap filling: generated rows have `source` -1 and flag GAP_FILLED."""

    ts: I64
    values: F64
    flags: U32
    source: I64  # index of the input row, -1 for a generated one
    offsets: I64
    gaps: int


def fill_gaps(
    ts: Any,
    values: Any,
    *,
    gap_us: int,
    step_us: int,
    max_fill: int,
    method: str = "linear",
    offsets: Any = None,
    flags: Any = None,
) -> Filled:
    """Find gaps (time since the previous sample > `gap_us`), flag the sample after each GAP_BEFORE,
    and generate up to `max_fill` rows per gap at previous ts + k·`step_us` (strictly before the next
    sample) with linearly interpolated or previous values. `max_fill` 0 only detects.
    """
    if method not in FILL_METHODS:
        msg = f"fill_gaps: method must be one of {sorted(FILL_METHODS)}, got {method!r}"
        raise KernelError(msg)
    if step_us <= 0 or gap_us < 0 or max_fill < 0:
        msg = f"fill_gaps: need step_us > 0, gap_us ≥ 0, max_fill ≥ 0 (got {step_us}, {gap_us}, {max_fill})"
        raise KernelError(msg)
    t = i64(ts)
    v = f64(values)
    n = same_length("fill_gaps", ts=t, values=v)
    off = offsets_for(offsets, n, where="fill_gaps")
    f = flags_or_zeros(flags, n, where="fill_gaps")
    out_off = np.empty(off.size, dtype=np.int64)
    if not _count_kernel(t, off, int(gap_us), int(step_us), int(max_fill), out_off):
        msg = "fill_gaps: timestamps are not sorted within segments (sort them first)"
        raise KernelError(msg)
    m = int(out_off[-1])
    out_ts = np.empty(m, dtype=np.int64)
    out_v = np.empty(m, dtype=np.float64)
    out_f = np.empty(m, dtype=np.uint32)
    source = np.empty(m, dtype=np.int64)
    gaps = _fill_kernel(
        t,
        v,
        f,
        off,
        int(gap_us),
        int(step_us),
        int(max_fill),
        FILL_METHODS[method],
        out_ts,
        out_v,
        out_f,
        source,
    )
    return Filled(out_ts, out_v, out_f, source, out_off, int(gaps))
