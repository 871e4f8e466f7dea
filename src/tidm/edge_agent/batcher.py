"""Batching: raw samples of one asset collected into columns until a size or age trigger fires.

The hot path is `add`, once per list of samples a source received: it appends to columns (no
per-sample objects of ours): typed arrays for the integers, Python lists for names, values and texts.
`take` wraps the typed arrays as NumPy arrays without a copy (pyarrow would convert a Python list of
ints element by element); quality is derived from the status codes there, vectorised.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample
from tidm.semantics import samples_table

__all__ = ["AssetBatch", "Batcher", "OpenBatch"]

# OPC UA status codes are 32-bit: the array type code of a 32-bit unsigned C integer on this platform.
_STATUS_CODE = "I" if array("I").itemsize == 4 else "L"
_STATUS = np.dtype(f"u{array(_STATUS_CODE).itemsize}")


@dataclass(slots=True)
class OpenBatch:
    """Columns of one asset's batch being filled."""

    asset_id: str
    opened_ns: int
    # Integer columns in typed arrays: appends store machine integers (no int objects kept alive),
    # `take` wraps them without a copy, and the garbage collector has nothing to walk in them (every
    # collection walks a young list item by item: with lists, 10% of the agent's CPU).
    ts: array[int] = field(default_factory=lambda: array("q"))
    recv: array[int] = field(default_factory=lambda: array("q"))
    signal: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    text: list[str | None] = field(default_factory=list)
    status: array[int] = field(default_factory=lambda: array(_STATUS_CODE))
    seq: array[int] = field(default_factory=lambda: array("Q"))
    sources: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.ts)

    def truncate(self, rows: int) -> None:
        """Forget every row from `rows` on (all columns, also those a failed append left longer)."""
        for column in (self.ts, self.recv, self.signal, self.value, self.text, self.status, self.seq):
            del column[rows:]


@dataclass(frozen=True)
class AssetBatch:
    asset_id: str
    table: pa.Table
    sources: tuple[str, ...]
    seq_first: int
    seq_last: int


def _quality(status: np.ndarray) -> np.ndarray:
    """OPC UA severity bits (Part 4, 7.39) -> 0 good, 1 uncertain, 2 bad (as quality_from_status)."""
    severity = (status >> 30) & 0b11
    quality: np.ndarray = np.minimum(severity, 2).astype(np.uint8)
    return quality


class Batcher:
    """Per-asset open batches; sequence numbers are assigned per source as samples arrive."""

    def __init__(self, *, max_rows: int, max_age_ms: int) -> None:
        self.max_rows = max_rows
        self.max_age_ns = max_age_ms * 1_000_000
        self._open: dict[str, OpenBatch] = {}
        self._seq: dict[str, int] = {}
        self.samples_in = 0

    def add(self, source: str, samples: Sequence[RawSample]) -> list[str]:
        """Add samples; return the asset ids whose batch reached the size trigger."""
        full: list[str] = []
        seq = self._seq.get(source, 0)
        now = time.monotonic_ns()
        open_batches = self._open
        max_rows = self.max_rows
        batch: OpenBatch | None = None
        current = None
        touched: list[tuple[OpenBatch, int]] = []  # each batch this call appends to, and its rows before
        s: RawSample | None = None
        try:
            for s in samples:
                asset_id = s.asset_id
                # Sources deliver runs of the same asset: look the batch up only when the asset changes.
                if asset_id != current or batch is None:
                    batch = open_batches.get(asset_id)
                    if batch is None:
                        batch = open_batches[asset_id] = OpenBatch(asset_id, now)
                    batch.sources.add(source)
                    touched.append((batch, len(batch)))
                    current = asset_id
                batch.ts.append(s.ts_us)
                batch.recv.append(s.recv_us)
                batch.signal.append(s.signal)
                batch.value.append(s.value)
                batch.text.append(s.value_text)
                batch.status.append(s.status_code)
                batch.seq.append(seq)
                seq += 1
                if len(batch.ts) == max_rows:
                    full.append(asset_id)
        except (TypeError, OverflowError) as exc:
            # A time or status code that is not an integer of its range: the whole call is undone
            # (latest first, so each batch ends at the rows it had before), nothing half-appended.
            for touched_batch, rows in reversed(touched):
                touched_batch.truncate(rows)
            where = f"{s.asset_id}/{s.signal}" if s is not None else "?"
            msg = (
                f"source {source}: a sample of {where} cannot be batched ({exc}); "
                f"none of the {len(samples)} samples it delivered were taken"
            )
            raise SourceError(msg) from exc
        self._seq[source] = seq
        self.samples_in += len(samples)
        return full

    def due(self, *, force: bool = False) -> list[str]:
        """Asset ids whose batch is full or old enough (all non-empty ones when `force`)."""
        now = time.monotonic_ns()
        return [
            a
            for a, b in self._open.items()
            if len(b) and (force or len(b) >= self.max_rows or now - b.opened_ns >= self.max_age_ns)
        ]

    def take(self, asset_id: str) -> AssetBatch | None:
        """Close the asset's batch and return it as a samples table."""
        batch = self._open.pop(asset_id, None)
        if batch is None or not len(batch):
            return None
        n = len(batch)
        status = np.frombuffer(batch.status, dtype=_STATUS).astype(np.uint32, copy=False)
        seq = np.frombuffer(batch.seq, dtype=np.uint64)
        table = samples_table(
            ts_us=np.frombuffer(batch.ts, dtype=np.int64),
            recv_ts_us=np.frombuffer(batch.recv, dtype=np.int64),
            asset_id=[asset_id] * n,
            signal=batch.signal,
            value=batch.value,
            value_text=batch.text,
            quality=_quality(status),
            status_code=status,
            seq=seq,
        )
        return AssetBatch(asset_id, table, tuple(sorted(batch.sources)), int(seq.min()), int(seq.max()))
