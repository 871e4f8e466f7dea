from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidm.simulator import Reading, SignalConfig, SignalGenerator
from tidm.simulator.signals import derive_seed


def _run(config: SignalConfig, n: int, seed: int = 1, dt: float = 0.1) -> list[Reading | None]:
    gen = SignalGenerator(config, seed)
    return [gen.step(i * dt) for i in range(n)]


def test_same_seed_same_readings() -> None:
    cfg = SignalConfig(
        noise_std=0.3, spike_probability=0.1, spike_magnitude=4, gap_probability=0.1, stuck_probability=0.1
    )
    assert _run(cfg, 200, seed=5) == _run(cfg, 200, seed=5)
    assert _run(cfg, 200, seed=5) != _run(cfg, 200, seed=6)


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(1, "urn:a", "P") == derive_seed(1, "urn:a", "P")
    assert (
        len({derive_seed(1, "urn:a", "P"), derive_seed(1, "urn:a", "Q"), derive_seed(2, "urn:a", "P")}) == 3
    )


def test_clean_shapes() -> None:
    sine = _run(SignalConfig(kind="sine", amplitude=2, offset=1, period_s=1.0), 5, dt=0.25)
    assert [round(r.value, 9) for r in sine if r and r.value is not None] == [1.0, 3.0, 1.0, -1.0, 1.0]
    ramp = _run(SignalConfig(kind="ramp", amplitude=10, period_s=1.0), 5, dt=0.25)
    assert [r.value for r in ramp if r] == [0.0, 2.5, 5.0, 7.5, 0.0]
    counter = _run(SignalConfig(kind="counter", amplitude=3, offset=100, period_s=0.5), 5, dt=0.25)
    assert [r.value for r in counter if r] == [100.0, 100.0, 103.0, 103.0, 106.0]
    text = _run(SignalConfig(kind="text-state", states=("A", "B", "C"), period_s=0.5), 7, dt=0.25)
    assert [r.value_text for r in text if r] == ["A", "A", "B", "B", "C", "C", "A"]
    assert all(r is not None and r.value is None and r.good for r in text)


def test_spikes_go_both_ways() -> None:
    readings = _run(SignalConfig(amplitude=0, spike_probability=1, spike_magnitude=100), 200)
    assert {r.value for r in readings if r} == {100.0, -100.0}


def test_always_stuck_repeats_the_first_value_exactly() -> None:
    readings = _run(SignalConfig(noise_std=1.0, stuck_probability=1, stuck_length=3), 20)
    assert len(set(readings)) == 1


def test_gap_modes() -> None:
    bad = _run(SignalConfig(gap_probability=1, gap_length=2, gap_mode="bad_status"), 6)
    assert bad[0] is not None and bad[0].good
    assert bad[1:] == [Reading(None, None, good=False)] * 5
    skip = _run(SignalConfig(gap_probability=1, gap_length=2, gap_mode="skip"), 6)
    assert skip[0] is not None
    assert skip[1:] == [None] * 5


@settings(max_examples=60, deadline=None)
@given(
    gap_p=st.floats(0, 1),
    gap_len=st.integers(1, 5),
    stuck_p=st.floats(0, 1),
    stuck_len=st.integers(1, 5),
    gap_mode=st.sampled_from(["skip", "bad_status"]),
    seed=st.integers(0, 2**32),
)
def test_fault_runs_have_their_configured_length(
    gap_p: float, gap_len: int, stuck_p: float, stuck_len: int, gap_mode: str, seed: int
) -> None:
    cfg = SignalConfig(
        noise_std=1.0,
        gap_probability=gap_p,
        gap_length=gap_len,
        gap_mode=gap_mode,  # type: ignore[arg-type]
        stuck_probability=stuck_p,
        stuck_length=stuck_len,
    )
    readings = _run(cfg, 120, seed=seed)
    assert readings[0] is not None and readings[0].good, "the first update is always a value"
    in_gap = [r is None or not r.good for r in readings]
    # Every gap run (except one cut off by the end) lasts a multiple of gap_length updates.
    run = 0
    for flag in [*in_gap, None]:
        if flag:
            run += 1
            continue
        if flag is False:
            assert run % gap_len == 0
        run = 0
    for r in readings:
        if r is not None and r.value is not None:
            assert math.isfinite(r.value)


@pytest.mark.parametrize("kind", ["sine", "ramp", "counter"])
def test_numeric_kinds_have_no_text(kind: str) -> None:
    readings = _run(SignalConfig(kind=kind), 10)  # type: ignore[arg-type]
    assert all(r is not None and r.value_text is None and r.value is not None for r in readings)
