"""Historical access for the simulator: HistoryRead (ReadRawModifiedDetails) over what it wrote.

asyncua's own `historize_node_data_change` records values through an internal subscription, one
asyncio task per notification and a queue per item; the simulator writes its values straight into
the address space (`aspace.write_attribute_value`), so it records them itself as it writes, nothing
at all when history is off. Samples are kept in flat arrays (timestamps, status codes) and a list of
floats/strings, none of which the garbage collector tracks: keeping each written DataValue instead
made every full collection walk the whole history (28% more update-loop time at 5,000 signals).
DataValues are rebuilt only for what a HistoryRead returns. The service answers from those:

* raw reads forward (`StartTime` <= `EndTime`, or no `EndTime`) and backward (no `StartTime`, or
  `StartTime` > `EndTime`), both bounds inclusive, at most `NumValuesPerNode` values (0 = up to
  `MAX_VALUES_PER_RESPONSE`) with a continuation point when more remain. The continuation point is the
  source timestamp to continue from (stateless: nothing to release). Bounding values are not returned.
* every other node, modified reads and other details: `BadHistoryOperationUnsupported` per node,
  which is exactly what a server without history answers.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.server.history import HistoryManager
from asyncua.ua.status_codes import StatusCodes

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

__all__ = ["MAX_VALUES_PER_RESPONSE", "HistoryService", "SignalHistory"]

MAX_VALUES_PER_RESPONSE = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_UNSUPPORTED = ua.StatusCode(ua.UInt32(StatusCodes.BadHistoryOperationUnsupported))
_INVALID_CONTINUATION = ua.StatusCode(ua.UInt32(StatusCodes.BadContinuationPointInvalid))
_CONTINUATION = struct.Struct(">q")


class SignalHistory:
    """The last `limit` samples of one variable: source and server timestamps (µs), status codes
    and values (float for Double variables, str for String ones, None for a bad-status sample)."""

    __slots__ = ("_limit", "_numeric", "server_ts", "status", "ts", "values")

    def __init__(self, limit: int, *, numeric: bool = True) -> None:
        self._limit = limit
        self._numeric = numeric
        self.ts = array("q")
        self.server_ts = array("q")
        self.status = array("L")
        self.values: list[float | str | None] = []

    def append(self, ts_us: int, server_us: int, value: float | str | None, status: int) -> None:
        """Record one written sample (timestamps strictly increase per variable)."""
        self.ts.append(ts_us)
        self.server_ts.append(server_us)
        self.status.append(status)
        self.values.append(value)
        # Trim in bulk at twice the limit: amortized O(1) per append; reads skip the surplus.
        if len(self.ts) > 2 * self._limit:
            keep = -self._limit
            del self.ts[:keep], self.server_ts[:keep], self.status[:keep], self.values[:keep]

    def _value(self, i: int) -> ua.DataValue:
        raw = self.values[i]
        if raw is None:
            variant = ua.Variant()
        elif self._numeric:
            variant = ua.Variant(raw, ua.VariantType.Double)
        else:
            variant = ua.Variant(raw, ua.VariantType.String)
        return ua.DataValue(
            Value=variant,
            StatusCode=ua.StatusCode(ua.UInt32(self.status[i])),
            SourceTimestamp=_EPOCH + self.ts[i] * _US,  # type: ignore[arg-type]
            ServerTimestamp=_EPOCH + self.server_ts[i] * _US,  # type: ignore[arg-type]
        )

    def __len__(self) -> int:
        return min(len(self.ts), self._limit)

    def read(
        self, start_us: int | None, end_us: int | None, max_values: int
    ) -> tuple[list[ua.DataValue], int | None]:
        """Values in [start, end] (None = open), forward unless only `end` is given or start > end;
        returns them and the timestamp to continue from (None when complete)."""
        ts, first = self.ts, max(0, len(self.ts) - self._limit)
        backward = (start_us is None and end_us is not None) or (
            start_us is not None and end_us is not None and start_us > end_us
        )
        if not backward:
            lo = first if start_us is None else max(first, bisect.bisect_left(ts, start_us))
            hi = len(ts) if end_us is None else bisect.bisect_right(ts, end_us)
            stop = min(hi, lo + max_values)
            cont = ts[stop] if stop < hi else None
            return [self._value(i) for i in range(lo, stop)], cont
        top = start_us if start_us is not None else end_us
        bottom = end_us if start_us is not None else None
        hi = bisect.bisect_right(ts, top) if top is not None else len(ts)
        lo = first if bottom is None else max(first, bisect.bisect_left(ts, bottom))
        begin = max(lo, hi - max_values)
        cont = ts[begin - 1] if begin > lo else None
        return [self._value(i) for i in range(hi - 1, begin - 1, -1)], cont


def _to_us(value: datetime | None) -> int | None:
    """µs since the epoch, or None for an unset OPC UA DateTime (MinValue, 1601-01-01)."""
    if value is None or value.year <= 1601:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _US


class HistoryService(HistoryManager):
    """The HistoryRead service of one running server, answering from `nodes` (NodeId -> history)."""

    def __init__(self, iserver: InternalServer, nodes: dict[ua.NodeId, SignalHistory]) -> None:
        super().__init__(iserver)
        self._nodes = nodes

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        """One result per node to read, in request order."""
        details = params.HistoryReadDetails
        raw = isinstance(details, ua.ReadRawModifiedDetails) and not details.IsReadModified
        results = []
        for rv in params.NodesToRead:
            result = ua.HistoryReadResult()
            history = self._nodes.get(rv.NodeId)
            if params.ReleaseContinuationPoints:
                pass  # stateless continuation points: nothing to release
            elif history is None or not raw:
                result.StatusCode = _UNSUPPORTED
            else:
                self._read_raw(history, details, rv, result)
            results.append(result)
        return results

    @staticmethod
    def _read_raw(
        history: SignalHistory,
        details: ua.ReadRawModifiedDetails,
        rv: ua.HistoryReadValueId,
        result: ua.HistoryReadResult,
    ) -> None:
        start, end = _to_us(details.StartTime), _to_us(details.EndTime)
        if rv.ContinuationPoint:
            if len(rv.ContinuationPoint) != _CONTINUATION.size:
                result.StatusCode = _INVALID_CONTINUATION
                return
            (resume,) = _CONTINUATION.unpack(rv.ContinuationPoint)
            backward = (start is None and end is not None) or (
                start is not None and end is not None and start > end
            )
            if backward:
                if start is None:
                    end = resume
                else:
                    start = resume
            else:
                start = resume
        limit = int(details.NumValuesPerNode) or MAX_VALUES_PER_RESPONSE
        values, cont = history.read(start, end, min(limit, MAX_VALUES_PER_RESPONSE))
        result.HistoryData = ua.HistoryData(DataValues=values)
        if cont is not None:
            result.ContinuationPoint = _CONTINUATION.pack(cont)
