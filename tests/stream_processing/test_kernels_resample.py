"""Resampling against pandas `Series.resample(..., origin="epoch")` (mean/first/last/min/max/sum) and
np.interp (linear). Tolerance rtol 1e-9: pandas sums with Kahan compensation, the kernel plainly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import KernelError, resample


@KERNEL_SETTINGS
@given(
    data=segmented(order="sorted", finite=True, ts_max=300),
    step_us=st.integers(1, 40),
    origin_us=st.integers(-50, 50),
    method=st.sampled_from(["mean", "first", "last", "min", "max", "sum"]),
)
def test_resample_matches_pandas(data: Data, step_us: int, origin_us: int, method: str) -> None:
    got = resample(
        data.ts, data.values, step_us=step_us, method=method, origin_us=origin_us, offsets=data.offsets
    )
    for s, (a, b) in enumerate(data.segments()):
        lo, hi = got.offsets[s], got.offsets[s + 1]
        if a == b:
            assert lo == hi
            continue
        series = pd.Series(data.values[a:b], index=pd.to_datetime(data.ts[a:b], unit="us"))
        origin = pd.Timestamp(origin_us, unit="us")
        ref = series.resample(pd.Timedelta(microseconds=step_us), origin=origin).agg(method)
        count = series.resample(pd.Timedelta(microseconds=step_us), origin=origin).count()
        assert np.array_equal(got.ts[lo:hi], ref.index.as_unit("us").asi8)
        np.testing.assert_allclose(got.values[lo:hi], ref.to_numpy(), rtol=1e-9, atol=1e-9)
        assert np.array_equal(got.count[lo:hi], count.to_numpy())


@KERNEL_SETTINGS
@given(data=segmented(order="unique", finite=True, ts_max=300), step_us=st.integers(1, 40))
def test_resample_linear_matches_interp(data: Data, step_us: int) -> None:
    got = resample(data.ts, data.values, step_us=step_us, method="linear", offsets=data.offsets)
    for s, (a, b) in enumerate(data.segments()):
        lo, hi = got.offsets[s], got.offsets[s + 1]
        finite = ~np.isnan(data.values[a:b])
        t, v = data.ts[a:b][finite], data.values[a:b][finite]
        if t.size == 0:
            assert np.all(np.isnan(got.values[lo:hi]))
            continue
        ref = np.interp(got.ts[lo:hi], t, v, left=np.nan, right=np.nan)
        np.testing.assert_allclose(got.values[lo:hi], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["mean", "linear"])
@pytest.mark.parametrize("ts", [[3, 1], [0, 100, 5], [0, 7, 3, 9]])
def test_resample_refuses_unsorted_time(ts: list[int], method: str) -> None:
    with pytest.raises(KernelError, match="resample: timestamps are not sorted"):
        resample(ts, [1.0] * len(ts), step_us=2, method=method)
