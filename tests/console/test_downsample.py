"""Min/max downsampling: every bucket's extremes survive, at their own times, in time order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidm.console.downsample import downsample


def _reference(
    ts: np.ndarray, v: np.ndarray, start: int, end: int, buckets: int
) -> list[tuple[float, float]]:
    """Row-at-a-time: per non-empty bucket, its min and max values."""
    width = (end - start) / buckets
    out: dict[int, list[float]] = {}
    for t, x in zip(ts.tolist(), v.tolist(), strict=True):
        b = min(buckets - 1, max(0, int((t - start) / width)))
        out.setdefault(b, []).append(x)
    return [(min(xs), max(xs)) for _, xs in sorted(out.items())]


def test_a_million_points_become_two_per_bucket_and_keep_the_spike() -> None:
    n = 1_000_000
    ts = np.arange(n, dtype=np.int64) * 1000
    v = np.sin(np.arange(n) / 5000.0)
    v[123_457] = 50.0  # one spike in a million must still be drawn
    v[765_431] = -50.0
    trend = downsample(ts, v, start_us=0, end_us=n * 1000, buckets=1000)
    assert trend.raw_points == n
    assert trend.points <= 2000
    assert trend.gaps == 0
    assert 50.0 in trend.value and -50.0 in trend.value
    assert int(trend.ts_us[np.flatnonzero(trend.value == 50.0)[0]]) == 123_457_000
    assert np.all(np.diff(trend.ts_us) > 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 9_999), min_size=1, max_size=400, unique=True),
    st.integers(1, 40),
    st.integers(0, 2**31),
)
def test_same_extremes_as_the_row_at_a_time_reference(times: list[int], buckets: int, seed: int) -> None:
    ts = np.array(sorted(times), dtype=np.int64)
    v = np.random.default_rng(seed).normal(size=ts.size).round(2)
    trend = downsample(ts, v, start_us=0, end_us=10_000, buckets=buckets, gap_us=2**40)
    if ts.size <= 2 * buckets:
        np.testing.assert_array_equal(trend.ts_us, ts)
        np.testing.assert_array_equal(trend.value, v)
        return
    expected = _reference(ts, v, 0, 10_000, buckets)
    width = 10_000 / buckets
    got: dict[int, list[float]] = {}
    for t, x in zip(trend.ts_us.tolist(), trend.value.tolist(), strict=True):
        got.setdefault(min(buckets - 1, int(t / width)), []).append(x)
    assert [(min(xs), max(xs)) for _, xs in sorted(got.items())] == expected
    assert all(len(xs) <= 2 for xs in got.values())
    # Every drawn point is a real sample (its time and value are in the input).
    lookup = dict(zip(ts.tolist(), v.tolist(), strict=True))
    assert all(lookup[t] == x for t, x in zip(trend.ts_us.tolist(), trend.value.tolist(), strict=True))


def test_gaps_become_breaks_and_non_finite_values_are_not_drawn() -> None:
    ts = np.array([0, 10, 20, 30, 1000, 1010, 1020], dtype=np.int64)
    v = np.array([1.0, 2.0, np.nan, 4.0, 5.0, np.inf, 7.0])
    trend = downsample(ts, v, start_us=0, end_us=2000, buckets=100)
    assert trend.raw_points == 7
    assert trend.gaps == 1
    assert trend.ts_us.tolist() == [0, 10, 30, 31, 1000, 1020]
    assert np.isnan(trend.value[3]) and trend.value[[0, 1, 2, 4, 5]].tolist() == [1.0, 2.0, 4.0, 5.0, 7.0]


def test_bad_arguments_are_clear() -> None:
    ts = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="empty range"):
        downsample(ts, ts.astype(float), start_us=5, end_us=5, buckets=10)
    with pytest.raises(ValueError, match="buckets must be positive"):
        downsample(ts, ts.astype(float), start_us=0, end_us=5, buckets=0)
