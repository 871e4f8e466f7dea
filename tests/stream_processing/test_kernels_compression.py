"""Deadband and swinging door against straightforward Python references (exact: same comparisons),
plus the swinging door's guarantee: every dropped sample lies within E of the line through the kept
samples around it (checked with np.interp, tolerance 1e-9 relative to the values' scale).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import deadband, swinging_door


def _ref_deadband(data: Data, d: float, max_interval: int) -> np.ndarray:
    keep = np.zeros(data.values.size, dtype=bool)
    for a, b in data.segments():
        last_v = last_t = None
        for i in range(a, b):
            v, t = data.values[i], data.ts[i]
            if last_v is None:
                emit = True
            elif math.isnan(v) or math.isnan(last_v):
                emit = math.isnan(v) != math.isnan(last_v)
            else:
                with np.errstate(invalid="ignore"):  # inf - inf is NaN: not a change, as in the kernel
                    emit = abs(v - last_v) > d
            if not emit and max_interval > 0 and last_t is not None and t - last_t >= max_interval:
                emit = True
            if emit:
                keep[i] = True
                last_v, last_t = v, t
    return keep


@KERNEL_SETTINGS
@given(data=segmented(), d=st.sampled_from([0.0, 0.5, 3.0]), max_interval=st.sampled_from([0, 5, 20]))
def test_deadband_matches_loop(data: Data, d: float, max_interval: int) -> None:
    idx = deadband(data.ts, data.values, d=d, max_interval_us=max_interval, offsets=data.offsets)
    assert np.array_equal(idx, np.flatnonzero(_ref_deadband(data, d, max_interval)))


def _ref_swinging_door(data: Data, e: float) -> np.ndarray:
    """Restart-from-pivot formulation: extend the line from pivot p to candidate c while the slope
    p->c stays within every intermediate sample's ±e slopes (recomputed from scratch each time)."""
    ts, v = data.ts, data.values
    keep = np.zeros(v.size, dtype=bool)
    for a, b in data.segments():
        if a == b:
            continue
        keep[a] = keep[b - 1] = True
        p = a
        c = a + 1
        while c < b:
            if not (math.isfinite(v[c]) and math.isfinite(v[p])) or ts[c] <= ts[p]:
                keep[c - 1] = keep[c] = True
                p = c
                c += 1
                continue
            # Slopes as (Δv) · (1/Δt), rounded exactly as the kernel rounds them.
            slope = (v[c] - v[p]) * (1.0 / float(ts[c] - ts[p]))
            upper, lower = math.inf, -math.inf
            for j in range(p + 1, c):
                inv_dt = 1.0 / float(ts[j] - ts[p])
                upper = min(upper, (v[j] + e - v[p]) * inv_dt)
                lower = max(lower, (v[j] - e - v[p]) * inv_dt)
            if slope > upper or slope < lower:
                keep[c - 1] = True
                p = c - 1
                continue
            c += 1
    return keep


@KERNEL_SETTINGS
@given(data=segmented(), e=st.sampled_from([0.0, 0.25, 1.0, 10.0]))
def test_swinging_door_matches_reference(data: Data, e: float) -> None:
    idx = swinging_door(data.ts, data.values, e=e, offsets=data.offsets)
    assert np.array_equal(idx, np.flatnonzero(_ref_swinging_door(data, e)))


@KERNEL_SETTINGS
@given(data=segmented(order="unique", finite=True, nan=False, ts_max=500), e=st.sampled_from([0.0, 0.5, 5.0]))
def test_swinging_door_keeps_dropped_samples_within_e(data: Data, e: float) -> None:
    keep = np.zeros(data.values.size, dtype=bool)
    keep[swinging_door(data.ts, data.values, e=e, offsets=data.offsets)] = True
    for a, b in data.segments():
        if a == b:
            continue
        k = keep[a:b]
        t, v = data.ts[a:b].astype(float), data.values[a:b]
        error = np.abs(np.interp(t, t[k], v[k]) - v)
        scale = max(1.0, float(np.max(np.abs(v))))
        assert np.all(error <= e + 1e-9 * scale)


def test_swinging_door_compresses_a_ramp_to_its_ends() -> None:
    t = np.arange(100)
    idx = swinging_door(t, 0.5 * t, e=0.01)
    assert idx.tolist() == [0, 99]
