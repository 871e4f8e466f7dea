"""The OPC UA source itself: the reconnect loop, one connection from connect to loss (secure channel,
OperationLimits, namespace resolution, browsing), and what it sets up on each (subscribe, backfill,
poll: the mixins beside this module)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError, SourceUnavailable
from tidm.edge_agent.metrics import NullSourceMetrics, SourceMetrics
from tidm.edge_agent.sources._memory import release_free_memory
from tidm.edge_agent.sources.base import Emit
from tidm.edge_agent.sources.opcua._base import (
    _MAX_MONITORED_ITEMS_PER_CALL,
    _MAX_NODES_PER_HISTORY_READ_DATA,
    _MAX_NODES_PER_READ,
    _NAMESPACE_ARRAY,
    OpcUaSourceStats,
    _asyncua,
    _browse_names,
    _cap,
    _Session,
    log,
)
from tidm.edge_agent.sources.opcua.backfill import BackfillMixin
from tidm.edge_agent.sources.opcua.nodes import ParsedId, PlannedNode, parse_node_id
from tidm.edge_agent.sources.opcua.poll import PollMixin
from tidm.edge_agent.sources.opcua.subscribe import SubscribeMixin
from tidm.edge_agent.sources.opcua.trust import secure

__all__ = ["OpcUaSource"]


class OpcUaSource(SubscribeMixin, BackfillMixin, PollMixin):
    """Collects the planned nodes (or, without a plan, every asset found by browsing)."""

    def __init__(
        self,
        settings: OpcUaSourceSettings,
        plan: Sequence[PlannedNode] | None = None,
        *,
        metrics: SourceMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._asyncua, self._ua = _asyncua()
        self.settings = settings
        self._plan = list(plan) if plan is not None else None
        for planned in self._plan or ():
            parse_node_id(planned)  # refuse a malformed node id now; parsed again per connection
        self.metrics: SourceMetrics = metrics or NullSourceMetrics()
        self.stats = OpcUaSourceStats()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._session: _Session | None = None
        self._established = False
        self._last_taken: Callable[[str, str], int | None] | None = None
        self._history_warned = False

    def resume_from(self, last_taken: Callable[[str, str], int | None]) -> None:
        """Where backfill starts: `last_taken(asset_id, signal)` is the source timestamp (µs) of
        the last sample the agent took for it (sealed, or about to be), None if none."""
        self._last_taken = last_taken

    @property
    def subscribed(self) -> int:
        """Nodes monitored by the current connection's subscription."""
        return self.stats.subscribed

    # -- the reconnect loop ----------------------------------------------------------------------

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Collect until `stop` is set; reconnect with capped, jittered backoff on any loss."""
        delay = self.settings.reconnect_initial_s
        first = True
        while not stop.is_set():
            if not first:
                self.stats.reconnect_attempts += 1
            first = False
            self._established = False
            try:
                await self._connection(emit, stop)
            except SourceError:
                raise  # misconfiguration or an untrusted server: retrying cannot help
            except Exception as exc:  # noqa: BLE001 - every transport/protocol failure means reconnect
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: connection failed: %s", self.name, self.stats.last_error)
            if stop.is_set():
                return
            if self._established:
                # The connection worked (and was lost later): start the backoff from the bottom.
                delay = self.settings.reconnect_initial_s
            # "Equal jitter": half the delay fixed, half random, so a fleet restarted together
            # does not reconnect in lockstep.
            wait = delay / 2 + self._rng.uniform(0, delay / 2)
            log.info("%s: reconnecting in %.2f s", self.name, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _connection(self, emit: Emit, stop: asyncio.Event) -> None:
        """One connection from connect to stop (returns) or loss (raises)."""
        client = self._asyncua.Client(url=self.settings.endpoint, timeout=self.settings.timeout_s)
        client.application_uri = self.settings.application_uri
        # A crashed agent's session is freed by the server after this long.
        client.session_timeout = 120_000
        client.name = client.description = "TIDM edge agent"
        session = self._session = _Session()

        async def lost(exc: Exception) -> None:
            session.lost.set()

        client.connection_lost_callback = lost
        pollers: list[asyncio.Task[None]] = []
        connected = False
        try:
            await secure(client, self.settings, self._ua)
            await asyncio.wait_for(client.connect(), timeout=self.settings.timeout_s * 2)
            connected = True
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
                self.metrics.reconnected()
            await self._set_up(client, session, emit, pollers)
            self.stats.connected = True
            self.metrics.connected(True)
            self._established = True
            # Importing asyncua and creating thousands of monitored items leave tens of MB freed
            # but resident in the C heap; hand them back once the connection is set up (what
            # `_set_up` needed only while setting up is garbage by now).
            release_free_memory()
            await self._watch(client, session, stop, pollers)
        finally:
            self.stats.connected = False
            self.metrics.connected(False)
            for task in pollers:
                task.cancel()
            for task in pollers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._close(client, session, connected=connected, graceful=stop.is_set())
            # Drop every reference to this connection so nothing of it survives the next one.
            session.targets = ()
            self._session = None
            client.connection_lost_callback = None

    async def _set_up(
        self, client: Any, session: _Session, emit: Emit, pollers: list[asyncio.Task[None]]
    ) -> None:
        """Resolve, subscribe, backfill and start the pollers (appended to `pollers`).

        The per-node lists built here (parsed ids, NodeIds, poll lists) are dropped on return:
        only the subscription's client handles and the pollers' own groups are kept."""
        await self._read_limits(client)
        plan = self._plan if self._plan is not None else await self.browse_plan(client)
        node_ids = await self._resolve(client, plan, [parse_node_id(p) for p in plan])
        to_poll: list[tuple[int, Any]] = []
        backfill = self.settings.backfill and self._last_taken is not None
        if backfill:
            session.held = []
        if self.settings.mode == "subscribe":
            to_poll = await self._subscribe(client, session, plan, node_ids, emit)
        else:
            to_poll = [(i, nid) for i, nid in enumerate(node_ids) if nid is not None]
        session.targets = plan
        if backfill:
            # Before the pollers start: a poll's current value must come after the history.
            newest = await self._backfill(client, plan, node_ids, emit)
            self._release_held(session, newest, emit)
        self.stats.polled = len(to_poll)
        self.metrics.nodes("subscribe", self.stats.subscribed)
        self.metrics.nodes("poll", self.stats.polled)
        self.metrics.nodes("failed", self.stats.failed + self.stats.unresolved)
        for interval, group in self._poll_groups(plan, to_poll).items():
            pollers.append(
                asyncio.create_task(
                    self._poll(client, session, plan, group, interval, emit), name=f"poll:{self.name}"
                )
            )
        log.info(
            "%s: collecting %d subscribed + %d polled of %d planned nodes (limits: read %d, items %d)",
            self.name,
            self.stats.subscribed,
            self.stats.polled,
            len(plan),
            self.stats.max_nodes_per_read,
            self.stats.max_items_per_call,
        )

    async def _watch(
        self, client: Any, session: _Session, stop: asyncio.Event, pollers: list[asyncio.Task[None]]
    ) -> None:
        """Wait for stop or loss. Loss: transport lost, bad subscription status, a poller failing,
        or no publish response (data or keep-alive) for well past the keep-alive period."""
        keepalive_s = self._keepalive_count() * self.settings.publishing_interval_ms / 1000
        silence_s = keepalive_s * 3 + self.settings.timeout_s
        while not stop.is_set():
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(session.lost.wait()),
                *pollers,
            ]
            try:
                await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters[:2]:
                    w.cancel()
            for task in pollers:
                if task.done():
                    exc = task.exception()
                    msg = f"{self.name}: polling stopped: {exc!r}"
                    raise SourceUnavailable(msg)
            if session.lost.is_set():
                msg = f"{self.name}: connection lost"
                raise SourceUnavailable(msg)
            if session.subscription_id is not None and time.monotonic() - session.last_publish > silence_s:
                msg = f"{self.name}: no publish response for {silence_s:.0f} s"
                raise SourceUnavailable(msg)

    async def _close(self, client: Any, session: _Session, *, connected: bool, graceful: bool) -> None:
        if not connected:
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            return
        if graceful and not session.lost.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=self.settings.timeout_s)
            return
        # The server is gone: close the session locally (cancels asyncua's supervisor, renew
        # and publish tasks) without waiting for answers that will not come.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close_session(), timeout=1.0)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    # -- limits, namespaces, browsing ------------------------------------------------------------

    async def _read_limits(self, client: Any) -> None:
        ua = self._ua
        ids = [ua.NodeId(_MAX_NODES_PER_READ, 0), ua.NodeId(_MAX_MONITORED_ITEMS_PER_CALL, 0)]
        read_cap = self.settings.max_nodes_per_read
        items_cap = self.settings.max_items_per_call
        try:
            per_read, per_call = await self._read_values(client, ids, 2)
        except Exception as exc:  # noqa: BLE001 - servers without OperationLimits: use our caps
            log.info("%s: no operation limits advertised (%s); using configured caps", self.name, exc)
        else:
            read_cap = _cap(read_cap, per_read)
            items_cap = _cap(items_cap, per_call)
        self.stats.max_nodes_per_read = read_cap
        self.stats.max_items_per_call = items_cap
        history_cap = self.settings.max_nodes_per_history_read
        if self.settings.backfill:
            with contextlib.suppress(Exception):  # not advertised: our cap
                (advertised,) = await self._read_values(
                    client, [ua.NodeId(_MAX_NODES_PER_HISTORY_READ_DATA, 0)], 1
                )
                history_cap = _cap(history_cap, advertised)
        self.stats.max_nodes_per_history_read = history_cap

    async def _resolve(
        self, client: Any, plan: Sequence[PlannedNode], parsed: Sequence[ParsedId]
    ) -> list[Any]:
        """NodeIds for this connection, by namespace URI; None where the namespace is missing."""
        ua = self._ua
        (array_dv,) = await self._read_values(client, [ua.NodeId(_NAMESPACE_ARRAY, 0)], 1)
        uris: list[str] = list(array_dv.Value.Value or [])
        index = {uri: i for i, uri in enumerate(uris)}
        self.stats.namespace_index = {u: index[u] for u in {p.uri for p in parsed if p.uri} if u in index}
        out: list[Any] = []
        missing: dict[str, int] = {}
        for node, pid in zip(plan, parsed, strict=True):
            text = pid.rest
            if pid.uri is not None:
                idx = index.get(pid.uri)
                if idx is None:
                    missing[pid.uri] = missing.get(pid.uri, 0) + 1
                    out.append(None)
                    continue
                text = f"ns={idx};{pid.rest}"
            try:
                out.append(ua.NodeId.from_string(text))
            except Exception as exc:  # noqa: BLE001 - asyncua raises several types for bad strings
                msg = f"node id {node.node_id!r} of {node.asset_id}/{node.signal} cannot be parsed: {exc}"
                raise SourceError(msg) from exc
        for uri, n in missing.items():
            log.error(
                "%s: namespace %r of %d planned nodes is not on the server; skipping them", self.name, uri, n
            )
        self.stats.unresolved = sum(missing.values())
        return out

    async def browse_plan(self, client: Any) -> list[PlannedNode]:
        """Assets are objects under Objects with an `AssetId` property; signals are their variables."""
        ua = self._ua
        plan: list[PlannedNode] = []
        uris = await client.get_namespace_array()
        for obj in await client.nodes.objects.get_children(nodeclassmask=ua.NodeClass.Object):
            asset_id = None
            variables = await obj.get_children(nodeclassmask=ua.NodeClass.Variable)
            names = await _browse_names(client, variables, self.stats.max_nodes_per_read or 1000)
            for var, name in zip(variables, names, strict=True):
                if name == "AssetId":
                    (dv,) = await self._read_values(client, [var.nodeid], 1)
                    asset_id = str(dv.Value.Value)
            if asset_id is None:
                continue
            for var, name in zip(variables, names, strict=True):
                if name == "AssetId":
                    continue
                nid = var.nodeid
                ident = nid.to_string().split(";", 1)[1] if nid.NamespaceIndex else nid.to_string()
                plan.append(PlannedNode(asset_id, name, f"nsu={uris[nid.NamespaceIndex]};{ident}"))
        return plan
