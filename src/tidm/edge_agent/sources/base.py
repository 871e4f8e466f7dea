"""The source contract: something that reads equipment and emits raw samples."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Emit", "RawSample", "Source"]


@dataclass(frozen=True, slots=True)
class RawSample:
    """One reading as the equipment gave it. Times are µs since the epoch, UTC."""

    asset_id: str
    signal: str
    ts_us: int
    recv_us: int
    value: float | None
    value_text: str | None
    status_code: int


Emit = Callable[[str, Sequence[RawSample]], None]
"""Called by a source with its name and the samples it just received, in arrival order."""


@runtime_checkable
class Source(Protocol):
    @property
    def name(self) -> str:
        """A stable name of the source (its endpoint); sequence numbers are counted per name."""
        ...

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Collect until `stop` is set, calling `emit` for what arrives."""
        ...
