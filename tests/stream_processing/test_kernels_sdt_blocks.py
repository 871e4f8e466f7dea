"""The block swinging door (`_sdt_blocks`) against the Python reference and the scalar kernel: exact
equality. Small thresholds force the interleaved streams, their merge, the redo as one stream and the
blocks of 8 onto data small enough for the reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_compression import _ref_swinging_door
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels._sdt_blocks import (
    PROBE,
    SHORT_RUN,
    SLACK_DIV,
    SPLIT_MIN,
    scratch_size,
    sdt_blocks,
    short_runs,
)
from tidm.stream_processing.kernels.compression import _swinging_door_kernel, swinging_door

NEVER = 1 << 40  # as slack_div: streams may not run into the next chunk at all


def _blocks(
    ts: np.ndarray,
    v: np.ndarray,
    off: np.ndarray,
    e: float,
    *,
    split_min: int = SPLIT_MIN,
    slack_div: int = SLACK_DIV,
    probe: int = PROBE,
    short_run: int = SHORT_RUN,
) -> tuple[np.ndarray, np.ndarray]:
    """Kept indices and stats [segments run as streams, segments redone as one stream]."""
    # Garbage in the outputs: the kernel must never read an entry it did not write.
    kept = np.full(ts.size, -12345, dtype=np.int64)
    scratch = np.full(scratch_size(off, split_min, slack_div), 777, dtype=np.int64)
    stats = np.zeros(2, dtype=np.int64)
    count = sdt_blocks(ts, v, off, float(e), kept, scratch, split_min, slack_div, probe, short_run, stats)
    return kept[:count], stats


def _scalar(ts: np.ndarray, v: np.ndarray, off: np.ndarray, e: float) -> np.ndarray:
    kept = np.empty(ts.size, dtype=np.int64)
    return kept[: _swinging_door_kernel(ts, v, off, float(e), kept)]


def _random_walk(n: int, seed: int, *, bad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random walk at jittered 1 ms steps; with `bad`, that many NaN, ±inf and repeated or earlier
    timestamps at random places."""
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(900, 1100, n)).astype(np.int64)
    v = np.cumsum(rng.normal(0.0, 1.0, n))
    if bad:
        for x in (np.nan, np.inf, -np.inf):
            v[rng.integers(0, n, bad)] = x
        k = rng.integers(1, n, bad)
        ts[k] = ts[k - 1]
        k = rng.integers(1, n, bad)
        ts[k] -= rng.integers(0, 5000, bad)
    return ts, v


def _one(n: int) -> np.ndarray:
    return np.array([0, n], dtype=np.int64)


@KERNEL_SETTINGS
@given(data=segmented(), e=st.sampled_from([0.0, 0.25, 1.0, 10.0]))
def test_blocks_match_reference(data: Data, e: float) -> None:
    expected = np.flatnonzero(_ref_swinging_door(data, e))
    got, _ = _blocks(data.ts, data.values, data.offsets, e)
    assert np.array_equal(got, expected)
    assert np.array_equal(_scalar(data.ts, data.values, data.offsets, e), expected)


@KERNEL_SETTINGS
@given(
    data=st.one_of(segmented(max_len=120, ts_max=2000, order="sorted"), segmented(max_len=120, ts_max=2000)),
    e=st.sampled_from([0.0, 0.25, 1.0, 10.0]),
    split_min=st.sampled_from([3, 20, 50]),
    slack_div=st.sampled_from([1, 2, NEVER]),
    short_run=st.sampled_from([0, SHORT_RUN, 1000]),  # 0: always blocks of 16; 1000: always 8
)
def test_streams_match_reference(
    data: Data, e: float, split_min: int, slack_div: int, short_run: int
) -> None:
    got, _ = _blocks(
        data.ts,
        data.values,
        data.offsets,
        e,
        split_min=split_min,
        slack_div=slack_div,
        probe=64,
        short_run=short_run,
    )
    assert np.array_equal(got, np.flatnonzero(_ref_swinging_door(data, e)))


def test_streams_merge() -> None:
    ts, v = _random_walk(3000, seed=1)
    for e in (0.0, 0.5, 2.0):
        got, stats = _blocks(ts, v, _one(ts.size), e, split_min=64)
        assert stats.tolist() == [1, 0]
        assert np.array_equal(got, _scalar(ts, v, _one(ts.size), e))


