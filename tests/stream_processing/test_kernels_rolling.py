"""Rolling statistics against pandas `rolling` (by count and by time), with rms/crest/p2p built from
pandas rolling means of x², min and max.

Tolerance: rtol 1e-7 plus an absolute 1e-7 · (data scale)ⁿ for the n-th moment's statistic (running
sums cancel; pandas and the kernel round differently). Skewness and kurtosis are compared only where the
window's variance is not tiny next to the data scale, the crest factor only where the rms is not
(both sides are rounding noise there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import ROLLING_STATS, KernelError, rolling_stats


def _ref(data: Data, a: int, b: int, window: int | str, min_periods: int) -> dict[str, np.ndarray]:
    x = np.where(np.isfinite(data.values[a:b]), data.values[a:b], np.nan)
    s = pd.Series(x, index=pd.to_datetime(data.ts[a:b], unit="us"))
    r = s.rolling(window, min_periods=min_periods)
    mn, mx = r.min().to_numpy(), r.max().to_numpy()
    rms = np.sqrt((s * s).rolling(window, min_periods=min_periods).mean().to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        crest = np.maximum(np.abs(mn), np.abs(mx)) / rms
    return {
        "mean": r.mean().to_numpy(),
        "std": r.std().to_numpy(),
        "min": mn,
        "max": mx,
        "rms": rms,
        "skew": r.skew().to_numpy(),
        "kurt": r.kurt().to_numpy(),
        "crest": np.where(rms > 0, crest, np.nan),
        "p2p": mx - mn,
        "count": s.rolling(window, min_periods=0).count().to_numpy(),  # the kernel always gives it
        "var": r.var(ddof=0).to_numpy(),
    }


def _compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], a: int, b: int, scale: float) -> None:
    power = {"mean": 1, "std": 1, "min": 1, "max": 1, "rms": 1, "p2p": 1, "count": 0}
    for name, p in power.items():
        np.testing.assert_allclose(
            got[name][a:b], ref[name], rtol=1e-7, atol=1e-7 * scale**p, equal_nan=True, err_msg=name
        )
    # crest = max|x| / rms divides by an rms known to ~1e-16 · scale² / rms: compare where rms is not tiny.
    sized = ~(ref["rms"] <= 1e-3 * scale)
    np.testing.assert_allclose(got["crest"][a:b][sized], ref["crest"][sized], rtol=1e-7, equal_nan=True)
    # The 4th power sums carry an error of ~1e-16 · scale⁴, so kurtosis is good to ~1e-16 · scale⁴ / var².
    well_spread = ref["var"] > 1e-3 * scale**2
    for name in ("skew", "kurt"):
        g, r = got[name][a:b][well_spread], ref[name][well_spread]
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=name)


def _scale(data: Data) -> float:
    finite = data.values[np.isfinite(data.values)]
    return max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0


@KERNEL_SETTINGS
@given(data=segmented(), window=st.integers(1, 8), min_periods=st.integers(0, 4))
def test_rolling_by_count_matches_pandas(data: Data, window: int, min_periods: int) -> None:
    min_periods = min(min_periods, window)
    got = rolling_stats(data.ts, data.values, window_n=window, min_periods=min_periods, offsets=data.offsets)
    assert list(got) == list(ROLLING_STATS)
    for a, b in data.segments():
        _compare(got, _ref(data, a, b, window, min_periods), a, b, _scale(data))


@KERNEL_SETTINGS
@given(data=segmented(order="sorted"), window_us=st.integers(1, 30), min_periods=st.integers(0, 3))
def test_rolling_by_time_matches_pandas(data: Data, window_us: int, min_periods: int) -> None:
    got = rolling_stats(
        data.ts, data.values, window_us=window_us, min_periods=min_periods, offsets=data.offsets
    )
    for a, b in data.segments():
        _compare(got, _ref(data, a, b, f"{window_us}us", min_periods), a, b, _scale(data))


def test_rolling_stays_accurate_over_a_long_offset_signal() -> None:
    # A large offset and a long run of add/remove: the shifted, compensated sums must not drift.
    rng = np.random.default_rng(3)
    x = 1e6 + rng.normal(size=200_000)
    got = rolling_stats(None, x, window_n=50)
    ref = pd.Series(x).rolling(50)
    np.testing.assert_allclose(got["std"][49:], ref.std().to_numpy()[49:], rtol=1e-6)
    np.testing.assert_allclose(got["skew"][49:], ref.skew().to_numpy()[49:], atol=1e-4)


def test_rolling_needs_one_window_kind() -> None:
    with pytest.raises(KernelError, match="exactly one of window_n"):
        rolling_stats([0], [1.0], window_n=2, window_us=2)
    with pytest.raises(KernelError, match="time windows need timestamps sorted"):
        rolling_stats([2, 1], [1.0, 1.0], window_us=2)


def test_rolling_on_tiny_values_gives_nan_shape_not_an_error() -> None:
    # m2² underflows to 0 here: kurtosis must come out NaN, not raise or divide by zero.
    got = rolling_stats(None, [1e-200, 2e-200, 3e-200, 5e-200], window_n=4)
    assert np.isnan(got["kurt"][-1]) and got["mean"][-1] == pytest.approx(2.75e-200)
