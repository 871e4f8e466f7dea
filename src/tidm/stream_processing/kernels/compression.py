"""Lossy compression that keeps the shape of a signal within a tolerance: deadband and swinging door.

Both return the indices of the samples to keep; dropped samples are not bad data, the step
wrappers route them out flagged COMPRESSED so that they stay counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidm.stream_processing.kernels._arrays import F64, I64, empty, f64, i64, offsets_for, same_length
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels._sdt_blocks import (
    PROBE,
    SHORT_RUN,
    SLACK_DIV,
    SPLIT_MIN,
    scalar_steps,
    scratch_size,
    sdt_blocks,
)
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["deadband", "swinging_door"]


@njit(nogil=True, cache=True)
def _deadband_kernel(ts: I64, values: F64, offsets: I64, d: float, max_interval_us: int, kept: I64) -> int:
    o = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b == a:
            continue
        kept[o] = a
        o += 1
        last = values[a]
        last_ts = ts[a]
        for i in range(a + 1, b):
            v = values[i]
            if np.isnan(v) or np.isnan(last):
                # Entering or leaving NaN is a change; a repeated NaN is not.
                emit = np.isnan(v) != np.isnan(last)
            else:
                emit = abs(v - last) > d
            if not emit and max_interval_us > 0 and ts[i] - last_ts >= max_interval_us:
                emit = True
            if emit:
                kept[o] = i
                o += 1
                last = v
                last_ts = ts[i]
    return o


def deadband(ts: Any, values: Any, *, d: float, max_interval_us: int = 0, offsets: Any = None) -> I64:
    """Indices of the samples to keep: the first of each segment, then each one differing by more
    than `d` from the last kept one (NaN <-> number counts as a change; with `max_interval_us` > 0
    also one at least that often).
    """
    if not d >= 0:
        msg = f"deadband: d must be ≥ 0, got {d}"
        raise KernelError(msg)
    t = i64(ts)
    v = f64(values)
    n = same_length("deadband", ts=t, values=v)
    off = offsets_for(offsets, n, where="deadband")
    # Only the pages of kept indices are ever touched: the capacity costs no memory traffic.
    kept = empty(n, np.int64)
    count = _deadband_kernel(t, v, off, float(d), int(max_interval_us), kept)
    return kept[:count]


@njit(nogil=True, cache=True)
def _swinging_door_kernel(ts: I64, values: F64, offsets: I64, e: float, kept: I64) -> int:
    """The plain one-pass form of `sdt_blocks` (same result): the reference its tests compare with."""
    o = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b == a:
            continue
        kept[o] = a
        o += 1
        _, _, _, _, o = scalar_steps(ts, values, e, a, a + 1, np.inf, -np.inf, b, kept, o, False)
        if kept[o - 1] != b - 1:
            kept[o] = b - 1
            o += 1
    return o


def swinging_door(ts: Any, values: Any, *, e: float, offsets: Any = None) -> I64:
    """Indices kept by swinging-door compression with deviation `e`: every dropped sample lies within
    `e` (up to rounding) of the straight line between the kept samples around it. First and last
    samples of each segment, non-finite values and their neighbours, and samples at non-increasing
    times are kept.
    """
    if not e >= 0:
        msg = f"swinging_door: e must be ≥ 0, got {e}"
        raise KernelError(msg)
    t = i64(ts)
    v = f64(values)
    n = same_length("swinging_door", ts=t, values=v)
    off = offsets_for(offsets, n, where="swinging_door")
    kept = empty(n, np.int64)
    # From the Arrow pool like `kept`: its pages come back warm from the last call.
    scratch = empty(scratch_size(off, SPLIT_MIN, SLACK_DIV), np.int64)
    stats = np.zeros(2, dtype=np.int64)
    count = sdt_blocks(t, v, off, float(e), kept, scratch, SPLIT_MIN, SLACK_DIV, PROBE, SHORT_RUN, stats)
    return kept[:count]
