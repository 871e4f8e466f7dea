"""Hampel/MAD despiking over a centred count window, O(n·k) with a sorted window per segment."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidm.stream_processing.kernels import _flags as fl
from tidm.stream_processing.kernels._arrays import (
    F64,
    I64,
    U32,
    empty,
    f64,
    flags_or_zeros,
    offsets_for,
    same_length,
)
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["MAD_SCALE", "hampel"]

# 1/Φ⁻¹(3/4): makes the MAD a consistent estimator of σ for normal data.
MAD_SCALE = 1.4826


@njit(nogil=True, cache=True)
def _insert(win: F64, count: int, x: float) -> None:
    lo = 0
    hi = count
    while lo < hi:
        mid = (lo + hi) >> 1
        if win[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    for j in range(count, lo, -1):
        win[j] = win[j - 1]
    win[lo] = x


@njit(nogil=True, cache=True)
def _remove(win: F64, count: int, x: float) -> None:
    lo = 0
    hi = count
    while lo < hi:
        mid = (lo + hi) >> 1
        if win[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    for j in range(lo, count - 1):
        win[j] = win[j + 1]


@njit(nogil=True, cache=True)
def _median_and_mad(win: F64, c: int) -> tuple[float, float]:
    h = c >> 1
    med = win[h] if c & 1 else 0.5 * (win[h - 1] + win[h])
    # |win - med| in ascending order is a merge of two sorted runs: (med - win[j]) walking left from
    # the last element ≤ med, and (win[j] - med) walking right; take the middle one(s) of that merge.
    left = h if c & 1 else h - 1
    while left + 1 < c and win[left + 1] <= med:
        left += 1
    right = left + 1
    r_lo = (c - 1) >> 1
    d_lo = 0.0
    d = 0.0
    for r in range(h + 1):
        if right >= c or (left >= 0 and med - win[left] <= win[right] - med):
            d = med - win[left]
            left -= 1
        else:
            d = win[right] - med
            right += 1
        if r == r_lo:
            d_lo = d
    mad = d if c & 1 else 0.5 * (d_lo + d)
    return med, mad


@njit(nogil=True, cache=True)
def _hampel_kernel(
    values: F64, offsets: I64, k: int, n_sigmas: float, replace: bool, out: F64, flags: U32
) -> int:
    win = np.empty(2 * k + 1, dtype=np.float64)
    spikes = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        count = 0
        # The window of i is [i-k, i+k] clipped to the segment, NaN/inf left out.
        for j in range(a, min(b, a + k + 1)):
            if np.isfinite(values[j]):
                _insert(win, count, values[j])
                count += 1
        for i in range(a, b):
            if i > a:
                j_in = i + k
                if j_in < b and np.isfinite(values[j_in]):
                    _insert(win, count, values[j_in])
                    count += 1
                j_out = i - k - 1
                if j_out >= a and np.isfinite(values[j_out]):
                    _remove(win, count, values[j_out])
                    count -= 1
            x = values[i]
            out[i] = x
            if count == 0 or not np.isfinite(x):
                continue
            med, mad = _median_and_mad(win, count)
            if abs(x - med) > n_sigmas * MAD_SCALE * mad:
                spikes += 1
                flags[i] |= fl.SPIKE
                if replace:
                    out[i] = med
                    flags[i] |= fl.SPIKE_REPLACED
    return spikes


def hampel(
    values: Any,
    *,
    k: int,
    n_sigmas: float = 3.0,
    replace: bool = False,
    offsets: Any = None,
    flags: Any = None,
) -> tuple[F64, U32, int]:
    """Hampel filter: flag SPIKE where |x - median| > n_sigmas · 1.4826 · MAD over the window of
    x's k neighbours on each side (clipped at segment ends, non-finite values left out).

    Returns (values, flags, spike count); with `replace` the spikes' values are their window medians
    (flag SPIKE_REPLACED). Medians are taken over the original values (not recursively).
    """
    if k < 0:
        msg = f"hampel: k must be ≥ 0, got {k}"
        raise KernelError(msg)
    if not n_sigmas >= 0:
        msg = f"hampel: n_sigmas must be ≥ 0, got {n_sigmas}"
        raise KernelError(msg)
    v = f64(values)
    n = same_length("hampel", values=v)
    off = offsets_for(offsets, n, where="hampel")
    out_flags = flags_or_zeros(flags, n, where="hampel")
    out = empty(n, np.float64)
    spikes = _hampel_kernel(v, off, int(k), float(n_sigmas), bool(replace), out, out_flags)
    return out, out_flags, int(spikes)
