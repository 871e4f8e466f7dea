"""Unit conversion to SI. Catalog units are UCUM-style case-sensitive codes ("Cel", "bar", "[rpm]"...);
each maps to its SI unit and an affine conversion si = value · factor + offset.

Offsets (temperatures) apply to absolute values only; a temperature *difference* in Cel is already K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    per_segment,
    same_length,
)
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["SI_UNITS", "Conversion", "convert", "to_si"]


@dataclass(frozen=True)
class Conversion:
    """si_value = value · factor + offset, in unit `si`."""

    si: str
    factor: float
    offset: float = 0.0


_G0 = 9.80665  # standard gravity, m/s² (UCUM [g])
_PSI = 6894.757293168361  # Pa (lbf/in²)

SI_UNITS: dict[str, Conversion] = {
    # temperature
    "K": Conversion("K", 1.0),
    "Cel": Conversion("K", 1.0, 273.15),
    "[degF]": Conversion("K", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    # pressure
    "Pa": Conversion("Pa", 1.0),
    "hPa": Conversion("Pa", 1e2),
    "kPa": Conversion("Pa", 1e3),
    "MPa": Conversion("Pa", 1e6),
    "bar": Conversion("Pa", 1e5),
    "mbar": Conversion("Pa", 1e2),
    "[psi]": Conversion("Pa", _PSI),
    # rotation, angle, frequency
    "rad/s": Conversion("rad/s", 1.0),
    "[rpm]": Conversion("rad/s", 2.0 * math.pi / 60.0),
    "{rpm}": Conversion("rad/s", 2.0 * math.pi / 60.0),
    "/min": Conversion("Hz", 1.0 / 60.0),
    "Hz": Conversion("Hz", 1.0),
    "kHz": Conversion("Hz", 1e3),
    "rad": Conversion("rad", 1.0),
    "deg": Conversion("rad", math.pi / 180.0),
    # power and energy
    "W": Conversion("W", 1.0),
    "mW": Conversion("W", 1e-3),
    "kW": Conversion("W", 1e3),
    "MW": Conversion("W", 1e6),
    "J": Conversion("J", 1.0),
    "kJ": Conversion("J", 1e3),
    "Wh": Conversion("J", 3.6e3),
    "kWh": Conversion("J", 3.6e6),
    "MWh": Conversion("J", 3.6e9),
    # length, speed, acceleration (UCUM "g" is the gram; standard gravity is "[g]")
    "m": Conversion("m", 1.0),
    "mm": Conversion("m", 1e-3),
    "um": Conversion("m", 1e-6),
    "m/s": Conversion("m/s", 1.0),
    "mm/s": Conversion("m/s", 1e-3),
    "km/h": Conversion("m/s", 1e3 / 3600.0),
    "m/s2": Conversion("m/s2", 1.0),
    "[g]": Conversion("m/s2", _G0),
    # time
    "s": Conversion("s", 1.0),
    "ms": Conversion("s", 1e-3),
    "min": Conversion("s", 60.0),
    "h": Conversion("s", 3600.0),
    # electrical
    "V": Conversion("V", 1.0),
    "mV": Conversion("V", 1e-3),
    "kV": Conversion("V", 1e3),
    "A": Conversion("A", 1.0),
    "mA": Conversion("A", 1e-3),
    # mass, flow, torque, force
    "kg": Conversion("kg", 1.0),
    "g": Conversion("kg", 1e-3),
    "t": Conversion("kg", 1e3),
    "m3/s": Conversion("m3/s", 1.0),
    "m3/h": Conversion("m3/s", 1.0 / 3600.0),
    "L/min": Conversion("m3/s", 1e-3 / 60.0),
    "N": Conversion("N", 1.0),
    "kN": Conversion("N", 1e3),
    "N.m": Conversion("N.m", 1.0),
    # dimensionless
    "1": Conversion("1", 1.0),
    "%": Conversion("1", 1e-2),
}


def to_si(unit: str, *, where: str = "to_si") -> Conversion:
    """The SI conversion of a catalog unit code; KernelError naming `where` and the unit if unknown."""
    conv = SI_UNITS.get(unit.strip())
    if conv is None:
        msg = f"{where}: no SI conversion known for unit {unit!r}"
        raise KernelError(msg)
    return conv


@njit(nogil=True, cache=True)
def _affine_kernel(values: F64, offsets: I64, factor: F64, shift: F64, out: F64, flags: U32) -> None:
    for s in range(offsets.size - 1):
        f = factor[s]
        c = shift[s]
        # Slices per segment so the loop vectorizes; identity conversions still mark samples as SI.
        seg_v = values[offsets[s] : offsets[s + 1]]
        seg_o = out[offsets[s] : offsets[s + 1]]
        seg_f = flags[offsets[s] : offsets[s + 1]]
        for i in range(seg_v.size):
            seg_o[i] = seg_v[i] * f + c
            seg_f[i] |= fl.UNIT_CONVERTED


def convert(
    values: Any,
    factor: Any,
    offset: Any = 0.0,
    *,
    offsets: Any = None,
    flags: Any = None,
    out: F64 | None = None,
) -> tuple[F64, U32]:
    """values · factor + offset (scalars or one per segment) into `out` (a new array unless given;
    may be `values` itself); flags UNIT_CONVERTED."""
    v = f64(values)
    n = same_length("convert", values=v)
    off = offsets_for(offsets, n, where="convert")
    nseg = off.size - 1
    if out is None:
        out = empty(n, np.float64)
    elif out.dtype != np.float64 or out.shape != (n,) or not out.flags.c_contiguous:
        msg = f"convert: out must be a contiguous float64 array of shape ({n},)"
        raise KernelError(msg)
    out_flags = flags_or_zeros(flags, n, where="convert")
    _affine_kernel(
        v,
        off,
        per_segment(factor, nseg, name="factor", where="convert"),
        per_segment(offset, nseg, name="offset", where="convert"),
        out,
        out_flags,
    )
    return out, out_flags
