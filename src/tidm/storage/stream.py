"""Bounded-memory reads of one unit: the objects' rows merged in (signal, ts) order, batch by batch.

Lake objects are each sorted by signal, then time, so a read never sorts globally: every object is
read as a stream of small batches (only the row groups whose statistics can hold the range and the
signals), and the streams are merged run by run. For the smallest signal at the heads of the
streams, rows up to the earliest "last time" of a stream whose run may continue in its next batch are
emitted (objects of one unit rarely overlap in time, so this is mostly concatenation); that stream
then moves on. Memory is one batch per object plus one output batch, whatever the result's size, and
a consumer that stops early leaves nothing behind once the generator is closed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tidm.storage.errors import LakeUnavailable
from tidm.storage.lake import Lake

__all__ = ["ObjectPlan", "count_rows", "merged_batches", "output_schema", "plan_objects"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _as_us(value: object) -> int | None:
    if isinstance(value, dt.datetime):
        delta = value.astimezone(dt.UTC) - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, int):
        return value
    return None


def _plain_type(field: pa.Field) -> pa.Field:
    if pa.types.is_dictionary(field.type):
        return pa.field(field.name, field.type.value_type, nullable=field.nullable)
    return field


def output_schema(schemas: Sequence[pa.Schema], metadata: bool) -> pa.Schema:
    """The union of the objects' schemas, dictionary columns as plain strings (one type per column
    for every client format), with `unit` and `semantic_id` appended on request."""
    if schemas:
        union = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    else:
        union = pa.schema(
            [
                pa.field("ts", pa.timestamp("us", tz="UTC")),
                pa.field("asset_id", pa.string()),
                pa.field("signal", pa.string()),
            ]
        )
    fields = [_plain_type(f) for f in union]
    if metadata:
        fields += [pa.field("unit", pa.string()), pa.field("semantic_id", pa.string())]
    return pa.schema(fields)


@dataclass
class ObjectPlan:
    """One object of a read: its opened file and the row groups that may hold matching rows."""

    key: str
    file: pq.ParquetFile
    row_groups: list[int]
    rows_bound: int


def plan_objects(
    lake: Lake, keys: Sequence[str], start_us: int, end_us: int, keep: Sequence[str] | None
) -> list[ObjectPlan]:
    """Open the objects (footers only) and prune their row groups by the ts and signal statistics."""
    plans = []
    wanted = sorted(keep) if keep is not None else None
    for key in keys:
        try:
            source = lake.filesystem.open_input_file(lake.path(key))
            file = pq.ParquetFile(source, pre_buffer=False, buffer_size=1 << 16)
        except OSError as exc:
            msg = f"cannot open lake object {key!r} at {lake.description}: {exc}"
            raise LakeUnavailable(msg) from exc
        meta = file.metadata
        names = [meta.schema.column(j).name for j in range(meta.num_columns)]
        ts_col = names.index("ts") if "ts" in names else None
        sig_col = names.index("signal") if "signal" in names else None
        groups, bound = [], 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if ts_col is not None:
                stats = group.column(ts_col).statistics
                if stats is not None and stats.has_min_max:
                    lo, hi = _as_us(stats.min), _as_us(stats.max)
                    if lo is not None and hi is not None and (hi < start_us or lo >= end_us):
                        continue
            if sig_col is not None and wanted is not None:
                stats = group.column(sig_col).statistics
                if stats is not None and stats.has_min_max:
                    lo_s, hi_s = str(stats.min), str(stats.max)
                    if not any(lo_s <= s <= hi_s for s in wanted):
                        continue
            groups.append(i)
            bound += group.num_rows
        plans.append(ObjectPlan(key, file, groups, bound))
    return plans


def _codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes and values of a string column (encoded here if it is not a dictionary)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    assert isinstance(column, pa.DictionaryArray)  # noqa: S101 - encoded just above
    indices = column.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return indices, [str(v) for v in column.dictionary.to_pylist()]


class _Stream:
    """One object's matching rows, a batch at a time, split into runs of one signal."""

    def __init__(
        self,
        plan: ObjectPlan,
        schema: pa.Schema,
        start_us: int,
        end_us: int,
        keep: frozenset[str] | None,
        drop: frozenset[str],
        batch_rows: int,
    ) -> None:
        names = set(plan.file.schema_arrow.names)
        self._columns = [f.name for f in schema if f.name in names]
        self._schema = schema
        self._start_us, self._end_us = start_us, end_us
        self._keep, self._drop = keep, drop
        self._batches = (
            plan.file.iter_batches(batch_size=batch_rows, row_groups=plan.row_groups, columns=self._columns)
            if plan.row_groups
            else iter(())
        )
        self.batch: pa.RecordBatch | None = None
        self.ts = np.empty(0, dtype=np.int64)
        self.runs: list[tuple[str, int, int]] = []
        self.run = 0
        self.pos = 0
        self.done = False
        self._load()

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        self.batch = None

    def _load(self) -> None:
        """Advance to the next batch that has matching rows (or to the end)."""
        while True:
            try:
                raw = next(self._batches)
            except StopIteration:
                self.done, self.batch, self.runs = True, None, []
                return
            except OSError as exc:
                msg = f"lake object read failed mid-stream: {exc}"
                raise LakeUnavailable(msg) from exc
            ts = raw.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
            codes, values = _codes(raw.column("signal"))
            mask = (ts >= self._start_us) & (ts < self._end_us)
            if self._keep is not None or self._drop:
                allowed = np.array(
                    [(self._keep is None or v in self._keep) and v not in self._drop for v in values],
                    dtype=bool,
                )
                mask &= allowed[codes] if len(values) else False
            if not mask.any():
                continue
            if not mask.all():
                raw = raw.filter(pa.array(mask))
                ts, codes = ts[mask], codes[mask]
            self.batch = _align(raw, self._schema)
            self.ts = ts
            cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
            starts = np.concatenate(([0], cuts))
            ends = np.concatenate((cuts, [len(codes)]))
            self.runs = [(values[codes[s]], int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
            self.run, self.pos = 0, 0
            return

    @property
    def signal(self) -> str:
        return self.runs[self.run][0]

    @property
    def open_end(self) -> bool:
        """The head run reaches the batch's end, so the next batch may continue it."""
        return self.runs[self.run][2] == self.batch.num_rows if self.batch is not None else False

    def last_ts(self) -> int:
        return int(self.ts[self.runs[self.run][2] - 1])

    def take(self, bound: int | None) -> pa.RecordBatch:
        """Rows of the head run with ts <= bound (all of it if None), advancing past them."""
        assert self.batch is not None  # noqa: S101 - only called on live streams
        _, _, end = self.runs[self.run]
        start = self.pos
        if bound is None:
            stop = end
        else:
            stop = start + int(np.searchsorted(self.ts[start:end], bound, side="right"))
        piece = self.batch.slice(start, stop - start)
        self.pos = stop
        if stop == end:
            self.run += 1
            if self.run == len(self.runs):
                self._load()
            else:
                self.pos = self.runs[self.run][1]
        return piece


def _align(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch in the output schema: columns cast, missing ones null, metadata columns null."""
    columns = []
    names = set(batch.schema.names)
    for field in schema:
        if field.name in names:
            column = batch.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _merge_pieces(pieces: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Pieces of one signal from several objects, in ts order: concatenated when their time ranges
    do not overlap (the usual case), else sorted within this small window."""
    if len(pieces) == 1:
        return pieces
    spans = []
    for piece in pieces:
        ts = piece.column("ts").cast(pa.int64())
        spans.append((int(pc.min(ts).as_py()), int(pc.max(ts).as_py()), piece))
    spans.sort(key=lambda s: (s[0], s[1]))
    if all(spans[i][0] >= spans[i - 1][1] for i in range(1, len(spans))):
        return [s[2] for s in spans]
    table = pa.Table.from_batches([s[2] for s in spans]).sort_by([("ts", "ascending")])
    batches: list[pa.RecordBatch] = table.to_batches()
    return batches


def merged_batches(
    plans: Sequence[ObjectPlan],
    schema: pa.Schema,
    start_us: int,
    end_us: int,
    *,
    keep: Sequence[str] | None,
    drop: Sequence[str],
    batch_rows: int,
    metadata: Mapping[str, tuple[str | None, str | None]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of the planned objects with start <= ts < end, in (signal, ts) order, in batches of
    about `batch_rows` rows."""
    # One batch per object in memory: smaller per object when many objects are merged.
    per_object = max(1024, min(batch_rows, (1 << 19) // max(len(plans), 1)))
    base = (
        pa.schema([f for f in schema if f.name not in ("unit", "semantic_id")])
        if metadata is not None
        else schema
    )
    streams = [
        _Stream(
            p,
            base,
            start_us,
            end_us,
            frozenset(keep) if keep is not None else None,
            frozenset(drop),
            per_object,
        )
        for p in plans
    ]
    out: list[pa.RecordBatch] = []
    rows = 0
    try:
        live = [s for s in streams if not s.done]
        while live:
            signal = min(s.signal for s in live)
            heads = [s for s in live if s.signal == signal]
            bounds = [s.last_ts() for s in heads if s.open_end]
            bound = min(bounds) if bounds else None
            pieces = [p for p in (s.take(bound) for s in heads) if p.num_rows]
            for piece in _merge_pieces(pieces) if pieces else ():
                while rows + piece.num_rows >= batch_rows:  # output batches of at most batch_rows
                    cut = batch_rows - rows
                    out.append(piece.slice(0, cut))
                    yield _finish(out, schema, metadata)
                    out, rows, piece = [], 0, piece.slice(cut)
                if piece.num_rows:
                    out.append(piece)
                    rows += piece.num_rows
            live = [s for s in live if not s.done]
        if out:
            yield _finish(out, schema, metadata)
    finally:
        for stream in streams:
            stream.close()


def _finish(
    pieces: list[pa.RecordBatch],
    schema: pa.Schema,
    metadata: Mapping[str, tuple[str | None, str | None]] | None,
) -> pa.RecordBatch:
    table = pa.Table.from_batches(pieces)
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else pieces[0]
    if metadata is None:
        return batch
    names = list(metadata)
    index = pc.index_in(batch.column("signal"), value_set=pa.array(names, pa.string()))
    units = pa.array([metadata[n][0] for n in names], pa.string()).take(index)
    semantic = pa.array([metadata[n][1] for n in names], pa.string()).take(index)
    return pa.RecordBatch.from_arrays([*batch.columns, units, semantic], schema=schema)


def count_rows(
    plans: Sequence[ObjectPlan], start_us: int, end_us: int, keep: Sequence[str] | None, drop: Sequence[str]
) -> int:
    """Matching rows of the planned objects, counted from the ts and signal columns alone."""
    keep_set = frozenset(keep) if keep is not None else None
    drop_set = frozenset(drop)
    total = 0
    for plan in plans:
        if not plan.row_groups:
            continue
        for raw in plan.file.iter_batches(
            batch_size=1 << 16, row_groups=plan.row_groups, columns=["ts", "signal"]
        ):
            ts = raw.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
            mask = (ts >= start_us) & (ts < end_us)
            if keep_set is not None or drop_set:
                codes, values = _codes(raw.column("signal"))
                allowed = np.array(
                    [(keep_set is None or v in keep_set) and v not in drop_set for v in values], dtype=bool
                )
                mask &= allowed[codes] if len(values) else False
            total += int(mask.sum())
    return total
