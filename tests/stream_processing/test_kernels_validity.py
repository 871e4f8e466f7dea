"""Range/validity and flatline kernels against NumPy/pandas references (exact: no arithmetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import KernelError, flatline_flags, range_flags
from tidm.stream_processing.steps import Flag


def _ref_range(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    lo_row = np.repeat(lo, np.diff(offsets))
    hi_row = np.repeat(hi, np.diff(offsets))
    out = np.zeros(values.size, dtype=np.uint32)
    out[np.isnan(values)] |= np.uint32(Flag.NAN_VALUE)
    out[np.isinf(values)] |= np.uint32(Flag.NOT_FINITE)
    finite = np.isfinite(values)
    out[finite & ((values < lo_row) | (values > hi_row))] |= np.uint32(Flag.OUT_OF_RANGE)
    return out


@KERNEL_SETTINGS
@given(
    data=segmented(),
    bounds=st.lists(st.tuples(st.integers(-4, 0), st.integers(0, 4)), min_size=4, max_size=4),
)
def test_range_flags_match_numpy(data: Data, bounds: list[tuple[int, int]]) -> None:
    nseg = data.offsets.size - 1
    lo = np.array([b[0] for b in bounds[:nseg]], dtype=np.float64)
    hi = np.array([b[1] for b in bounds[:nseg]], dtype=np.float64)
    got = range_flags(data.values, lo, hi, offsets=data.offsets)
    assert np.array_equal(got, _ref_range(data.values, lo, hi, data.offsets))


def test_range_flags_or_into_existing_flags_in_place() -> None:
    flags = np.array([Flag.BAD_QUALITY, 0], dtype=np.uint32)
    out = range_flags([5.0, 1.0], 0.0, 2.0, flags=flags)
    assert out is flags
    assert flags.tolist() == [Flag.BAD_QUALITY | Flag.OUT_OF_RANGE, 0]


def _ref_flatline_exact(data: Data, min_count: int, min_duration_us: int) -> np.ndarray:
    """tol = 0 with pandas: a run is a group of consecutive equal finite values."""
    out = np.zeros(data.values.size, dtype=np.uint32)
    for a, b in data.segments():
        v = pd.Series(data.values[a:b])
        t = pd.Series(data.ts[a:b])
        finite = np.isfinite(v)
        new_run = (v != v.shift()) | ~finite | ~finite.shift(fill_value=False)
        run = new_run.cumsum()
        size = v.groupby(run).transform("size")
        span = t.groupby(run).transform("last") - t.groupby(run).transform("first")
        hit = finite & (size >= min_count) & (span >= min_duration_us)
        out[a:b][hit.to_numpy()] = np.uint32(Flag.FLATLINE)
    return out


def _ref_flatline_tol(data: Data, min_count: int, tol: float) -> np.ndarray:
    """Runs within `tol` of their first value, walked one value at a time."""
    out = np.zeros(data.values.size, dtype=np.uint32)
    for a, b in data.segments():
        v = data.values[a:b]
        i = 0
        while i < len(v):
            j = i + 1
            if np.isfinite(v[i]):
                while j < len(v) and np.isfinite(v[j]) and abs(v[j] - v[i]) <= tol:
                    j += 1
                if j - i >= min_count:
                    out[a + i : a + j] = np.uint32(Flag.FLATLINE)
            i = j
    return out


@KERNEL_SETTINGS
@given(data=segmented(order="sorted"), min_count=st.integers(1, 5), min_duration=st.integers(0, 10))
def test_flatline_exact_runs_match_pandas(data: Data, min_count: int, min_duration: int) -> None:
    got = flatline_flags(
        data.ts, data.values, min_count=min_count, min_duration_us=min_duration, offsets=data.offsets
    )
    assert np.array_equal(got, _ref_flatline_exact(data, min_count, min_duration))


@KERNEL_SETTINGS
@given(data=segmented(), min_count=st.integers(1, 5), tol=st.sampled_from([0.0, 0.5, 2.0]))
def test_flatline_with_tolerance_matches_loop(data: Data, min_count: int, tol: float) -> None:
    got = flatline_flags(data.ts, data.values, min_count=min_count, tol=tol, offsets=data.offsets)
    assert np.array_equal(got, _ref_flatline_tol(data, min_count, tol))


def test_bad_parameters_name_the_kernel() -> None:
    with pytest.raises(KernelError, match="flatline_flags: min_count"):
        flatline_flags([0], [1.0], min_count=0)
    with pytest.raises(KernelError, match="range_flags: offsets"):
        range_flags([1.0, 2.0], offsets=[0, 1])
    with pytest.raises(KernelError, match="range_flags: lo has 3 values for 1 segments"):
        range_flags([1.0], [0.0, 0.0, 0.0])
