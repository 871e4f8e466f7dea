"""Shared data for the kernel tests (no tests here): hypothesis strategies for segmented arrays.

Segments hold NaN, ±inf, runs of equal values, duplicate and unsorted timestamps; empty and
single-sample segments come up often because lengths start at 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# Numba compiles (or loads from the cache) on the first example: no per-example deadline.
KERNEL_SETTINGS = settings(max_examples=150, deadline=None)

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, 1.0, 1.0, 2.5, -3.0]


@dataclass(frozen=True)
class Data:
    ts: np.ndarray  # int64 µs
    values: np.ndarray  # float64
    offsets: np.ndarray  # int64, len = segments + 1

    def __repr__(self) -> str:  # hypothesis prints failing examples with it
        return f"Data(ts={self.ts.tolist()}, values={self.values.tolist()}, offsets={self.offsets.tolist()})"

    def segments(self) -> Iterator[tuple[int, int]]:
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            yield int(a), int(b)


def values_strategy(*, finite: bool = False, nan: bool = True) -> st.SearchStrategy[float]:
    special = [v for v in SPECIAL if (not finite or math.isfinite(v) or (nan and math.isnan(v)))]
    if not nan:
        special = [v for v in special if not math.isnan(v)]
    return st.one_of(
        st.sampled_from(special),
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
        st.integers(-5, 5).map(float),
    )


@st.composite
def segmented(
    draw: st.DrawFn,
    *,
    ts_max: int = 60,
    order: str = "any",  # "any" | "sorted" | "unique" (strictly increasing)
    finite: bool = False,
    nan: bool = True,
    max_segments: int = 4,
    max_len: int = 30,
) -> Data:
    nseg = draw(st.integers(0, max_segments))
    ts_parts: list[np.ndarray] = []
    v_parts: list[np.ndarray] = []
    lengths = [0]
    for _ in range(nseg):
        if order == "unique":
            ts = sorted(draw(st.sets(st.integers(0, ts_max), max_size=max_len)))
            n = len(ts)
        else:
            n = draw(st.integers(0, max_len))
            ts = draw(st.lists(st.integers(0, ts_max), min_size=n, max_size=n))
            if order == "sorted":
                ts.sort()
        vals = draw(st.lists(values_strategy(finite=finite, nan=nan), min_size=n, max_size=n))
        ts_parts.append(np.array(ts, dtype=np.int64))
        v_parts.append(np.array(vals, dtype=np.float64))
        lengths.append(n)
    ts_all = np.concatenate(ts_parts) if ts_parts else np.zeros(0, dtype=np.int64)
    v_all = np.concatenate(v_parts) if v_parts else np.zeros(0, dtype=np.float64)
    return Data(ts_all.astype(np.int64), v_all, np.cumsum(lengths).astype(np.int64))
