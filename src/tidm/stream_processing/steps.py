"""Cleaning steps on samples tables. A step returns what it kept and what it rejected (oks/errs);
nothing leaves a step uncounted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidm.semantics import CLEAN_SCHEMA, Quality

__all__ = ["Flag", "StepResult", "drop_bad_samples", "with_flags"]


class Flag(enum.IntFlag):
    """What a step did to (or found in) a sample; the `flags` column is their bitwise OR."""

    BAD_QUALITY = 1 << 0
    NAN_VALUE = 1 << 1
    # Set by the Numba kernels (tidm.stream_processing.kernels); one bit per finding or action.
    OUT_OF_RANGE = 1 << 2  # finite value outside the signal's [min, max]
    NOT_FINITE = 1 << 3  # +inf or -inf
    FLATLINE = 1 << 4  # part of a run of equal values long enough to look like a stuck sensor
    SPIKE = 1 << 5  # Hampel outlier: |x - median| > n * 1.4826 * MAD in its window
    SPIKE_REPLACED = 1 << 6  # the spike's value was replaced by its window median
    DUPLICATE = 1 << 7  # same timestamp as another sample of the signal (the other one is kept)
    OUT_OF_ORDER = 1 << 8  # arrived with a timestamp older than one already seen for the signal
    GAP_BEFORE = 1 << 9  # the time since the previous sample of the signal exceeds the gap limit
    GAP_FILLED = 1 << 10  # a generated row filling a gap (linear or previous value)
    RESAMPLED = 1 << 11  # a generated row on a fixed time grid (mean/last/min/max/linear of a bucket)
    COMPRESSED = 1 << 12  # dropped by deadband or swinging-door compression (within tolerance)
    UNIT_CONVERTED = 1 << 13  # value converted to the SI unit of the catalog unit
    UNIT_UNKNOWN = 1 << 14  # the catalog unit has no known SI conversion
    DP_NOISE = 1 << 15  # differential-privacy noise added to an aggregate


@dataclass(frozen=True)
class StepResult:
    kept: pa.Table
    rejected: pa.Table
    counts: dict[str, int]


def with_flags(table: pa.Table, flags: np.ndarray | None = None) -> pa.Table:
    """`table` (samples schema) with a `flags` column, zero unless given."""
    if flags is None:
        flags = np.zeros(table.num_rows, dtype=np.uint32)
    out = table.append_column(CLEAN_SCHEMA.field("flags"), pa.array(flags, type=pa.uint32()))
    return out.replace_schema_metadata(None)


def drop_bad_samples(table: pa.Table) -> StepResult:
    """Keep good-quality samples that carry a value: a finite-or-infinite float, or a text value.

    Rejected rows keep their data and get flags saying why (bad quality, NaN/missing value). A
    `flags` column already present (from earlier steps) is kept and added to.
    """
    earlier = None
    if "flags" in table.column_names:
        earlier = table.column("flags").to_numpy(zero_copy_only=False).astype(np.uint32)
        table = table.drop_columns(["flags"])
    quality = table.column("quality").to_numpy(zero_copy_only=False)
    value = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    has_text = table.column("value_text").is_valid().to_numpy(zero_copy_only=False)
    flags = np.zeros(table.num_rows, dtype=np.uint32)
    flags[quality != Quality.GOOD] |= np.uint32(Flag.BAD_QUALITY)
    flags[np.isnan(value) & ~has_text] |= np.uint32(Flag.NAN_VALUE)
    keep = flags == 0
    flagged = with_flags(table, flags if earlier is None else flags | earlier)
    kept = flagged.filter(pa.array(keep))
    rejected = flagged.filter(pa.array(~keep))
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": kept.num_rows,
        "bad_quality": int(np.count_nonzero(flags & np.uint32(Flag.BAD_QUALITY))),
        "nan_value": int(np.count_nonzero(flags & np.uint32(Flag.NAN_VALUE))),
    }
    return StepResult(kept, rejected, counts)


def sort_for_lake(table: pa.Table) -> pa.Table:
    """Sort by (signal, ts) so row-group statistics prune by signal and time.

    Signals are ranked once per dictionary (a handful of strings), then rows are sorted as integer
    pairs (rank, ts) with NumPy: several times cheaper than sorting the strings row by row.
    The sort is stable, so rows with equal (signal, ts) keep their order. Rows usually arrive in
    time order per signal, so a stable (radix) sort by rank alone is tried first and kept when
    time ascends within each signal; a table already in order is returned as it is.
    """
    if table.num_rows == 0:
        return table
    signal = table.column("signal")
    if not pa.types.is_dictionary(signal.type):
        order = pc.sort_indices(
            pa.table({"s": signal, "t": table.column("ts")}), [("s", "ascending"), ("t", "ascending")]
        )
        return table.take(order)
    chunks = signal.unify_dictionaries().chunks if signal.num_chunks else []
    dictionary = chunks[0].dictionary if chunks else pa.array([], pa.string())
    rank = np.empty(len(dictionary), dtype=np.int64)
    rank[np.argsort(np.asarray(dictionary.to_pylist(), dtype=object), kind="stable")] = np.arange(
        len(dictionary)
    )
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int64)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    # Ranks fit 16 bits for any realistic dictionary: NumPy's stable sort is then a radix sort.
    ranks = rank.astype(np.int16 if len(rank) < 1 << 15 else np.int64)[codes]
    order = np.argsort(ranks, kind="stable")
    r, t = ranks[order], ts[order]
    if not np.all((t[1:] >= t[:-1]) | (r[1:] != r[:-1])):
        order = np.lexsort((ts, ranks))  # time goes back within a signal: the full two-key sort
    if np.array_equal(order, np.arange(len(order))):
        return table
    return table.take(pa.array(order))
