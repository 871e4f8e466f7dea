"""Gap detection and filling against a straightforward loop reference. Filled values use the same
formula as the reference, compared with rtol 1e-12 (one rounding step apart at most)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import KernelError, fill_gaps
from tidm.stream_processing.steps import Flag


def _ref_fill(
    data: Data, gap_us: int, step_us: int, max_fill: int, method: str
) -> tuple[list, list, list, list]:
    ts: list[int] = []
    vals: list[float] = []
    flags: list[int] = []
    source: list[int] = []
    for a, b in data.segments():
        for i in range(a, b):
            f = 0
            if i > a and data.ts[i] - data.ts[i - 1] > gap_us:
                f = Flag.GAP_BEFORE
                t0, t1 = int(data.ts[i - 1]), int(data.ts[i])
                v0, v1 = float(data.values[i - 1]), float(data.values[i])
                t = t0 + step_us
                n = 0
                while t < t1 and n < max_fill:
                    ts.append(t)
                    with np.errstate(invalid="ignore"):
                        vals.append(v0 + (v1 - v0) * ((t - t0) / (t1 - t0)) if method == "linear" else v0)
                    flags.append(Flag.GAP_FILLED)
                    source.append(-1)
                    t += step_us
                    n += 1
            ts.append(int(data.ts[i]))
            vals.append(float(data.values[i]))
            flags.append(f)
            source.append(i)
    return ts, vals, flags, source


@KERNEL_SETTINGS
@given(
    data=segmented(order="sorted", ts_max=400, max_len=15),
    gap_us=st.integers(0, 60),
    step_us=st.integers(1, 25),
    max_fill=st.integers(0, 6),
    method=st.sampled_from(["linear", "previous"]),
)
def test_fill_gaps_matches_loop(data: Data, gap_us: int, step_us: int, max_fill: int, method: str) -> None:
    got = fill_gaps(
        data.ts,
        data.values,
        gap_us=gap_us,
        step_us=step_us,
        max_fill=max_fill,
        method=method,
        offsets=data.offsets,
    )
    ts, vals, flags, source = _ref_fill(data, gap_us, step_us, max_fill, method)
    assert got.ts.tolist() == ts
    assert got.flags.tolist() == flags
    assert got.source.tolist() == source
    np.testing.assert_allclose(got.values, np.array(vals, dtype=np.float64), rtol=1e-12, atol=0)
    assert got.gaps == sum(1 for f in flags if f == Flag.GAP_BEFORE)
    assert got.offsets[-1] == len(ts)


def test_fill_gaps_refuses_unsorted_time_and_bad_parameters() -> None:
    with pytest.raises(KernelError, match="fill_gaps: timestamps are not sorted"):
        fill_gaps([5, 1], [1.0, 2.0], gap_us=1, step_us=1, max_fill=1)
    with pytest.raises(KernelError, match="fill_gaps: method"):
        fill_gaps([1], [1.0], gap_us=1, step_us=1, max_fill=1, method="spline")
    with pytest.raises(KernelError, match="step_us > 0"):
        fill_gaps([1], [1.0], gap_us=1, step_us=0, max_fill=1)
