"""Numba kernels for cleaning and features, and the steps that run them on Arrow samples tables.

Every kernel is `@njit(nogil=True, cache=True)` and makes one pass over contiguous arrays (int64 µs
timestamps, float64 values, uint32 flags) per signal segment; segments are given by `offsets`
(segment s is rows offsets[s]:offsets[s + 1]), which `segment_table` derives from an Arrow table.
The wrappers below take and return NumPy arrays; `STEPS` maps step names to functions on Arrow tables
returning StepResult(kept, rejected, counts) for the job spec.
"""

from collections.abc import Callable

from tidm.stream_processing.kernels.compression import deadband, swinging_door
from tidm.stream_processing.kernels.despike import MAD_SCALE, hampel
from tidm.stream_processing.kernels.errors import KernelError
from tidm.stream_processing.kernels.gaps import Filled, fill_gaps
from tidm.stream_processing.kernels.ordering import (
    duplicate_flags,
    is_sorted,
    out_of_order_flags,
    sort_permutation,
)
from tidm.stream_processing.kernels.resample import Resampled, resample
from tidm.stream_processing.kernels.rolling import ROLLING_STATS, rolling_stats
from tidm.stream_processing.kernels.segments import Segments, segment_table
from tidm.stream_processing.kernels.spectral import Spectrum, spectral_features, window_starts
from tidm.stream_processing.kernels.table_steps import (
    deadband_step,
    dedup_step,
    despike_step,
    dp_noise_step,
    flatline_step,
    gap_fill_step,
    order_step,
    resample_step,
    rolling_step,
    spectral_step,
    swinging_door_step,
    to_si_step,
    validity_step,
)
from tidm.stream_processing.kernels.units import SI_UNITS, Conversion, convert, to_si
from tidm.stream_processing.kernels.validity import flatline_flags, range_flags
from tidm.stream_processing.steps import StepResult, drop_bad_samples

__all__ = [
    "MAD_SCALE",
    "ROLLING_STATS",
    "SI_UNITS",
    "STEPS",
    "Conversion",
    "Filled",
    "KernelError",
    "Resampled",
    "Segments",
    "Spectrum",
    "convert",
    "deadband",
    "duplicate_flags",
    "fill_gaps",
    "flatline_flags",
    "hampel",
    "is_sorted",
    "out_of_order_flags",
    "range_flags",
    "resample",
    "rolling_stats",
    "segment_table",
    "sort_permutation",
    "spectral_features",
    "swinging_door",
    "to_si",
    "window_starts",
]

# Step name -> function(table, **params) -> StepResult; the job spec looks steps up here by name.
STEPS: dict[str, Callable[..., StepResult]] = {
    "drop_bad_samples": drop_bad_samples,
    "order": order_step,
    "dedup": dedup_step,
    "validity": validity_step,
    "flatline": flatline_step,
    "despike": despike_step,
    "gap_fill": gap_fill_step,
    "resample": resample_step,
    "deadband": deadband_step,
    "swinging_door": swinging_door_step,
    "to_si": to_si_step,
    "rolling": rolling_step,
    "spectral": spectral_step,
    "dp_noise": dp_noise_step,
}
