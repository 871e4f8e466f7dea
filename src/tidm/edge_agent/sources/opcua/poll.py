"""Polling: nodes (or whole servers) that will not be monitored are read on an interval, chunked to
MaxNodesPerRead, and emitted when they change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.sources.opcua._base import SourceBase, _Session, _us
from tidm.edge_agent.sources.opcua.nodes import PlannedNode

__all__ = ["PollMixin"]


class PollMixin(SourceBase):
    """Reading the nodes to poll, one task per interval group."""

    def _poll_groups(
        self, plan: Sequence[PlannedNode], to_poll: Sequence[tuple[int, Any]]
    ) -> dict[float, list[tuple[int, Any]]]:
        groups: dict[float, list[tuple[int, Any]]] = {}
        for i, nid in to_poll:
            interval = plan[i].sampling_interval_ms or self.settings.poll_interval_ms
            groups.setdefault(float(interval), []).append((i, nid))
        return groups

    async def _poll(
        self,
        client: Any,
        session: _Session,
        plan: Sequence[PlannedNode],
        group: Sequence[tuple[int, Any]],
        interval_ms: float,
        emit: Emit,
    ) -> None:
        """Read `group` every interval (chunked to MaxNodesPerRead); emit what changed.

        A change is a new source timestamp, status or value beyond an absolute deadband (percent
        deadbands need the EURange, which a polling client cannot assume: they pass every change).
        """
        last: list[tuple[int, int, Any] | None] = [None] * len(group)
        ids = [nid for _, nid in group]
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            values = await self._read_values(client, ids, self.stats.max_nodes_per_read)
            recv = time.time_ns() // 1000
            out: list[RawSample] = []
            for k, ((i, _), dv) in enumerate(zip(group, values, strict=True)):
                node = plan[i]
                status = int(dv.StatusCode.value)
                raw = dv.Value.Value if dv.Value is not None else None
                ts = _us(dv.SourceTimestamp, recv)
                prev = last[k]
                if prev is not None and prev[0] == ts and prev[1] == status:
                    continue
                if (
                    prev is not None
                    and prev[1] == status
                    and node.deadband
                    and node.deadband_type == "absolute"
                    and isinstance(raw, int | float)
                    and isinstance(prev[2], int | float)
                    and abs(raw - prev[2]) <= node.deadband
                ):
                    continue
                last[k] = (ts, status, raw)
                if raw is None or isinstance(raw, bool | int | float):
                    value, text = (None if raw is None else float(raw)), None
                else:
                    value, text = None, str(raw)
                out.append(RawSample(node.asset_id, node.signal, ts, recv, value, text, status))
            if out:
                self.stats.samples += len(out)
                self.metrics.samples(len(out))
                emit(self.name, out)
            next_at += interval_ms / 1000
            delay = next_at - loop.time()
            if delay < 0:
                next_at = loop.time()  # behind: skip missed slots instead of bursting
                delay = 0
            await asyncio.sleep(delay)
