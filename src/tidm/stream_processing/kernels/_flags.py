"""Flag bits as plain uint32 constants: Numba freezes module globals into the compiled kernels."""

from __future__ import annotations

import numpy as np

from tidm.stream_processing.steps import Flag

NAN_VALUE = np.uint32(Flag.NAN_VALUE)
OUT_OF_RANGE = np.uint32(Flag.OUT_OF_RANGE)
NOT_FINITE = np.uint32(Flag.NOT_FINITE)
FLATLINE = np.uint32(Flag.FLATLINE)
SPIKE = np.uint32(Flag.SPIKE)
SPIKE_REPLACED = np.uint32(Flag.SPIKE_REPLACED)
DUPLICATE = np.uint32(Flag.DUPLICATE)
OUT_OF_ORDER = np.uint32(Flag.OUT_OF_ORDER)
GAP_BEFORE = np.uint32(Flag.GAP_BEFORE)
GAP_FILLED = np.uint32(Flag.GAP_FILLED)
RESAMPLED = np.uint32(Flag.RESAMPLED)
COMPRESSED = np.uint32(Flag.COMPRESSED)
UNIT_CONVERTED = np.uint32(Flag.UNIT_CONVERTED)
UNIT_UNKNOWN = np.uint32(Flag.UNIT_UNKNOWN)
DP_NOISE = np.uint32(Flag.DP_NOISE)
