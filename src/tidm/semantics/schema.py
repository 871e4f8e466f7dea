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
    """Build a samples table from column sequences (timestamps as integer µs since the epoch)."""
    arrays = [
        pa.array(ts_us, type=pa.int64()).cast(_TS),
        pa.array(recv_ts_us, type=pa.int64()).cast(_TS),
        pa.array(asset_id, type=pa.string()).dictionary_encode().cast(_DICT),
        pa.array(signal, type=pa.string()).dictionary_encode().cast(_DICT),
        pa.array(value, type=pa.float64()),
        pa.array(value_text, type=pa.string()),
        pa.array(quality, type=pa.uint8()),
        pa.array(status_code, type=pa.uint32()),
        pa.array(seq, type=pa.uint64()),
    ]
    return pa.Table.from_arrays(arrays, schema=SAMPLES_SCHEMA)


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
