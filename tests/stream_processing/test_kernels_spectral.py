"""Spectral features against scipy.signal.periodogram (Hann, constant detrend, density scaling):
band energy = Σ PSD · df over [lo, hi); rtol 1e-9 (the same FFT, summed in another order)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import KernelError, spectral_features, window_starts

BANDS = [(0.0, 50.0), (50.0, 125.0), (125.0, 500.1), (10.0, 20.0)]


@KERNEL_SETTINGS
@given(data=segmented(finite=True, max_len=40), m=st.integers(2, 12), hop=st.sampled_from([None, 1, 3]))
def test_spectral_features_match_scipy_periodogram(data: Data, m: int, hop: int | None) -> None:
    fs = 1000.0
    starts = window_starts(data.offsets, m, hop)
    for a, b in data.segments():
        assert all(a <= s and s + m <= b for s in starts if a <= s < b)
    got = spectral_features(data.values, starts, m=m, fs=fs, bands=BANDS)
    for w, s in enumerate(starts):
        x = data.values[s : s + m]
        if not np.all(np.isfinite(x)):
            assert not got.valid[w] and np.isnan(got.peak_hz[w]) and np.all(np.isnan(got.bands[w]))
            continue
        f, p = scipy.signal.periodogram(x, fs, window="hann", detrend="constant", scaling="density")
        df = f[1]
        ref = [p[(f >= lo) & (f < hi)].sum() * df for lo, hi in BANDS]
        scale = max(1e-12, float(p.sum() * df))
        np.testing.assert_allclose(got.bands[w], ref, rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(got.total[w], p.sum() * df, rtol=1e-9, atol=1e-12 * scale)
        # The peak: any bin (DC excluded) whose power ties the maximum within rounding.
        peak_bin = int(round(got.peak_hz[w] / df))
        assert peak_bin >= 1 and p[peak_bin] >= p[1:].max() * (1 - 1e-9) - 1e-12 * scale


def test_peak_frequency_of_a_tone() -> None:
    fs, m = 2048.0, 1024
    t = np.arange(4 * m) / fs
    x = 0.5 + np.sin(2 * np.pi * 160.0 * t)
    got = spectral_features(
        x, window_starts([0, x.size], m), m=m, fs=fs, bands=[(150.0, 170.0), (0.0, 100.0)]
    )
    assert np.all(got.peak_hz == 160.0)
    # Nearly all of a unit sine's power (1/2) is in its band; the 0.5 offset is detrended away.
    assert np.all(np.abs(got.bands[:, 0] - 0.5) < 0.01) and np.all(got.bands[:, 1] < 1e-6)


def test_windows_must_fit() -> None:
    with pytest.raises(KernelError, match="runs outside"):
        spectral_features(np.zeros(4), np.array([2]), m=4, fs=1.0, bands=[])
