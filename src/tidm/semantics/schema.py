"""The canonical Arrow schemas every hop agrees on.

Samples are long format, one row per sample. Timestamps are microseconds in UTC (not nanoseconds)
because Spark, DuckDB and Athena read them; asset and signal are dictionary-encoded because a batch
holds few distinct values of each; units, semantic ids and classification live in the catalog.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from tidm.semantics.errors import SchemaError

__all__ = [
    "CLEAN_SCHEMA",
    "CLEAN_SCHEMA_VERSION",
    "SAMPLES_SCHEMA",
    "SCHEMA_VERSION",
    "Quality",
    "check_samples",
    "quality_from_status",
    "samples_table",
]

SCHEMA_VERSION = "samples/1"
CLEAN_SCHEMA_VERSION = "clean/1"

_TS = pa.timestamp("us", tz="UTC")
_DICT = pa.dictionary(pa.int32(), pa.string())


class Quality(enum.IntEnum):
    """OPC UA status severity folded into three levels."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("ts", _TS, nullable=False),
        pa.field("recv_ts", _TS, nullable=False),
        pa.field("asset_id", _DICT, nullable=False),
        pa.field("signal", _DICT, nullable=False),
        pa.field("value", pa.float64()),
        pa.field("value_text", pa.string()),
        pa.field("quality", pa.uint8(), nullable=False),
        pa.field("status_code", pa.uint32(), nullable=False),
        pa.field("seq", pa.uint64(), nullable=False),
    ]
)

# The clean table adds what the cleaning steps did to each sample (a bitmask of step flags).
CLEAN_SCHEMA = SAMPLES_SCHEMA.append(pa.field("flags", pa.uint32(), nullable=False))


def quality_from_status(status_code: int) -> Quality:
    """Map an OPC UA status code to a quality level by its severity bits (Part 4, 7.39)."""
    severity = (status_code >> 30) & 0b11
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    return Quality.BAD


def samples_table(
    *,
    ts_us: Sequence[int] | np.ndarray,
    recv_ts_us: Sequence[int] | np.ndarray,
    asset_id: Sequence[str],
    signal: Sequence[str],
    value: Sequence[float | None] | np.ndarray,
    value_text: Sequence[str | None],
    quality: Sequence[int] | np.ndarray,
    status_code: Sequence[int] | np.ndarray,
    seq: Sequence[int] | np.ndarray,
) -> pa.Table:
    """Build a samples table from column sequences (timestamps as integer µs since the epoch).

    NumPy columns of the schema's dtype are wrapped without a copy, and lists of strings and of
    floats are encoded here: `pa.array()` on any Python or NumPy input consults pyarrow's pandas
    shim, which imports pandas (about 30 MB) wherever it is installed, though nothing here needs it.
    Other inputs go through `pa.array()` with its checks.
    """
    arrays = [
        _numeric(ts_us, np.int64, _TS),
        _numeric(recv_ts_us, np.int64, _TS),
        _dictionary(asset_id),
        _dictionary(signal),
        _floats(value),
        _strings(value_text),
        _numeric(quality, np.uint8, pa.uint8()),
        _numeric(status_code, np.uint32, pa.uint32()),
        _numeric(seq, np.uint64, pa.uint64()),
    ]
    return pa.Table.from_arrays(arrays, schema=SAMPLES_SCHEMA)


def _numeric(values: Sequence[int] | np.ndarray, dtype: type[np.generic], arrow: pa.DataType) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype == dtype and values.ndim == 1:
        data = np.ascontiguousarray(values)
        return pa.Array.from_buffers(arrow, len(data), [None, pa.py_buffer(data)])
    if arrow == _TS:
        return pa.array(values, type=pa.int64()).cast(_TS)
    return pa.array(values, type=arrow)


def _floats(values: Sequence[float | None] | np.ndarray) -> pa.Array:
    if not isinstance(values, list | tuple):
        return pa.array(values, type=pa.float64())
    try:
        data = np.array(values, dtype=np.float64)  # None -> NaN, masked as null below
    except (TypeError, ValueError):  # not numbers: let pyarrow reject them with its message
        return pa.array(values, type=pa.float64())
    if data.ndim != 1:
        return pa.array(values, type=pa.float64())
    nulls = values.count(None)
    return pa.Array.from_buffers(
        pa.float64(),
        len(data),
        [_validity(values) if nulls else None, pa.py_buffer(data)],
        null_count=nulls,
    )


def _strings(values: Sequence[str | None]) -> pa.Array:
    if not isinstance(values, list | tuple):
        return pa.array(values, type=pa.string())
    n = len(values)
    nulls = values.count(None)
    if nulls == n:
        return pa.nulls(n, pa.string())
    try:
        encoded = [b"" if v is None else v.encode() for v in values]
    except (AttributeError, UnicodeEncodeError):  # not str: let pyarrow convert or reject it
        return pa.array(values, type=pa.string())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
    if offsets[-1] >= 2**31:
        return pa.array(values, type=pa.string())
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [
            _validity(values) if nulls else None,
            pa.py_buffer(offsets.astype(np.int32)),
            pa.py_buffer(b"".join(encoded)),
        ],
        null_count=nulls,
    )


def _dictionary(values: Sequence[str]) -> pa.Array:
    if not isinstance(values, list | tuple):
        return pa.array(values, type=pa.string()).dictionary_encode().cast(_DICT)
    codes: dict[str, int] = {}
    indices = np.fromiter(
        (codes.setdefault(v, len(codes)) for v in values), dtype=np.int32, count=len(values)
    )
    if None in codes:  # a null name: let pyarrow encode it as before
        return pa.array(values, type=pa.string()).dictionary_encode().cast(_DICT)
    return pa.DictionaryArray.from_arrays(_numeric(indices, np.int32, pa.int32()), _strings(list(codes)))


def _validity(values: Sequence[object]) -> pa.Buffer:
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def check_samples(table: pa.Table, *, where: str) -> pa.Table:
    """Return `table` if its columns match the samples schema; raise naming `where` otherwise.

    Schema metadata is ignored here (provenance lives there); field names, order and types must match.
    """
    got = table.schema.remove_metadata()
    if got.names != SAMPLES_SCHEMA.names:
        msg = f"{where}: columns {got.names} are not the samples schema {SAMPLES_SCHEMA.names}"
        raise SchemaError(msg)
    for field, want in zip(got, SAMPLES_SCHEMA, strict=True):
        if field.type != want.type:
            msg = f"{where}: column '{field.name}' has type {field.type}, expected {want.type}"
            raise SchemaError(msg)
    return table
