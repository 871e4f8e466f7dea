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
    empty,
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


_BLOCK = 1024


@njit(nogil=True, cache=True)
def _find_gaps_kernel(ts: I64, offsets: I64, gap_us: int, gaps: I64) -> int:
    """Into `gaps`: each index i whose time since the previous sample of its segment exceeds `gap_us`.
    Returns their number, or -1 when timestamps decrease within a segment. Blocks are screened by the
    largest and smallest step (a loop that vectorizes); only blocks with a gap are searched."""
    k = 0
    for s in range(offsets.size - 1):
        for lo in range(offsets[s] + 1, offsets[s + 1], _BLOCK):
            hi = min(lo + _BLOCK, offsets[s + 1])
            # A slice and indices from 0: no negative-index wraparound for the loop to vectorize around.
            block = ts[lo - 1 : hi]
            largest = block[1] - block[0]
            smallest = largest
            for i in range(1, hi - lo):
                dt = block[i + 1] - block[i]
                largest = max(largest, dt)
                smallest = min(smallest, dt)
            if smallest < 0:
                return -1
            if largest > gap_us:
                for i in range(lo, hi):
                    if ts[i] - ts[i - 1] > gap_us:
                        gaps[k] = i
                        k += 1
    return k


@njit(nogil=True, cache=True)
def _fill_kernel(
    ts: I64,
    values: F64,
    flags: U32,
    has_flags: bool,
    offsets: I64,
    gaps: I64,
    step_us: int,
    max_fill: int,
    method: int,
    out_ts: I64,
    out_values: F64,
    out_flags: U32,
    source: I64,
) -> None:
    o = 0
    g = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        i = a
        while i < b:
            # Rows i..j-1 have no gap between them: copy them in bulk (per-run slices vectorize).
            j = gaps[g] if g < gaps.size and gaps[g] < b else b
            n = j - i
            src_t = ts[i:j]
            src_v = values[i:j]
            dst_t = out_ts[o : o + n]
            dst_v = out_values[o : o + n]
            dst_f = out_flags[o : o + n]
            dst_s = source[o : o + n]
            for k in range(n):
                dst_t[k] = src_t[k]
                dst_v[k] = src_v[k]
                dst_s[k] = i + k
            if has_flags:
                src_f = flags[i:j]
                for k in range(n):
                    dst_f[k] = src_f[k]
            else:
                dst_f[:] = 0
            if i > a:
                dst_f[0] |= fl.GAP_BEFORE  # a run after the first starts after a gap
            o += n
            if j < b:
                g += 1
                t0 = ts[j - 1]
                t1 = ts[j]
                v0 = values[j - 1]
                v1 = values[j]
                rows = min((t1 - t0 - 1) // step_us, max_fill)
                for k in range(1, rows + 1):
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
    has_flags = flags is not None
    f = flags_or_zeros(flags, n, where="fill_gaps") if has_flags else np.zeros(1, dtype=np.uint32)
    found = empty(max(n - 1, 0), np.int64)
    count = _find_gaps_kernel(t, off, int(gap_us), found)
    if count < 0:
        msg = "fill_gaps: timestamps are not sorted within segments (sort them first)"
        raise KernelError(msg)
    gaps = found[:count]
    # Rows generated per gap; the output's segment offsets add those of the gaps before each boundary.
    rows = np.minimum((t[gaps] - t[gaps - 1] - 1) // int(step_us), int(max_fill))
    generated = np.concatenate(([0], np.cumsum(rows, dtype=np.int64)))
    out_off = off + generated[np.searchsorted(gaps, off, side="left")]
    m = int(out_off[-1])
    out_ts = empty(m, np.int64)
    out_v = empty(m, np.float64)
    out_f = empty(m, np.uint32)
    source = empty(m, np.int64)
    _fill_kernel(
        t,
        v,
        f,
        has_flags,
        off,
        gaps,
        int(step_us),
        int(max_fill),
        FILL_METHODS[method],
        out_ts,
        out_v,
        out_f,
        source,
    )
    return Filled(out_ts, out_v, out_f, source, out_off, int(count))
