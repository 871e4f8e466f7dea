"""Encoders of streamed reads: Arrow IPC, Parquet (a row group per batch), CSV and JSON lines, each
yielding bytes batch by batch, so neither `tidm serve` nor `tidm query` holds a whole result."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["MEDIA_TYPES", "Format", "encode"]

Format = Literal["arrow", "parquet", "csv", "json"]
MEDIA_TYPES: dict[str, str] = {
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "json": "application/x-ndjson",
}


def _frame(batch: pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)  # noqa: S101 - from_arrow of a batch is a frame
    return frame


def encode(schema: pa.Schema, batches: Iterable[pa.RecordBatch], fmt: Format) -> Iterator[bytes]:
    """The batches encoded as `fmt`, one chunk of bytes per batch (and the trailer at the end)."""
    drain = _Drain()
    writer: Any = None
    if fmt == "arrow":
        writer = pa.ipc.new_stream(drain, schema)
    elif fmt == "parquet":
        writer = pq.ParquetWriter(drain, schema, compression="zstd")
    first = True
    for batch in batches:
        if fmt == "arrow":
            writer.write_batch(batch)
        elif fmt == "parquet":
            writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))
        elif fmt == "csv":
            drain.write(_frame(batch).write_csv(include_header=first).encode())
        else:
            drain.write(_frame(batch).write_ndjson().encode())
        first = False
        yield drain.take()
    if fmt == "csv" and first:
        drain.write(_frame(pa.RecordBatch.from_pylist([], schema=schema)).write_csv().encode())
    if writer is not None:
        writer.close()
    yield drain.take()


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out after each batch, so the writers can stream."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out
