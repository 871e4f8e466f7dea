"""From an Arrow samples/clean table to contiguous per-signal segments, without per-row Python.

A segment is a run of rows with one (asset_id, signal): the dictionary indices of both columns are
combined into one integer key and the run boundaries are where the key changes. Tables are grouped
(and, if asked, time-sorted) first with one stable NumPy sort when they are not already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from tidm.stream_processing.kernels._arrays import BOOL, F64, I64, U32
from tidm.stream_processing.kernels.errors import KernelError
from tidm.stream_processing.kernels.ordering import _is_sorted_kernel

__all__ = ["Order", "Segments", "segment_table"]

Order = Literal["ts", "arrival", "none"]


@dataclass(frozen=True)
class Segments:
    """A table cut into per-(asset, signal) segments: rows offsets[s]:offsets[s + 1] of `table`.

    The arrays are the table's columns as contiguous NumPy (value NaN where null; flags zeros when the
    table has none). `text[s]` is True when every row of segment s carries `value_text` (a text signal).
    """

    table: pa.Table
    offsets: I64
    asset: list[str]
    signal: list[str]
    ts: I64
    values: F64
    flags: U32
    has_text: BOOL  # per row: value_text is set
    text: BOOL  # per segment

    @property
    def count(self) -> int:
        return int(self.offsets.size - 1)


def _indices(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    chunk = column.chunk(0)
    if pa.types.is_dictionary(chunk.type):
        return chunk.indices.to_numpy(zero_copy_only=False).astype(np.int64), chunk.dictionary.to_pylist()
    encoded = chunk.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _runs(key: np.ndarray) -> I64:
    n = key.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(key[1:] != key[:-1]) + 1
    return np.concatenate(([0], change, [n])).astype(np.int64)


def segment_table(table: pa.Table, *, order: Order = "ts", where: str = "segment_table") -> Segments:
    """Cut `table` into per-(asset_id, signal) segments.

    order="ts": segments sorted by time (stable sort of the table only when needed); "arrival": rows
    grouped by signal but kept in arrival order within it; "none": the table must already be grouped.
    """
    n = table.num_rows
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Segments(
            table,
            np.zeros(1, dtype=np.int64),
            [],
            [],
            empty,
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.uint32),
            np.zeros(0, dtype=np.bool_),
            np.zeros(0, dtype=np.bool_),
        )
    table = table.unify_dictionaries().combine_chunks()
    asset_idx, assets = _indices(table.column("asset_id"))
    signal_idx, signals = _indices(table.column("signal"))
    key = (asset_idx << 32) | signal_idx
    ts = table.column("ts").chunk(0).view(pa.int64()).to_numpy(zero_copy_only=False)
    offsets = _runs(key)
    starts = key[offsets[:-1]]
    grouped = np.unique(starts).size == starts.size
    if order == "none" and not grouped:
        msg = f"{where}: rows of one (asset_id, signal) are not contiguous; sort the table by signal first"
        raise KernelError(msg)
    if not grouped or (order == "ts" and not _is_sorted_kernel(np.ascontiguousarray(ts), offsets)):
        perm = np.lexsort((ts, key)) if order == "ts" else np.argsort(key, kind="stable")
        table = table.take(pa.array(perm))
        key = key[perm]
        ts = ts[perm]
        offsets = _runs(key)
        starts = key[offsets[:-1]]
    values = table.column("value").chunk(0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if "flags" in table.column_names:
        flags = table.column("flags").chunk(0).to_numpy(zero_copy_only=False).astype(np.uint32)
    else:
        flags = np.zeros(n, dtype=np.uint32)
    has_text = table.column("value_text").chunk(0).is_valid().to_numpy(zero_copy_only=False)
    text = np.logical_and.reduceat(has_text, offsets[:-1]) if n else np.zeros(0, dtype=np.bool_)
    return Segments(
        table=table,
        offsets=offsets,
        asset=[assets[int(k >> 32)] for k in starts],
        signal=[signals[int(k & 0xFFFFFFFF)] for k in starts],
        ts=np.ascontiguousarray(ts, dtype=np.int64),
        values=np.ascontiguousarray(values),
        flags=np.ascontiguousarray(flags),
        has_text=np.ascontiguousarray(has_text, dtype=np.bool_),
        text=np.ascontiguousarray(text, dtype=np.bool_),
    )
