"""Duplicate, out-of-order and sorting kernels against NumPy/pandas references (exact)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import (
    KernelError,
    duplicate_flags,
    is_sorted,
    out_of_order_flags,
    sort_permutation,
)
from tidm.stream_processing.steps import Flag


@KERNEL_SETTINGS
@given(data=segmented())
def test_sort_permutation_is_a_stable_argsort_per_segment(data: Data) -> None:
    perm, unsorted = sort_permutation(data.ts, offsets=data.offsets)
    ref = np.concatenate(
        [np.arange(0, dtype=np.int64)]
        + [a + np.argsort(data.ts[a:b], kind="stable") for a, b in data.segments()]
    )
    assert np.array_equal(perm, ref)
    assert unsorted == sum(bool(np.any(np.diff(data.ts[a:b]) < 0)) for a, b in data.segments())
    assert is_sorted(data.ts[perm], offsets=data.offsets)
    assert is_sorted(data.ts, offsets=data.offsets) == (unsorted == 0)


@KERNEL_SETTINGS
@given(data=segmented())
def test_out_of_order_flags_match_running_max(data: Data) -> None:
    flags, count = out_of_order_flags(data.ts, offsets=data.offsets)
    ref = np.zeros(data.ts.size, dtype=bool)
    for a, b in data.segments():
        t = data.ts[a:b]
        if t.size:
            newest_before = np.maximum.accumulate(np.concatenate(([t[0]], t[:-1])))
            ref[a:b] = t < newest_before
    assert np.array_equal((flags & Flag.OUT_OF_ORDER) != 0, ref)
    assert count == ref.sum()


@KERNEL_SETTINGS
@given(data=segmented(order="sorted"), keep=st.sampled_from(["first", "last"]))
def test_duplicate_flags_match_pandas_duplicated(data: Data, keep: str) -> None:
    flags, count = duplicate_flags(data.ts, keep=keep, offsets=data.offsets)
    ref = np.zeros(data.ts.size, dtype=bool)
    for a, b in data.segments():
        ref[a:b] = pd.Series(data.ts[a:b]).duplicated(keep=keep).to_numpy()
    assert np.array_equal((flags & Flag.DUPLICATE) != 0, ref)
    assert count == ref.sum()


def test_duplicates_are_adjacent_equal_timestamps() -> None:
    flags, count = duplicate_flags([2, 1, 2, 2], offsets=[0, 2, 4])
    assert flags.tolist() == [0, 0, Flag.DUPLICATE, 0] and count == 1
    with pytest.raises(KernelError, match="keep must be"):
        duplicate_flags([1], keep="middle")
