"""Min/max downsampling for trend charts: per pixel bucket, the smallest and the largest sample, at
their own times and in time order, so every spike and dip the raw series has is still drawn.

A range of millions of samples becomes at most two points per bucket (a few thousand per signal),
computed in a few vectorised NumPy passes without per-row Python. Gaps stay visible: where two
consecutive kept points are farther apart than the gap limit, a NaN point is put between them,
which the chart draws as a break in the line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Trend", "downsample"]

_GAP_FACTOR = 3.0


@dataclass(frozen=True)
class Trend:
    """Points to draw (`ts_us` int64 microseconds, `value` float64, NaN = break) of `raw_points`."""

    ts_us: np.ndarray
    value: np.ndarray
    raw_points: int
    gaps: int

    @property
    def points(self) -> int:
        return int(self.ts_us.size)


def _first_per_segment(mask: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Index of the first True of `mask` in each (sorted, contiguous) segment id."""
    hits = np.flatnonzero(mask)
    ids = segment[hits]
    first = np.ones(hits.size, dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    out: np.ndarray = hits[first]
    return out


def downsample(
    ts_us: np.ndarray,
    value: np.ndarray,
    *,
    start_us: int,
    end_us: int,
    buckets: int,
    gap_us: int | None = None,
) -> Trend:
    """The min and max sample of each of `buckets` equal slices of [start_us, end_us).

    `ts_us` must be sorted; non-finite values are not drawn. `gap_us` (default: three times the
    median sampling interval) is the spacing beyond which the line breaks; below the width of two
    buckets a break could not be seen, so the limit never goes below that when downsampling.
    """
    if end_us <= start_us:
        msg = f"empty range: {start_us} is not before {end_us}"
        raise ValueError(msg)
    if buckets < 1:
        msg = f"buckets must be positive, not {buckets}"
        raise ValueError(msg)
    ts = np.ascontiguousarray(ts_us, dtype=np.int64)
    v = np.ascontiguousarray(value, dtype=np.float64)
    raw = int(ts.size)
    finite = np.isfinite(v)
    if not finite.all():
        ts, v = ts[finite], v[finite]
    if ts.size >= 2:
        if gap_us is None:
            step = float(np.median(np.diff(ts)))
            gap_us = max(1, int(_GAP_FACTOR * step))
    if ts.size > 2 * buckets:
        width = (end_us - start_us) / buckets
        bucket = np.clip(((ts - start_us) / width).astype(np.int64), 0, buckets - 1)
        starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
        counts = np.diff(np.append(starts, ts.size))
        segment = np.repeat(np.arange(starts.size), counts)
        lows = np.minimum.reduceat(v, starts)
        highs = np.maximum.reduceat(v, starts)
        at_low = _first_per_segment(v == lows[segment], segment)
        at_high = _first_per_segment(v == highs[segment], segment)
        order = np.stack((np.minimum(at_low, at_high), np.maximum(at_low, at_high)), axis=1).ravel()
        keep = np.ones(order.size, dtype=bool)
        keep[1:] = order[1:] != order[:-1]
        order = order[keep]
        ts, v = ts[order], v[order]
        if gap_us is not None:
            gap_us = max(gap_us, int(2 * width))
    gaps = 0
    if gap_us is not None and ts.size >= 2:
        breaks = np.flatnonzero(np.diff(ts) > gap_us) + 1
        gaps = int(breaks.size)
        if gaps:
            ts = np.insert(ts, breaks, ts[breaks - 1] + 1)
            v = np.insert(v, breaks, np.nan)
    return Trend(ts_us=ts, value=v, raw_points=raw, gaps=gaps)
