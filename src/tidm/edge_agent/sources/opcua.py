"""OPC UA source (asyncua client): browse or plan, subscribe with data-change notifications.

Every notification carries the server's source timestamp and status code; the trigger is
StatusValueTimestamp so a stuck sensor that repeats its value with a new timestamp is still seen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError, SourceUnavailable
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.errors import MissingExtraError

__all__ = ["OpcUaSource", "PlannedNode"]

log = logging.getLogger(__name__)


def _asyncua() -> tuple[Any, Any]:
    """The asyncua package and its `ua` module, or the install hint if the extra is missing."""
    try:
        import asyncua
        from asyncua import ua
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(extra="opcua", module="asyncua") from exc
    return asyncua, ua


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_HANDLE_BASE = 1_000_000


def _us(value: dt.datetime | None, fallback: int) -> int:
    if value is None:
        return fallback
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class PlannedNode:
    """One signal to collect: which asset and signal it is and where it lives on the server."""

    asset_id: str
    signal: str
    node_id: str  # an ExpandedNodeId string "nsu=<uri>;s=<id>" or a NodeId string "ns=2;s=<id>"


class _Handler:
    def __init__(self, source: OpcUaSource, emit: Emit) -> None:
        self._source = source
        self._emit = emit

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        recv = time.time_ns() // 1000
        target = self._source.handles.get(data.subscription_data.client_handle)
        if target is None:
            return
        dv = data.monitored_item.Value
        status = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
        raw = dv.Value.Value if dv.Value is not None else None
        value: float | None
        text: str | None = None
        if raw is None or isinstance(raw, bool | int | float):
            value = float(raw) if raw is not None else None
        else:
            value, text = None, str(raw)
        self._emit(
            self._source.name,
            [
                RawSample(
                    target.asset_id, target.signal, _us(dv.SourceTimestamp, recv), recv, value, text, status
                )
            ],
        )

    def status_change_notification(self, status: Any) -> None:
        log.warning("%s: subscription status changed: %s", self._source.name, status)


class OpcUaSource:
    """Collects the planned nodes (or, without a plan, every asset found by browsing)."""

    def __init__(self, settings: OpcUaSourceSettings, plan: Sequence[PlannedNode] | None = None) -> None:
        self._asyncua, self._ua = _asyncua()
        self.settings = settings
        self._plan = list(plan) if plan is not None else None
        self.handles: dict[int, PlannedNode] = {}
        self.subscribed = 0

    @property
    def name(self) -> str:
        return self.settings.endpoint

    async def browse_plan(self, client: Any) -> list[PlannedNode]:
        """Assets are objects under Objects with an `AssetId` property; signals are their variables."""
        plan: list[PlannedNode] = []
        uris = await client.get_namespace_array()
        for obj in await client.nodes.objects.get_children(nodeclassmask=self._ua.NodeClass.Object):
            asset_id = None
            for prop in await obj.get_properties():
                if (await prop.read_browse_name()).Name == "AssetId":
                    asset_id = str(await prop.read_value())
            if asset_id is None:
                continue
            for var in await obj.get_children(nodeclassmask=self._ua.NodeClass.Variable):
                name = (await var.read_browse_name()).Name
                if name == "AssetId":
                    continue
                nid = var.nodeid
                ident = nid.to_string().split(";", 1)[1]
                plan.append(PlannedNode(asset_id, name, f"nsu={uris[nid.NamespaceIndex]};{ident}"))
        return plan

    async def _resolve(self, client: Any, node_id: str) -> Any:
        if node_id.startswith("nsu="):
            uri, rest = node_id[4:].split(";", 1)
            try:
                idx = await client.get_namespace_index(uri)
            except ValueError as exc:
                msg = f"{self.name}: namespace {uri!r} of node {node_id!r} is not on the server"
                raise SourceError(msg) from exc
            node_id = f"ns={idx};{rest}"
        return client.get_node(node_id)

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        client = self._asyncua.Client(url=self.settings.endpoint, timeout=self.settings.timeout_s)
        try:
            await client.connect()
        except (TimeoutError, OSError) as exc:
            msg = f"cannot connect to OPC UA server {self.name}: {exc}"
            raise SourceUnavailable(msg) from exc
        try:
            plan = self._plan if self._plan is not None else await self.browse_plan(client)
            handler = _Handler(self, emit)
            sub = await client.create_subscription(self.settings.publishing_interval_ms, handler)
            requests = []
            for i, planned in enumerate(plan):
                node = await self._resolve(client, planned.node_id)
                handle = _HANDLE_BASE + i
                self.handles[handle] = planned
                requests.append(self._request(node, handle))
            chunk = max(1, self.settings.max_items_per_call)
            for start in range(0, len(requests), chunk):
                results = await sub.create_monitored_items(requests[start : start + chunk])
                for req, res in zip(requests[start : start + chunk], results, strict=True):
                    if isinstance(res, self._ua.StatusCode):
                        target = self.handles.pop(req.RequestedParameters.ClientHandle)
                        log.error("%s: cannot monitor %s: %s", self.name, target.node_id, res)
                    else:
                        self.subscribed += 1
            log.info("%s: subscribed to %d of %d planned nodes", self.name, self.subscribed, len(plan))
            await stop.wait()
            await sub.delete()
        finally:
            await client.disconnect()

    def _request(self, node: Any, handle: int) -> Any:
        ua = self._ua
        rv = ua.ReadValueId()
        rv.NodeId = node.nodeid
        rv.AttributeId = ua.AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = handle
        params.SamplingInterval = float(self.settings.sampling_interval_ms)
        params.QueueSize = self.settings.queue_size
        params.DiscardOldest = True
        mfilter = ua.DataChangeFilter()
        mfilter.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
        params.Filter = mfilter
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = params
        return req
