"""Batching: raw samples of one asset collected into columns until a size or age trigger fires."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from tidm.edge_agent.sources.base import RawSample
from tidm.semantics import quality_from_status, samples_table

__all__ = ["AssetBatch", "Batcher", "OpenBatch"]


@dataclass
class OpenBatch:
    """Columns of one asset's batch being filled."""

    asset_id: str
    opened_ns: int
    ts: list[int] = field(default_factory=list)
    recv: list[int] = field(default_factory=list)
    signal: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    text: list[str | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class AssetBatch:
    asset_id: str
    table: pa.Table
    sources: tuple[str, ...]
    seq_first: int
    seq_last: int


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
        full = []
        seq = self._seq.get(source, 0)
        now = time.monotonic_ns()
        for s in samples:
            batch = self._open.get(s.asset_id)
            if batch is None:
                batch = self._open[s.asset_id] = OpenBatch(s.asset_id, now)
            batch.ts.append(s.ts_us)
            batch.recv.append(s.recv_us)
            batch.signal.append(s.signal)
            batch.value.append(s.value)
            batch.text.append(s.value_text)
            batch.quality.append(int(quality_from_status(s.status_code)))
            batch.status.append(s.status_code)
            batch.seq.append(seq)
            batch.sources.add(source)
            seq += 1
            if len(batch) == self.max_rows:
                full.append(s.asset_id)
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
        table = samples_table(
            ts_us=batch.ts,
            recv_ts_us=batch.recv,
            asset_id=[asset_id] * len(batch),
            signal=batch.signal,
            value=batch.value,
            value_text=batch.text,
            quality=batch.quality,
            status_code=batch.status,
            seq=batch.seq,
        )
        return AssetBatch(asset_id, table, tuple(sorted(batch.sources)), min(batch.seq), max(batch.seq))
