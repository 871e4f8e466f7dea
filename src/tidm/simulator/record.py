"""The produced log: every sample the simulator wrote, so tests can check what arrived downstream.

A sample is identified by (asset_id, signal, ts_us): source timestamps are strictly increasing per
signal. The log is kept in memory (bounded or not) and/or appended to a JSON Lines or CSV file.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from pathlib import Path
from typing import IO, NamedTuple

from tidm.simulator.errors import SimulatorConfigError

__all__ = ["ProducedLog", "ProducedSample", "read_produced"]

_FIELDS = ("asset_id", "signal", "ts_us", "value", "value_text", "status_code")


class ProducedSample(NamedTuple):
    """One value the simulator wrote: `value` for numeric signals, `value_text` for text ones.

    Both are None for a bad-status gap sample; `status_code` is the raw OPC UA status (0 = Good).
    """

    asset_id: str
    signal: str
    ts_us: int
    value: float | None
    value_text: str | None
    status_code: int


class ProducedLog:
    """Keeps produced samples in memory (up to `limit`, None = all) and appends them to `path`."""

    def __init__(self, limit: int | None = None, path: Path | None = None) -> None:
        self._samples: deque[ProducedSample] = deque(maxlen=limit)
        self._keep = limit != 0
        self._path = path
        self._file: IO[str] | None = None
        self._csv: csv.DictWriter[str] | None = None
        self.total = 0

    def open(self) -> None:
        """Open the record file for appending (a no-op without `path`)."""
        if self._path is None or self._file is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self._path.exists() or self._path.stat().st_size == 0
        self._file = self._path.open("a", encoding="utf-8", newline="")
        if self._path.suffix == ".csv":
            self._csv = csv.DictWriter(self._file, fieldnames=_FIELDS)
            if fresh:
                self._csv.writeheader()

    def close(self) -> None:
        """Flush and close the record file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._csv = None

    def extend(self, samples: list[ProducedSample]) -> None:
        """Record one tick's samples; the file is flushed so readers see whole ticks."""
        self.total += len(samples)
        if self._keep:
            self._samples.extend(samples)
        if self._file is None:
            return
        if self._csv is not None:
            self._csv.writerows(s._asdict() for s in samples)
        else:
            self._file.writelines(json.dumps(s._asdict(), allow_nan=False) + "\n" for s in samples)
        self._file.flush()

    def snapshot(self) -> list[ProducedSample]:
        """The samples kept in memory, oldest first."""
        return list(self._samples)


def read_produced(path: str | Path) -> list[ProducedSample]:
    """Read back a record file written by the simulator (`.jsonl` or `.csv`)."""
    source = Path(path)
    with source.open(encoding="utf-8", newline="") as fh:
        if source.suffix == ".csv":
            return [_from_csv(row) for row in csv.DictReader(fh)]
        if source.suffix == ".jsonl":
            return [ProducedSample(**json.loads(line)) for line in fh if line.strip()]
    msg = f"{source}: a produced log must be .jsonl or .csv"
    raise SimulatorConfigError(msg)


def _from_csv(row: dict[str, str]) -> ProducedSample:
    return ProducedSample(
        asset_id=row["asset_id"],
        signal=row["signal"],
        ts_us=int(row["ts_us"]),
        value=float(row["value"]) if row["value"] else None,
        # CSV cannot tell an empty text from a missing one; the simulator never writes empty states.
        value_text=row["value_text"] or None,
        status_code=int(row["status_code"]),
    )
