"""Backfill from the server's history on every (re)connect: HistoryRead (ReadRawModifiedDetails)
from just after the last sample the agent took per signal, while the new subscription's
notifications are held back; then the held ones newer than the history, then live."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.sources.opcua._base import _EPOCH, _US, SourceBase, _Session, _us, log
from tidm.edge_agent.sources.opcua.nodes import PlannedNode

__all__ = ["BackfillMixin"]


class BackfillMixin(SourceBase):
    """Reading what the server historized while the agent was away."""

    async def _backfill(
        self, client: Any, plan: Sequence[PlannedNode], node_ids: Sequence[Any], emit: Emit
    ) -> dict[tuple[str, str], int]:
        """Emit what the server historized after the last sample taken per signal; return the newest
        source timestamp emitted per (asset, signal)."""
        last_taken = self._last_taken
        newest: dict[tuple[str, str], int] = {}
        if last_taken is None:
            return newest
        floor = time.time_ns() // 1000 - int(self.settings.backfill_max_s * 1_000_000)
        todo: list[tuple[int, Any, int]] = []  # (plan index, node id, first ts wanted)
        for i, nid in enumerate(node_ids):
            last = last_taken(plan[i].asset_id, plan[i].signal) if nid is not None else None
            if last is not None:
                todo.append((i, nid, max(last + 1, floor)))
        self.stats.history_unsupported = 0
        unsupported: dict[str, list[str]] = {}
        per_node = self.settings.backfill_values_per_read
        count = 0
        chunk = self.stats.max_nodes_per_history_read or self.settings.max_nodes_per_history_read
        # Bounded: each round moves every node forward by up to `per_node` values.
        for _ in range(100_000):
            if not todo:
                break
            more: list[tuple[int, Any, int]] = []
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                try:
                    results = await self._history_read(client, part, per_node)
                except self._ua.UaStatusCodeError as exc:
                    # The whole service is refused (BadServiceUnsupported, BadHistoryOperation...).
                    unsupported.setdefault(self._ua.StatusCode(exc.code).name, []).extend(
                        plan[i].node_id for i, _, _ in part
                    )
                    continue
                except (OSError, TimeoutError):
                    raise  # the connection is gone: reconnect (and backfill again)
                except Exception as exc:  # noqa: BLE001 - a server's odd answer must not stop live collection
                    unsupported.setdefault(f"{type(exc).__name__}: {exc}", []).extend(
                        plan[i].node_id for i, _, _ in part
                    )
                    continue
                for (i, nid, first), res in zip(part, results, strict=True):
                    if not res.StatusCode.is_good():
                        unsupported.setdefault(res.StatusCode.name, []).append(plan[i].node_id)
                        continue
                    key = (plan[i].asset_id, plan[i].signal)
                    values = list(getattr(res.HistoryData, "DataValues", None) or [])
                    samples = self._history_samples(plan[i], values, max(first, newest.get(key, -1) + 1))
                    if samples:
                        newest[key] = samples[-1].ts_us
                        count += len(samples)
                        self.stats.backfilled += len(samples)
                        self.metrics.samples(len(samples))
                        emit(self.name, samples)
                    if (res.ContinuationPoint or len(values) >= per_node) and values:
                        # Continue by time after the last value read (stateless, whatever the server).
                        more.append((i, nid, max(first, _us(values[-1].SourceTimestamp, first - 1) + 1)))
                        if res.ContinuationPoint:
                            await self._release_continuation(client, nid, res.ContinuationPoint)
            todo = more
        if unsupported:
            self.stats.history_unsupported = sum(len(v) for v in unsupported.values())
            if not self._history_warned:
                self._history_warned = True
                for status, nodes in unsupported.items():
                    log.warning(
                        "%s: no history for %d nodes (%s); collecting them live only: %s%s",
                        self.name,
                        len(nodes),
                        status,
                        ", ".join(nodes[:5]),
                        " ..." if len(nodes) > 5 else "",
                    )
        if newest:
            log.info(
                "%s: backfilled %d samples of %d signals from history",
                self.name,
                count,
                len(newest),
            )
        return newest

    async def _history_read(
        self, client: Any, part: Sequence[tuple[int, Any, int]], per_node: int
    ) -> list[Any]:
        """One HistoryRead of raw values for `part`, forward from the earliest first timestamp."""
        ua = self._ua
        details = ua.ReadRawModifiedDetails()
        details.IsReadModified = False
        details.StartTime = _EPOCH + min(first for _, _, first in part) * _US
        # No end time: forward from the start, NumValuesPerNode at a time (Part 11, 6.4.3.2).
        details.EndTime = ua.get_win_epoch()
        details.NumValuesPerNode = per_node
        details.ReturnBounds = False
        params = ua.HistoryReadParameters()
        params.HistoryReadDetails = details
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.ReleaseContinuationPoints = False
        for _, nid, _ in part:
            rv = ua.HistoryReadValueId()
            rv.NodeId = nid
            params.NodesToRead.append(rv)
        return list(await client.uaclient.history_read(params))

    async def _release_continuation(self, client: Any, nid: Any, point: bytes) -> None:
        """We continue by timestamp instead; free what the server may hold for the point."""
        ua = self._ua
        params = ua.HistoryReadParameters()
        params.HistoryReadDetails = ua.ReadRawModifiedDetails()
        params.ReleaseContinuationPoints = True
        rv = ua.HistoryReadValueId()
        rv.NodeId = nid
        rv.ContinuationPoint = point
        params.NodesToRead.append(rv)
        with contextlib.suppress(Exception):
            await client.uaclient.history_read(params)

    @staticmethod
    def _history_samples(node: PlannedNode, values: Sequence[Any], first: int) -> list[RawSample]:
        """History DataValues -> samples at or after `first`, in increasing source time."""
        recv = time.time_ns() // 1000
        out: list[RawSample] = []
        after = first - 1
        for dv in values:
            ts = _us(dv.SourceTimestamp, -1)
            if ts <= after:  # before the start (a shared start time) or not increasing
                continue
            after = ts
            raw = dv.Value.Value if dv.Value is not None else None
            if raw is None or isinstance(raw, bool | int | float):
                value, text = (None if raw is None else float(raw)), None
            else:
                value, text = None, str(raw)
            out.append(RawSample(node.asset_id, node.signal, ts, recv, value, text, int(dv.StatusCode.value)))
        return out

    def _release_held(self, session: _Session, newest: dict[tuple[str, str], int], emit: Emit) -> None:
        """Emit the notifications held during backfill, minus those the history already gave; go live.

        Synchronous, so no notification can slip between the held ones and the live ones."""
        held, session.held = session.held or [], None
        for out in held:
            fresh = [s for s in out if s.ts_us > newest.get((s.asset_id, s.signal), -1)]
            self.stats.backfill_overlap += len(out) - len(fresh)
            if fresh:
                emit(self.name, fresh)
