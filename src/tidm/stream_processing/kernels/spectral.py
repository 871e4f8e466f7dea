"""Spectral features of vibration windows: band energies, peak frequency, total power.

The FFT is NumPy's (Numba has none); detrending, the Hann taper and the band sums are kernels. Powers
follow `scipy.signal.periodogram(..., window="hann", detrend="constant", scaling="density")`: a band's
energy is the one-sided PSD summed over its bins times the bin width, in (signal unit)².
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tidm.stream_processing.kernels._arrays import C128, F64, I64, f64, i64
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["Spectrum", "spectral_features", "window_starts"]


@njit(nogil=True, cache=True)
def _frames_kernel(values: F64, starts: I64, m: int, taper: F64, frames: F64, valid: np.ndarray) -> None:
    for w in range(starts.size):
        a = starts[w]
        total = 0.0
        ok = True
        for j in range(m):
            x = values[a + j]
            if not np.isfinite(x):
                ok = False
                break
            total += x
        valid[w] = ok
        mean = total / m if ok else 0.0
        for j in range(m):
            frames[w, j] = (values[a + j] - mean) * taper[j] if ok else 0.0


@njit(nogil=True, cache=True)
def _bands_kernel(
    spectrum: C128,
    valid: np.ndarray,
    scale: float,
    df: float,
    m: int,
    band_lo: F64,
    band_hi: F64,
    bands: F64,
    peak_hz: F64,
    total: F64,
) -> None:
    nbins = spectrum.shape[1]
    for w in range(spectrum.shape[0]):
        if not valid[w]:
            peak_hz[w] = np.nan
            total[w] = np.nan
            for q in range(band_lo.size):
                bands[w, q] = np.nan
            continue
        for q in range(band_lo.size):
            bands[w, q] = 0.0
        best = -1.0
        best_k = 0
        acc = 0.0
        for k in range(nbins):
            z = spectrum[w, k]
            p = (z.real * z.real + z.imag * z.imag) * scale
            # One-sided: every bin but DC and (for even m) Nyquist carries its negative twin too.
            if k != 0 and not (m % 2 == 0 and k == nbins - 1):
                p *= 2.0
            f = k * df
            acc += p
            if k > 0 and p > best:
                best = p
                best_k = k
            for q in range(band_lo.size):
                if band_lo[q] <= f < band_hi[q]:
                    bands[w, q] += p * df
        total[w] = acc * df
        peak_hz[w] = best_k * df if nbins > 1 else np.nan


@dataclass(frozen=True)
class Spectrum:
    """Per window: band energies (windows × bands), peak frequency (Hz, DC excluded), total power."""

    bands: F64
    peak_hz: F64
    total: F64
    valid: np.ndarray  # False where the window held NaN/inf (its features are NaN)


def window_starts(offsets: Any, m: int, hop: int | None = None) -> I64:
    """Start indices of the complete windows of `m` samples, `hop` apart, inside each segment."""
    if m < 1 or (hop is not None and hop < 1):
        msg = f"window_starts: need m ≥ 1 and hop ≥ 1 (got {m}, {hop})"
        raise KernelError(msg)
    step = m if hop is None else hop
    off = i64(offsets)
    parts = [np.arange(a, b - m + 1, step, dtype=np.int64) for a, b in zip(off[:-1], off[1:], strict=True)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def spectral_features(
    values: Any, starts: Any, *, m: int, fs: float, bands: list[tuple[float, float]]
) -> Spectrum:
    """Band energies over [lo, hi) Hz, peak frequency and total power of the windows
    values[start : start + m], sampled at `fs` Hz, detrended (mean) and Hann-tapered (periodic).
    """
    if m < 2 or not fs > 0:
        msg = f"spectral_features: need m ≥ 2 and fs > 0 (got {m}, {fs})"
        raise KernelError(msg)
    v = f64(values)
    st = i64(starts)
    if st.size and (st.min() < 0 or st.max() + m > v.size):
        msg = f"spectral_features: a window of {m} samples runs outside the {v.size} values"
        raise KernelError(msg)
    lo = np.ascontiguousarray([b[0] for b in bands], dtype=np.float64)
    hi = np.ascontiguousarray([b[1] for b in bands], dtype=np.float64)
    taper = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(m) / m)
    frames = np.empty((st.size, m), dtype=np.float64)
    valid = np.empty(st.size, dtype=np.bool_)
    _frames_kernel(v, st, int(m), taper, frames, valid)
    spectrum = np.ascontiguousarray(np.fft.rfft(frames, axis=1))
    out_bands = np.empty((st.size, lo.size), dtype=np.float64)
    peak = np.empty(st.size, dtype=np.float64)
    total = np.empty(st.size, dtype=np.float64)
    scale = 1.0 / (fs * float(np.sum(taper * taper)))
    _bands_kernel(spectrum, valid, scale, fs / m, int(m), lo, hi, out_bands, peak, total)
    return Spectrum(out_bands, peak, total, valid)
