"""Hampel despiking against a NumPy reference that takes np.median of every window.

Exact agreement is expected (the same medians and the same comparison); the sorted window is only a
faster way to find them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import MAD_SCALE, KernelError, hampel
from tidm.stream_processing.steps import Flag


def _ref_hampel(data: Data, k: int, n_sigmas: float) -> tuple[np.ndarray, np.ndarray]:
    spike = np.zeros(data.values.size, dtype=bool)
    median = data.values.copy()
    for a, b in data.segments():
        x = data.values[a:b]
        for i in range(b - a):
            w = x[max(0, i - k) : i + k + 1]
            w = w[np.isfinite(w)]
            if w.size == 0 or not np.isfinite(x[i]):
                continue
            m = np.median(w)
            mad = np.median(np.abs(w - m))
            if abs(x[i] - m) > n_sigmas * MAD_SCALE * mad:
                spike[a + i] = True
                median[a + i] = m
    return spike, median


@KERNEL_SETTINGS
@given(data=segmented(), k=st.integers(0, 6), n_sigmas=st.sampled_from([0.0, 1.0, 2.0, 3.0]))
def test_hampel_matches_window_medians(data: Data, k: int, n_sigmas: float) -> None:
    spike, median = _ref_hampel(data, k, n_sigmas)
    values, flags, count = hampel(data.values, k=k, n_sigmas=n_sigmas, offsets=data.offsets)
    assert np.array_equal((flags & Flag.SPIKE) != 0, spike)
    assert count == spike.sum()
    assert np.array_equal(values, data.values, equal_nan=True)
    replaced, rflags, _ = hampel(data.values, k=k, n_sigmas=n_sigmas, replace=True, offsets=data.offsets)
    assert np.array_equal(replaced, median, equal_nan=True)
    assert np.array_equal((rflags & Flag.SPIKE_REPLACED) != 0, spike)


def test_hampel_finds_a_spike_in_noise() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=1000)
    x[500] = 50.0
    _, flags, count = hampel(x, k=7, n_sigmas=5.0)
    assert flags[500] & Flag.SPIKE
    assert count < 10  # small windows of normal noise give a few false alarms at 5 sigma


def test_hampel_rejects_negative_window() -> None:
    with pytest.raises(KernelError, match="hampel: k"):
        hampel([1.0], k=-1)
