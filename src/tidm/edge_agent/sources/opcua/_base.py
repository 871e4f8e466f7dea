"""The state every part of the OPC UA source shares: asyncua loading, protocol constants, stats,
the per-connection session, and the chunked Read all of them use."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.metrics import SourceMetrics
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua.nodes import PlannedNode
from tidm.errors import MissingExtraError

__all__ = ["OpcUaSourceStats", "SourceBase"]

log = logging.getLogger("tidm.edge_agent.sources.opcua")


def _asyncua() -> tuple[Any, Any]:
    """The asyncua package and its `ua` module, or the install hint if the extra is missing."""
    try:
        import asyncua
        from asyncua import ua
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(extra="opcua", module="asyncua") from exc
    return asyncua, ua


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - asyncua decodes UTC as naive datetimes
_US = dt.timedelta(microseconds=1)
# OperationLimits under Server/ServerCapabilities (namespace 0 numeric ids, Part 5).
_MAX_NODES_PER_READ = 11705
_MAX_MONITORED_ITEMS_PER_CALL = 11714
_NAMESPACE_ARRAY = 2255
_MAX_NODES_PER_HISTORY_READ_DATA = 12165
# Monitored-item statuses that mean "this server will not monitor this node like that": poll it.
_POLL_FALLBACK = frozenset(
    {
        0x80420000,  # BadMonitoredItemIdInvalid
        0x80430000,  # BadMonitoredItemFilterInvalid
        0x80440000,  # BadMonitoredItemFilterUnsupported
        0x80450000,  # BadFilterNotAllowed
        0x808E0000,  # BadDeadbandFilterInvalid
    }
)
# Whole-service statuses that mean "no subscriptions here": poll everything.
_NO_SUBSCRIPTIONS = frozenset(
    {
        0x800B0000,  # BadServiceUnsupported
        0x80770000,  # BadTooManySubscriptions
        0x80790000,  # BadNoSubscription
    }
)
_BAD_TOO_MANY_OPERATIONS = 0x80100000
_BAD_TIMEOUT = 0x800A0000


def _us(value: dt.datetime | None, fallback: int) -> int:
    if value is None:
        return fallback
    if value.tzinfo is None:
        return (value - _EPOCH_NAIVE) // _US
    return (value - _EPOCH) // _US


@dataclass
class OpcUaSourceStats:
    """What the source did; read by tests, the health endpoint and benchmarks."""

    connected: bool = False
    connects: int = 0
    reconnects: int = 0  # connections re-established after a loss
    reconnect_attempts: int = 0
    samples: int = 0
    subscribed: int = 0
    polled: int = 0
    failed: int = 0
    unresolved: int = 0
    max_nodes_per_read: int = 0
    max_items_per_call: int = 0
    largest_read: int = 0
    largest_create: int = 0
    backfilled: int = 0  # samples read from the server's history on (re)connect
    backfill_overlap: int = 0  # held notifications dropped because the history already gave them
    history_unsupported: int = 0  # nodes whose history read failed (last connection)
    max_nodes_per_history_read: int = 0
    namespace_index: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


class _Session:
    """Everything that belongs to one connection; dropped whole when the connection ends."""

    def __init__(self) -> None:
        self.targets: Sequence[PlannedNode] = ()  # client handle -> its plan row (asset, signal)
        self.lost = asyncio.Event()
        self.last_publish = time.monotonic()
        self.subscription_id: int | None = None
        # Notifications held back while the history is read (None: emit them at once).
        self.held: list[list[RawSample]] | None = None


class SourceBase:
    """What the source's parts (session, subscribe, backfill, poll) share; `OpcUaSource` is all of them."""

    settings: OpcUaSourceSettings
    stats: OpcUaSourceStats
    metrics: SourceMetrics
    _ua: Any
    _last_taken: Callable[[str, str], int | None] | None
    _history_warned: bool

    @property
    def name(self) -> str:
        """The endpoint URL: stable across reconnects, so sequence numbers continue."""
        return self.settings.endpoint

    async def _read_values(self, client: Any, node_ids: Sequence[Any], chunk: int) -> list[Any]:
        ua = self._ua
        out: list[Any] = []
        for start in range(0, len(node_ids), chunk):
            part = node_ids[start : start + chunk]
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for nid in part:
                rv = ua.ReadValueId()
                rv.NodeId = nid
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            self.stats.largest_read = max(self.stats.largest_read, len(part))
            out.extend(await client.uaclient.read(params))
        return out


def _cap(configured: int, advertised: Any) -> int:
    """The smaller of our cap and the server's limit (0, missing or bad means no limit)."""
    try:
        status_ok = int(advertised.StatusCode.value) & 0x80000000 == 0
        limit = int(advertised.Value.Value) if status_ok and advertised.Value is not None else 0
    except (TypeError, ValueError, AttributeError):
        limit = 0
    return min(configured, limit) if limit > 0 else configured


async def _browse_names(client: Any, nodes: Sequence[Any], chunk: int) -> list[str]:
    from asyncua.ua.attribute_ids import AttributeIds

    names: list[str] = []
    for start in range(0, len(nodes), chunk):
        part = [n.nodeid for n in nodes[start : start + chunk]]
        values = await client.uaclient.read_attributes(part, AttributeIds.BrowseName)
        names.extend(str(v.Value.Value.Name) for v in values)
    return names
