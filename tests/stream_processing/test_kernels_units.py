"""Unit conversion to SI: the table against known values, the kernel against NumPy (exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, Data, segmented

from tidm.stream_processing.kernels import SI_UNITS, KernelError, convert, to_si
from tidm.stream_processing.steps import Flag

KNOWN = [
    ("Cel", 25.0, "K", 298.15),
    ("[degF]", 212.0, "K", 373.15),
    ("bar", 2.5, "Pa", 250_000.0),
    ("[psi]", 1.0, "Pa", 6894.757293168361),
    ("[rpm]", 60.0, "rad/s", 2 * math.pi),
    ("kW", 1.5, "W", 1500.0),
    ("kWh", 1.0, "J", 3.6e6),
    ("mm/s", 4.5, "m/s", 0.0045),
    ("[g]", 2.0, "m/s2", 19.6133),
    ("%", 50.0, "1", 0.5),
    ("L/min", 60.0, "m3/s", 1e-3),
]


@pytest.mark.parametrize(("unit", "value", "si", "expected"), KNOWN)
def test_conversion_table(unit: str, value: float, si: str, expected: float) -> None:
    conv = to_si(unit)
    assert conv.si == si
    assert math.isclose(value * conv.factor + conv.offset, expected, rel_tol=1e-12)


def test_every_si_unit_converts_to_itself() -> None:
    for conv in SI_UNITS.values():
        assert SI_UNITS[conv.si] == type(conv)(conv.si, 1.0, 0.0)


def test_unknown_unit_names_where_and_what() -> None:
    with pytest.raises(KernelError, match="catalog 'pump.rate': no SI conversion known for unit 'furlong'"):
        to_si("furlong", where="catalog 'pump.rate'")


@KERNEL_SETTINGS
@given(data=segmented())
def test_convert_matches_numpy_per_segment(data: Data) -> None:
    nseg = data.offsets.size - 1
    factor = np.linspace(0.5, 2.0, nseg) if nseg else np.zeros(0)
    offset = np.arange(nseg, dtype=np.float64)
    got, flags = convert(data.values, factor, offset, offsets=data.offsets)
    rows = np.diff(data.offsets)
    with np.errstate(invalid="ignore"):
        ref = data.values * np.repeat(factor, rows) + np.repeat(offset, rows)
    assert np.array_equal(got, ref, equal_nan=True)
    assert np.all(flags == Flag.UNIT_CONVERTED)