def test_streams_that_never_meet_are_redone_as_one() -> None:
    # A straight line never closes: no pivots to meet at.
    ts = np.arange(3000, dtype=np.int64) * 1000
    v = 0.5 * np.arange(3000.0)
    got, stats = _blocks(ts, v, _one(ts.size), 0.01, split_min=64)
    assert stats.tolist() == [0, 1]
    assert got.tolist() == [0, 2999]
    # Streams that close but may not run past their chunk (no slack) do not meet either.
    ts, v = _random_walk(3000, seed=2)
    got, stats = _blocks(ts, v, _one(ts.size), 1.0, split_min=64, slack_div=NEVER)
    assert stats.tolist() == [0, 1]
    assert np.array_equal(got, _scalar(ts, v, _one(ts.size), 1.0))


def test_middle_stream_reaching_the_end_overtakes_the_last() -> None:
    # Chunks of 1000: a peak at the first chunk boundary (stream 0 closes there, which stream 1 starts
    # from), straight after it: stream 1 runs to the end without a pivot that stream 2 could share.
    n = 3000
    ts = np.arange(n, dtype=np.int64) * 1000
    x = np.arange(n, dtype=np.float64)
    v = np.where(x <= 1000, x, 2000.0 - x)
    got, stats = _blocks(ts, v, _one(n), 0.01, split_min=64, slack_div=1)
    assert stats.tolist() == [1, 0]
    assert got.tolist() == [0, 1000, n - 1]
    assert np.array_equal(got, _scalar(ts, v, _one(n), 0.01))


def test_short_runs_choose_blocks_of_8() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    ts = np.arange(n, dtype=np.int64) * 1000
    noise = rng.normal(0.0, 1.0, n)
    smooth = np.sin(np.arange(n) / 300.0) * 10.0
    off = _one(n)
    scratch = np.empty(scratch_size(off, 64, SLACK_DIV), dtype=np.int64)
    assert short_runs(ts, noise, off, 0.0, scratch, 64, SLACK_DIV, 1024, SHORT_RUN)
    assert not short_runs(ts, smooth, off, 0.1, scratch, 64, SLACK_DIV, 1024, SHORT_RUN)
    # No segment long enough to split: no probe, blocks of 16.
    assert not short_runs(ts, noise, off, 0.0, scratch, n + 1, SLACK_DIV, 1024, SHORT_RUN)
    for v, e in ((noise, 0.0), (noise, 1.0), (smooth, 0.1)):
        got, stats = _blocks(ts, v, off, e, split_min=64)
        assert stats.sum() == 1
        assert np.array_equal(got, _scalar(ts, v, off, e))


def test_non_finite_values_and_bad_times_in_blocks() -> None:
    ts, v = _random_walk(6000, seed=4, bad=40)
    off = _one(ts.size)
    for e in (0.0, 1.0, 5.0):
        for split_min in (64, SPLIT_MIN):
            for short_run in (0, 1000):
                got, _ = _blocks(ts, v, off, e, split_min=split_min, short_run=short_run)
                assert np.array_equal(got, _scalar(ts, v, off, e))
    # Bad samples right at the chunk starts and their neighbours (streams 1 and 2 start on them).
    for k in (2000, 3999, 4000, 4001):
        for x in (np.nan, np.inf):
            w = v.copy()
            w[k] = x
            got, _ = _blocks(ts, w, off, 1.0, split_min=64)
            assert np.array_equal(got, _scalar(ts, w, off, 1.0))


def test_short_and_many_segments() -> None:
    ts, v = _random_walk(4000, seed=5, bad=5)
    lengths = [0, 1, 2, 0, 3, 700, 1, 0, 2, 1500, 15, 16, 17, 1, 2]
    lengths.append(ts.size - sum(lengths))
    off = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    for e in (0.0, 1.0, 3.0):
        for split_min in (2, 20, 64, SPLIT_MIN):
            got, _ = _blocks(ts, v, off, e, split_min=split_min, probe=128)
            assert np.array_equal(got, _scalar(ts, v, off, e))
    assert _blocks(ts[:0], v[:0], np.zeros(1, dtype=np.int64), 1.0)[0].size == 0
    assert _blocks(ts[:0], v[:0], np.zeros(3, dtype=np.int64), 1.0, split_min=2)[0].size == 0


def test_long_random_walk_default_thresholds() -> None:
    ts, v = _random_walk(50_000, seed=6)
    off = _one(ts.size)
    for e in (0.0, 0.5, 2.0, 10.0, 100.0):
        expected = _scalar(ts, v, off, e)
        got, stats = _blocks(ts, v, off, e)
        assert stats.sum() == 1  # the 50k segment ran as streams
        assert np.array_equal(got, expected)
        assert np.array_equal(swinging_door(ts, v, e=e), expected)
