"""Value generators: the shape of each signal plus noise, spikes, gaps and stuck values.

A generator is a pure function of its seed and the sequence of nominal times it is stepped with:
it draws the same random numbers on every update whatever state it is in, so two runs with the same
seed produce the same values (timestamps are wall-clock and differ, values do not).
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import NamedTuple

from tidm.simulator.config import SignalConfig

__all__ = ["Reading", "SignalGenerator", "derive_seed"]


class Reading(NamedTuple):
    """One update of a signal: a value (numeric or text), or a bad-status gap sample (`good` False)."""

    value: float | None
    value_text: str | None
    good: bool


def derive_seed(seed: int, asset_id: str, signal: str) -> int:
    """A per-signal seed independent of the other signals in the configuration."""
    digest = hashlib.sha256(f"{seed}\x00{asset_id}\x00{signal}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class SignalGenerator:
    """Produces the successive readings of one signal."""

    __slots__ = ("_cfg", "_gap_left", "_last", "_rng", "_stuck_left", "_updates")

    def __init__(self, config: SignalConfig, seed: int) -> None:
        self._cfg = config
        # Simulation noise, not security: a seeded, reproducible PRNG is what we want.
        self._rng = random.Random(seed)  # noqa: S311
        self._updates = 0
        self._gap_left = 0
        self._stuck_left = 0
        self._last: Reading | None = None

    @property
    def config(self) -> SignalConfig:
        """The signal's settings."""
        return self._cfg

    def step(self, t_s: float) -> Reading | None:
        """Advance one update at nominal time `t_s` (seconds since start).

        Returns None when the update falls in a gap of mode `skip` (nothing is written).
        """
        cfg = self._cfg
        rng = self._rng
        first = self._updates == 0
        self._updates += 1
        u_gap = rng.random()
        u_stuck = rng.random()
        u_spike = rng.random()
        noise = rng.gauss(0.0, cfg.noise_std) if cfg.noise_std > 0 else 0.0

        if self._gap_left > 0:
            self._gap_left -= 1
            return self._gap()
        if self._stuck_left > 0 and self._last is not None:
            self._stuck_left -= 1
            return self._last
        if not first:
            if u_gap < cfg.gap_probability:
                self._gap_left = cfg.gap_length - 1
                return self._gap()
            if u_stuck < cfg.stuck_probability and self._last is not None:
                self._stuck_left = cfg.stuck_length - 1
                return self._last

        reading = self._fresh(t_s, noise, u_spike)
        self._last = reading
        return reading

    def _gap(self) -> Reading | None:
        if self._cfg.gap_mode == "skip":
            return None
        return Reading(None, None, good=False)

    def _fresh(self, t_s: float, noise: float, u_spike: float) -> Reading:
        cfg = self._cfg
        phase = t_s / cfg.period_s
        if cfg.kind == "text-state":
            return Reading(None, cfg.states[math.floor(phase) % len(cfg.states)], good=True)
        if cfg.kind == "sine":
            base = math.sin(2.0 * math.pi * phase)
        elif cfg.kind == "ramp":
            base = phase - math.floor(phase)
        else:  # counter: one step of `amplitude` per period
            base = float(math.floor(phase))
        value = cfg.offset + cfg.amplitude * base + noise
        if u_spike < cfg.spike_probability:
            # The same draw picks the direction: the lower half of the spike band goes up.
            value += cfg.spike_magnitude if u_spike < cfg.spike_probability / 2 else -cfg.spike_magnitude
        return Reading(value, None, good=True)
