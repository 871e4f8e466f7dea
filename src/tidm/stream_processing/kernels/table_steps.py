"""The kernels as steps on Arrow samples/clean tables: each returns a StepResult (kept, rejected, counts).

Every step segments its input by (asset_id, signal), runs one kernel over all segments, and ORs what it
did into the `flags` column (added when the input is a plain samples table). Value steps carry
text-valued rows through untouched (flags unchanged), so a text signal is never silently dropped; the
time steps (dedup, order, gap detection) treat text signals like any other. Rows a step
takes out of the stream (rejected values, duplicates, compressed-away samples) are in `rejected` with
the flag saying why, and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tidm.semantics import CLEAN_SCHEMA, Quality
from tidm.stream_processing.kernels import _flags as fl
from tidm.stream_processing.kernels.compression import deadband, swinging_door
from tidm.stream_processing.kernels.despike import hampel
from tidm.stream_processing.kernels.errors import KernelError
from tidm.stream_processing.kernels.gaps import fill_gaps
from tidm.stream_processing.kernels.ordering import duplicate_flags, out_of_order_flags
from tidm.stream_processing.kernels.resample import resample
from tidm.stream_processing.kernels.rolling import ROLLING_STATS, rolling_stats
from tidm.stream_processing.kernels.segments import Segments, segment_table
from tidm.stream_processing.kernels.spectral import spectral_features, window_starts
from tidm.stream_processing.kernels.units import SI_UNITS, convert
from tidm.stream_processing.kernels.validity import flatline_flags, range_flags
from tidm.stream_processing.privacy import Mechanism, PrivateReleaser
from tidm.stream_processing.steps import StepResult

__all__ = [
    "deadband_step",
    "dedup_step",
    "despike_step",
    "dp_noise_step",
    "flatline_step",
    "gap_fill_step",
    "order_step",
    "resample_step",
    "rolling_step",
    "spectral_step",
    "swinging_door_step",
    "to_si_step",
    "validity_step",
]

# Generated rows (gap fill) are estimates, not measurements: OPC UA "Uncertain" severity, no sub-code.
_UNCERTAIN_STATUS = 0x40000000


def _empty_clean() -> pa.Table:
    return CLEAN_SCHEMA.empty_table()


def _clean(seg: Segments, flags: np.ndarray, values: np.ndarray | None = None) -> pa.Table:
    """seg.table with the given flags (and values, nulls kept null) in the clean schema."""
    table = seg.table.replace_schema_metadata(None)
    flag_array = pa.array(flags, type=pa.uint32())
    if "flags" in table.column_names:
        table = table.set_column(table.column_names.index("flags"), CLEAN_SCHEMA.field("flags"), flag_array)
    else:
        table = table.append_column(CLEAN_SCHEMA.field("flags"), flag_array)
    if values is not None:
        column = table.column("value")
        null = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        table = table.set_column(
            table.column_names.index("value"),
            CLEAN_SCHEMA.field("value"),
            pa.array(values, type=pa.float64(), mask=null),
        )
    return table


def _split(
    seg: Segments,
    flags: np.ndarray,
    reject: np.ndarray,
    counts: dict[str, int],
    values: np.ndarray | None = None,
) -> StepResult:
    table = _clean(seg, flags, values)
    kept = table.filter(pa.array(~reject)) if reject.any() else table
    rejected = table.filter(pa.array(reject)) if reject.any() else table.slice(0, 0)
    base = {"rows_in": table.num_rows, "rows_kept": kept.num_rows, "rows_rejected": rejected.num_rows}
    return StepResult(kept, rejected, base | counts)


def _numeric_only(seg: Segments, new_flags: np.ndarray) -> np.ndarray:
    """Flags from a kernel, except on text rows, which keep the flags they came with."""
    return np.where(seg.has_text, seg.flags, new_flags).astype(np.uint32)


def _bits(flags: np.ndarray, bit: np.uint32) -> int:
    return int(np.count_nonzero(flags & bit))


def validity_step(
    table: pa.Table,
    *,
    lo: float = -np.inf,
    hi: float = np.inf,
    limits: Mapping[str, Sequence[float]] | None = None,
    reject: bool = True,
) -> StepResult:
    """Flag NaN, ±inf and values outside [lo, hi] (per signal from `limits`: signal -> (lo, hi));
    flagged rows are rejected unless `reject` is False.
    """
    seg = segment_table(table, order="arrival", where="validity")
    lows = np.array([limits.get(s, (lo, hi))[0] if limits else lo for s in seg.signal], dtype=np.float64)
    highs = np.array([limits.get(s, (lo, hi))[1] if limits else hi for s in seg.signal], dtype=np.float64)
    flags = range_flags(seg.values, lows, highs, offsets=seg.offsets, flags=seg.flags.copy())
    flags = _numeric_only(seg, flags)
    found = (flags & (fl.NAN_VALUE | fl.NOT_FINITE | fl.OUT_OF_RANGE)) != 0
    found &= ~seg.has_text
    counts = {
        "nan_value": _bits(flags & ~seg.flags, fl.NAN_VALUE),
        "not_finite": _bits(flags & ~seg.flags, fl.NOT_FINITE),
        "out_of_range": _bits(flags & ~seg.flags, fl.OUT_OF_RANGE),
    }
    return _split(seg, flags, found if reject else np.zeros_like(found), counts)


def flatline_step(
    table: pa.Table, *, min_count: int, min_duration_us: int = 0, tol: float = 0.0, reject: bool = False
) -> StepResult:
    """Flag stuck-sensor runs (≥ `min_count` values within `tol`, spanning ≥ `min_duration_us`)."""
    seg = segment_table(table, order="ts", where="flatline")
    flags = flatline_flags(
        seg.ts,
        seg.values,
        min_count=min_count,
        min_duration_us=min_duration_us,
        tol=tol,
        offsets=seg.offsets,
        flags=seg.flags.copy(),
    )
    flags = _numeric_only(seg, flags)
    hit = ((flags & fl.FLATLINE) != 0) & ~seg.has_text
    return _split(seg, flags, hit if reject else np.zeros_like(hit), {"flatline": int(hit.sum())})


def despike_step(table: pa.Table, *, k: int, n_sigmas: float = 3.0, mode: str = "flag") -> StepResult:
    """Hampel despiking per signal; `mode` "flag" keeps spikes flagged, "replace" swaps in the window
    median (flag SPIKE_REPLACED), "reject" moves spikes to `rejected`.
    """
    if mode not in ("flag", "replace", "reject"):
        msg = f"despike: mode must be 'flag', 'replace' or 'reject', got {mode!r}"
        raise KernelError(msg)
    seg = segment_table(table, order="ts", where="despike")
    values, flags, spikes = hampel(
        seg.values,
        k=k,
        n_sigmas=n_sigmas,
        replace=mode == "replace",
        offsets=seg.offsets,
        flags=seg.flags.copy(),
    )
    flags = _numeric_only(seg, flags)
    hit = ((flags & fl.SPIKE) != 0) & ((seg.flags & fl.SPIKE) == 0) & ~seg.has_text
    reject = hit if mode == "reject" else np.zeros_like(hit)
    return _split(seg, flags, reject, {"spikes": int(hit.sum())}, values if mode == "replace" else None)


def _compressed(seg: Segments, kept: np.ndarray, counts: dict[str, int]) -> StepResult:
    keep = seg.has_text.copy()
    keep[kept] = True
    drop = ~keep
    flags = seg.flags.copy()
    flags[drop] |= fl.COMPRESSED
    return _split(seg, flags, drop, counts | {"compressed": int(drop.sum())})


def deadband_step(table: pa.Table, *, d: float, max_interval_us: int = 0) -> StepResult:
    """Keep only changes larger than `d` per signal (and one at least every `max_interval_us`)."""
    seg = segment_table(table, order="ts", where="deadband")
    kept = deadband(seg.ts, seg.values, d=d, max_interval_us=max_interval_us, offsets=seg.offsets)
    return _compressed(seg, kept, {})


def swinging_door_step(table: pa.Table, *, e: float) -> StepResult:
    """Swinging-door compression per signal with deviation `e`."""
    seg = segment_table(table, order="ts", where="swinging_door")
    kept = swinging_door(seg.ts, seg.values, e=e, offsets=seg.offsets)
    return _compressed(seg, kept, {})


def dedup_step(table: pa.Table, *, keep: str = "last") -> StepResult:
    """Reject all but the last (or first, in arrival order) sample of each (signal, ts)."""
    seg = segment_table(table, order="ts", where="dedup")
    flags, count = duplicate_flags(seg.ts, keep=keep, offsets=seg.offsets, flags=seg.flags.copy())
    dup = (flags & fl.DUPLICATE) != 0
    return _split(seg, flags, dup & ~((seg.flags & fl.DUPLICATE) != 0), {"duplicates": count})


def order_step(table: pa.Table, *, mode: str = "sort") -> StepResult:
    """Flag samples that arrived older than one before them (per signal). "sort": keep them and sort
    each signal by time; "reject": move them to `rejected` and keep the rest in arrival order.
    """
    if mode not in ("sort", "reject"):
        msg = f"order: mode must be 'sort' or 'reject', got {mode!r}"
        raise KernelError(msg)
    seg = segment_table(table, order="arrival", where="order")
    flags, count = out_of_order_flags(seg.ts, offsets=seg.offsets, flags=seg.flags.copy())
    late = ((flags & fl.OUT_OF_ORDER) != 0) & ((seg.flags & fl.OUT_OF_ORDER) == 0)
    if mode == "reject":
        return _split(seg, flags, late, {"out_of_order": count})
    result = _split(seg, flags, np.zeros_like(late), {"out_of_order": count})
    resorted = segment_table(result.kept, order="ts", where="order")
    return StepResult(resorted.table, result.rejected, result.counts)


def gap_fill_step(
    table: pa.Table, *, gap_us: int, step_us: int, max_fill: int, method: str = "linear"
) -> StepResult:
    """Flag samples after gaps longer than `gap_us` and fill up to `max_fill` rows per gap every
    `step_us` (linear or previous value; quality UNCERTAIN, flag GAP_FILLED). Text signals get gap
    flags but no generated rows.
    """
    seg = segment_table(table, order="ts", where="gap_fill")
    # Text signals are neither filled nor interpolated: give them an impossible gap limit.
    numeric_offsets = seg.offsets
    filled = fill_gaps(
        seg.ts,
        np.where(seg.has_text, np.nan, seg.values),
        gap_us=gap_us,
        step_us=step_us,
        max_fill=max_fill,
        method=method,
        offsets=numeric_offsets,
        flags=seg.flags,
    )
    # The generated rows sit just before the real sample after their gap; they borrow its asset, signal
    # and recv_ts (when the gap became known). Text segments keep their rows but lose generated ones.
    m = filled.ts.size
    real = filled.source >= 0
    pos = np.where(real, np.arange(m), m - 1)
    nxt = np.minimum.accumulate(pos[::-1])[::-1]
    take = filled.source[nxt]
    seg_of_row = np.repeat(np.arange(seg.count), np.diff(filled.offsets))
    drop_generated = ~real & seg.text[seg_of_row] if seg.count else np.zeros(m, dtype=np.bool_)
    base = seg.table.replace_schema_metadata(None).take(pa.array(take))
    generated = ~real
    out = _clean_from(base, filled.flags, filled.values, filled.ts, generated)
    if drop_generated.any():
        out = out.filter(pa.array(~drop_generated))
        generated = generated[~drop_generated]
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": out.num_rows,
        "rows_rejected": 0,
        "gaps": _bits(filled.flags[real] & ~seg.flags[filled.source[real]], fl.GAP_BEFORE),
        "filled": int(generated.sum()),
    }
    return StepResult(out, _empty_clean(), counts)


def _clean_from(
    base: pa.Table, flags: np.ndarray, values: np.ndarray, ts: np.ndarray, generated: np.ndarray
) -> pa.Table:
    """Clean-schema rows from `base` (taken rows), overriding ts/value/flags, and for generated rows
    value_text (null), quality (UNCERTAIN), status (Uncertain).
    """
    names = CLEAN_SCHEMA.names
    cols: dict[str, Any] = {name: base.column(name) for name in names if name in base.column_names}
    cols["ts"] = pa.array(ts, type=pa.int64()).cast(CLEAN_SCHEMA.field("ts").type)
    value_null = base.column("value").is_null().to_numpy(zero_copy_only=False) & ~generated
    cols["value"] = pa.array(values, type=pa.float64(), mask=value_null if value_null.any() else None)
    cols["flags"] = pa.array(flags, type=pa.uint32())
    if generated.any():
        gen = pa.array(generated)
        cols["value_text"] = pa.compute.if_else(gen, pa.scalar(None, pa.string()), base.column("value_text"))
        quality = base.column("quality").to_numpy().copy()
        quality[generated] = Quality.UNCERTAIN
        cols["quality"] = pa.array(quality, type=pa.uint8())
        status = base.column("status_code").to_numpy().copy()
        status[generated] = _UNCERTAIN_STATUS
        cols["status_code"] = pa.array(status, type=pa.uint32())
    return pa.Table.from_arrays([cols[name] for name in names], schema=CLEAN_SCHEMA)


def resample_step(table: pa.Table, *, step_us: int, method: str = "mean", origin_us: int = 0) -> StepResult:
    """Replace each numeric signal by one row per non-empty bucket of `step_us` (flag RESAMPLED; for
    "linear", per bucket start inside the data). Rows borrow asset/signal/recv_ts/quality/status/seq
    from the last sample before the bucket's end. Text signals pass through unchanged.
    """
    seg = segment_table(table, order="ts", where="resample")
    numeric = np.repeat(~seg.text, np.diff(seg.offsets))
    # Text signals are left out of the kernel's input (empty segments): no buckets over their span.
    rows = np.flatnonzero(numeric)
    sizes = np.where(seg.text, 0, np.diff(seg.offsets))
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    ts = seg.ts[rows]
    values = np.where(seg.has_text[rows], np.nan, seg.values[rows])
    res = resample(ts, values, step_us=step_us, method=method, origin_us=origin_us, offsets=offsets)
    present = np.isfinite(res.values) if method == "linear" else res.count > 0
    # Source row: the last sample with ts < bucket end, searched within its own segment.
    take = np.empty(res.ts.size, dtype=np.int64)
    for s in range(seg.count):
        a, b = offsets[s], offsets[s + 1]
        lo, hi = res.offsets[s], res.offsets[s + 1]
        idx = np.searchsorted(ts[a:b], res.ts[lo:hi] + step_us, side="left") - 1
        take[lo:hi] = rows[a + np.maximum(idx, 0)]
    take = take[present]
    base = seg.table.replace_schema_metadata(None).take(pa.array(take))
    flags = np.full(take.size, fl.RESAMPLED, dtype=np.uint32)
    out = _clean_from(base, flags, res.values[present], res.ts[present], np.zeros(take.size, dtype=np.bool_))
    if not numeric.all():
        out = pa.concat_tables([out, _clean(seg, seg.flags).filter(pa.array(~numeric))])
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": out.num_rows,
        "rows_rejected": 0,
        "buckets": int(present.sum()),
        "text_rows": int((~numeric).sum()),
    }
    return StepResult(out, _empty_clean(), counts)


def rolling_step(
    table: pa.Table, *, window_n: int = 0, window_us: int = 0, min_periods: int = 1
) -> StepResult:
    """Rolling statistics per numeric sample (a features table: ts, asset_id, signal, then
    mean/std/min/max/rms/skew/kurt/crest/p2p and count over the window ending at the sample).
    """
    seg = segment_table(table, order="ts", where="rolling")
    values = np.where(seg.has_text, np.nan, seg.values)
    stats = rolling_stats(
        seg.ts, values, window_n=window_n, window_us=window_us, min_periods=min_periods, offsets=seg.offsets
    )
    numeric = ~seg.has_text
    base = seg.table.filter(pa.array(numeric)) if not numeric.all() else seg.table
    arrays: list[pa.Array | pa.ChunkedArray] = [
        base.column("ts"),
        base.column("asset_id"),
        base.column("signal"),
    ]
    names = ["ts", "asset_id", "signal"]
    for name in ROLLING_STATS:
        col = stats[name][numeric]
        arrays.append(pa.array(col.astype(np.int64)) if name == "count" else pa.array(col))
        names.append(name)
    out = pa.Table.from_arrays(arrays, names=names)
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": out.num_rows,
        "rows_rejected": 0,
        "text_rows": int(seg.has_text.sum()),
    }
    return StepResult(out, _empty_clean(), counts)


def spectral_step(
    table: pa.Table,
    *,
    m: int,
    bands: Sequence[Sequence[float]],
    fs: float | None = None,
    hop: int | None = None,
) -> StepResult:
    """Spectral features per window of `m` samples (`hop` apart) of each numeric signal: a features
    table (asset_id, signal, ts of the first and last sample, fs, one column per band, peak_hz,
    total_power). `fs` defaults to 1e6 / the median sample interval (µs) of each signal.
    """
    seg = segment_table(table, order="ts", where="spectral")
    band_list = [(float(b[0]), float(b[1])) for b in bands]
    starts_all: list[np.ndarray] = []
    fs_all: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, float]] = []
    for s in range(seg.count):
        a, b = int(seg.offsets[s]), int(seg.offsets[s + 1])
        if seg.text[s] or b - a < m:
            continue
        rate = fs
        if rate is None:
            dt = np.diff(seg.ts[a:b])
            med = float(np.median(dt)) if dt.size else 0.0
            if med <= 0:
                continue
            rate = 1e6 / med
        starts = window_starts(np.array([a, b]), m, hop)
        parts.append((starts, rate))
    names = ["asset_id", "signal", "ts", "ts_end", "fs"]
    names += [f"band_{lo:g}_{hi:g}_hz" for lo, hi in band_list] + ["peak_hz", "total_power"]
    cols: list[list[np.ndarray]] = [[] for _ in range(len(band_list) + 2)]
    for starts, rate in parts:
        spec = spectral_features(seg.values, starts, m=m, fs=rate, bands=band_list)
        for q in range(len(band_list)):
            cols[q].append(spec.bands[:, q])
        cols[-2].append(spec.peak_hz)
        cols[-1].append(spec.total)
        starts_all.append(starts)
        fs_all.append(np.full(starts.size, rate))
    starts = np.concatenate(starts_all) if starts_all else np.zeros(0, dtype=np.int64)
    base = seg.table.take(pa.array(starts))
    ts_end = pa.array(seg.ts[starts + m - 1] if starts.size else np.zeros(0, np.int64)).cast(
        CLEAN_SCHEMA.field("ts").type
    )
    arrays: list[Any] = [base.column("asset_id"), base.column("signal"), base.column("ts"), ts_end]
    arrays.append(pa.array(np.concatenate(fs_all) if fs_all else np.zeros(0)))
    for chunks in cols:
        arrays.append(pa.array(np.concatenate(chunks) if chunks else np.zeros(0)))
    out = pa.Table.from_arrays(arrays, names=names)
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": out.num_rows,
        "rows_rejected": 0,
        "windows": out.num_rows,
    }
    return StepResult(out, _empty_clean(), counts)


def to_si_step(table: pa.Table, *, units: Mapping[str, str]) -> StepResult:
    """Convert values to SI using the catalog units (`units`: signal -> UCUM-style code). Signals with
    an unknown unit are rejected (flag UNIT_UNKNOWN); signals not in `units` and text rows pass through.
    """
    seg = segment_table(table, order="arrival", where="to_si")
    factor = np.ones(seg.count)
    offset = np.zeros(seg.count)
    unknown = np.zeros(seg.count, dtype=np.bool_)
    listed = np.zeros(seg.count, dtype=np.bool_)
    for s, name in enumerate(seg.signal):
        unit = units.get(name)
        if unit is None:
            continue
        conv = SI_UNITS.get(unit.strip())
        if conv is None:
            unknown[s] = True
            continue
        listed[s] = True
        factor[s] = conv.factor
        offset[s] = conv.offset
    rows = np.diff(seg.offsets)
    converted, new_flags = convert(seg.values, factor, offset, offsets=seg.offsets, flags=seg.flags.copy())
    convert_row = np.repeat(listed, rows) & ~seg.has_text
    flags = np.where(convert_row, new_flags, seg.flags).astype(np.uint32)
    values = np.where(convert_row, converted, seg.values)
    unknown_row = np.repeat(unknown, rows)
    flags[unknown_row] |= fl.UNIT_UNKNOWN
    counts = {
        "converted": int(convert_row.sum()),
        "unit_unknown": int(unknown_row.sum()),
        "no_unit": int((~np.repeat(listed | unknown, rows)).sum()),
    }
    return _split(seg, flags, unknown_row, counts, values)


def dp_noise_step(
    table: pa.Table,
    *,
    releaser: PrivateReleaser,
    dataset: str,
    columns: Sequence[str],
    sensitivity: float,
    epsilon: float,
    delta: float = 0.0,
    mechanism: Mechanism = "laplace",
) -> StepResult:
    """Add differential-privacy noise to aggregate `columns` of a features/resampled table through
    `tidm.stream_processing.privacy.PrivateReleaser` (which spends the dataset's budget in its ledger
    first and raises BudgetExceeded without noising anything). Each column is one release of
    (`epsilon`, `delta`); rows with a `flags` column get DP_NOISE.
    """
    if not isinstance(releaser, PrivateReleaser):
        msg = f"dp_noise: releaser must be a PrivateReleaser, got {type(releaser).__name__}"
        raise KernelError(msg)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        msg = f"dp_noise: columns {missing} are not in the table ({table.column_names})"
        raise KernelError(msg)
    out = table
    for name in columns:
        data = out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        noisy = releaser.release(
            dataset,
            data,
            sensitivity=sensitivity,
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            query=f"dp_noise:{name}",
        )
        out = out.set_column(
            out.column_names.index(name), name, pa.array(np.asarray(noisy, dtype=np.float64))
        )
    if "flags" in out.column_names:
        flags = out.column("flags").to_numpy(zero_copy_only=False).astype(np.uint32) | fl.DP_NOISE
        out = out.set_column(out.column_names.index("flags"), CLEAN_SCHEMA.field("flags"), pa.array(flags))
    counts = {
        "rows_in": table.num_rows,
        "rows_kept": out.num_rows,
        "rows_rejected": 0,
        "released": len(columns),
    }
    return StepResult(out, table.slice(0, 0), counts)
