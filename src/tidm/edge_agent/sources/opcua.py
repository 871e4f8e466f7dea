"""OPC UA source (asyncua client) that keeps collecting through what real plants do to it.

- Subscriptions with per-node sampling interval and data-change deadband; the trigger is
  StatusValueTimestamp (without a deadband) so a stuck sensor repeating its value is still seen.
- Polling for servers (`mode: poll`) or single nodes that refuse a monitored item
  (BadMonitoredItem...-class status): those are read on an interval and emitted when they change.
- Every Read and CreateMonitoredItems call is chunked to the smaller of the configured cap and the
  server's advertised OperationLimits (many servers advertise limits and do not enforce them, or
  enforce them by failing the whole call; we honour them ourselves).
- Reconnect with capped exponential backoff and jitter. Each connection uses a fresh client; nodes
  are resolved from their ExpandedNodeId (`nsu=<uri>;...`) against the namespace array read on that
  connection, because a restarted server may order its namespaces differently. asyncua's own
  auto-reconnect is not used: it restores monitored items by their old numeric NodeIds.
- Security None only when configured explicitly; otherwise Basic256Sha256 SignAndEncrypt with the
  agent's certificate, and the server certificate must be in the trust folder or chain to it through
  CAs (CA:TRUE, keyCertSign), valid along the chain, and name the endpoint's host and the expected
  ApplicationUri in its subjectAltName (`_check_trusted`). An untrusted server is refused with
  `UntrustedServerError`, never downgraded.

Backfill (`backfill: true`, the default): on every (re)connect, the source asks the agent for the last
source timestamp it took per signal (`resume_from`) and reads the server's history from just after
it (HistoryRead, ReadRawModifiedDetails, at most `backfill_max_s` back, chunked to
MaxNodesPerHistoryReadData) while the new subscription's notifications are held back; it emits the
history first, then the held notifications newer than what the history gave, then goes live. So a
restarted agent gets what the server produced while it was down, each sample once. A server or node
without history answers with a Bad status: logged once per source, collection goes on live.

Notifications are taken straight from the session's publish callback, one list of samples per
PublishResponse: asyncua's handler mode creates an asyncio task per notification and its iterator
mode drops events when its queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError, SourceUnavailable
from tidm.edge_agent.metrics import NullSourceMetrics, SourceMetrics
from tidm.edge_agent.sources._memory import release_free_memory
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.errors import MissingExtraError

__all__ = ["OpcUaSource", "OpcUaSourceStats", "PlannedNode", "UntrustedServerError"]

log = logging.getLogger(__name__)

DeadbandType = Literal["absolute", "percent"]


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


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """One signal to collect: the agent-side row an acquisition plan converts into.

    `node_id` is an ExpandedNodeId "nsu=<uri>;s=<id>" (preferred: it survives namespace
    reordering) or a NodeId "ns=2;s=<id>". Unset optional fields take the source's defaults.
    """

    asset_id: str
    signal: str
    node_id: str
    sampling_interval_ms: float | None = None
    deadband: float | None = None
    deadband_type: DeadbandType | None = None
    # AID's `observable`: False means the node does not support subscriptions; it is polled.
    observable: bool | None = None

    @classmethod
    def from_row(cls, row: Any) -> PlannedNode:
        """From a plan row with the same field names (`semantics.plan.OpcUaNode`, a dict, ...)."""
        get = row.get if isinstance(row, dict) else lambda k, d=None: getattr(row, k, d)
        deadband_type = get("deadband_type")
        if deadband_type not in (None, "absolute", "percent"):
            msg = f"deadband_type of {get('asset_id')}/{get('signal')} must be absolute or percent"
            raise SourceError(msg)
        return cls(
            asset_id=str(get("asset_id")),
            signal=str(get("signal")),
            node_id=str(get("node_id")),
            sampling_interval_ms=get("sampling_interval_ms"),
            deadband=get("deadband"),
            deadband_type=deadband_type,
            observable=get("observable"),
        )

    def __post_init__(self) -> None:
        if self.deadband is not None and self.deadband < 0:
            msg = f"deadband of {self.asset_id}/{self.signal} must be >= 0, got {self.deadband}"
            raise ValueError(msg)
        if self.deadband_type == "percent" and self.deadband is not None and self.deadband > 100:
            msg = f"percent deadband of {self.asset_id}/{self.signal} must be <= 100, got {self.deadband}"
            raise ValueError(msg)
        if self.sampling_interval_ms is not None and self.sampling_interval_ms < 0:
            msg = f"sampling interval of {self.asset_id}/{self.signal} must be >= 0"
            raise ValueError(msg)


class UntrustedServerError(SourceError):
    """The server's certificate is not trusted for its endpoint: the connection is refused."""


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


@dataclass(frozen=True, slots=True)
class _ParsedId:
    uri: str | None  # namespace URI of an ExpandedNodeId, else None
    rest: str  # "ns=2;s=x" when uri is None, else the identifier part "s=x"


def _parse_node_id(node: PlannedNode) -> _ParsedId:
    text = node.node_id.strip()
    parts = [p for p in text.split(";") if p]
    uri = None
    kept = []
    for part in parts:
        key = part.split("=", 1)[0]
        if key == "nsu":
            uri = part[4:]
        elif key == "svr":
            continue  # the local server is the only one we talk to
        else:
            kept.append(part)
    ident = [p for p in kept if p.split("=", 1)[0] in ("i", "s", "g", "b")]
    if len(ident) != 1 or (uri is not None and len(kept) != 1):
        msg = f"node id {node.node_id!r} of {node.asset_id}/{node.signal} is not a NodeId or ExpandedNodeId"
        raise SourceError(msg)
    return _ParsedId(uri, ";".join(kept))


class _Session:
    """Everything that belongs to one connection; dropped whole when the connection ends."""

    def __init__(self) -> None:
        self.targets: Sequence[PlannedNode] = ()  # client handle -> its plan row (asset, signal)
        self.lost = asyncio.Event()
        self.last_publish = time.monotonic()
        self.subscription_id: int | None = None
        # Notifications held back while the history is read (None: emit them at once).
        self.held: list[list[RawSample]] | None = None


class OpcUaSource:
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
            _parse_node_id(planned)  # refuse a malformed node id now; parsed again per connection
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
    def name(self) -> str:
        """The endpoint URL: stable across reconnects, so sequence numbers continue."""
        return self.settings.endpoint

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
            await self._secure(client)
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
        node_ids = await self._resolve(client, plan, [_parse_node_id(p) for p in plan])
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

    # -- security --------------------------------------------------------------------------------

    async def _secure(self, client: Any) -> None:
        s = self.settings
        if s.security == "none":
            return  # written explicitly in the settings: the validator requires it
        ua = self._ua
        from asyncua.crypto import security_policies

        # Endpoints are always listed over an unsecured channel (Part 4, GetEndpoints); nothing
        # else is sent before the server's certificate is checked against the trust folder.
        try:
            endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), s.timeout_s)
        except (OSError, TimeoutError) as exc:
            msg = f"cannot reach OPC UA server {self.name}: {exc}"
            raise SourceUnavailable(msg) from exc
        wanted = security_policies.SecurityPolicyBasic256Sha256.URI
        chosen = [
            e
            for e in endpoints
            if e.SecurityPolicyUri == wanted and e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt
        ]
        if not chosen:
            offered = sorted(
                {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
            )
            msg = (
                f"{self.name} offers no Basic256Sha256 SignAndEncrypt endpoint "
                f"(offers {', '.join(offered)}); refusing to connect. "
                "Write `security: none` only if unencrypted collection is intended."
            )
            raise SourceError(msg)
        # Bound to the configured ApplicationUri, else to the one the server advertises: Part 4 has
        # the client check the certificate's URI against the server's ApplicationDescription.
        advertised = chosen[0].Server.ApplicationUri if chosen[0].Server is not None else None
        der = _check_trusted(
            self.name,
            bytes(chosen[0].ServerCertificate or b""),
            s.trust_folder,
            application_uri=s.server_application_uri or advertised,
        )
        assert s.certificate is not None and s.private_key is not None  # noqa: S101 - validated settings
        try:
            await client.set_security(
                security_policies.SecurityPolicyBasic256Sha256,
                str(s.certificate),
                str(s.private_key),
                server_certificate=der,
                mode=ua.MessageSecurityMode.SignAndEncrypt,
            )
        except (OSError, ValueError) as exc:
            msg = f"cannot load the agent certificate/key ({s.certificate}, {s.private_key}): {exc}"
            raise SourceError(msg) from exc

    # -- limits, namespaces, browsing ------------------------------------------------------------

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
        self, client: Any, plan: Sequence[PlannedNode], parsed: Sequence[_ParsedId]
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

    # -- subscriptions ---------------------------------------------------------------------------

    def _keepalive_count(self) -> int:
        # About five seconds between keep-alives whatever the publishing interval.
        return max(3, int(5000 / self.settings.publishing_interval_ms))

    async def _subscribe(
        self, client: Any, session: _Session, plan: Sequence[PlannedNode], node_ids: Sequence[Any], emit: Emit
    ) -> list[tuple[int, Any]]:
        """Create the subscription and its monitored items; return the nodes to poll instead."""
        ua = self._ua
        self.stats.subscribed = self.stats.failed = 0
        live = [
            (i, nid) for i, nid in enumerate(node_ids) if nid is not None and plan[i].observable is not False
        ]
        not_observable = [
            (i, nid) for i, nid in enumerate(node_ids) if nid is not None and plan[i].observable is False
        ]
        if not live:
            return not_observable
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.settings.publishing_interval_ms
        params.RequestedMaxKeepAliveCount = self._keepalive_count()
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 10
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        session.targets = plan
        callback = self._publish_callback(session, emit)
        try:
            result = await client.uaclient.create_subscription(params, callback=callback)
        except ua.UaStatusCodeError as exc:
            if exc.code in _NO_SUBSCRIPTIONS:
                log.warning(
                    "%s: server refused a subscription (%s); polling all %d nodes every %g ms",
                    self.name,
                    ua.StatusCode(exc.code).name,
                    len(live),
                    self.settings.poll_interval_ms,
                )
                return live + not_observable
            raise
        session.subscription_id = result.SubscriptionId
        session.last_publish = time.monotonic()
        to_poll: list[tuple[int, Any]] = list(not_observable)
        refused: dict[str, list[str]] = {}
        chunk = self.stats.max_items_per_call
        start = 0
        while start < len(live):
            part = live[start : start + chunk]
            try:
                results = await self._create_items(client, session.subscription_id, plan, part)
            except ua.UaStatusCodeError as exc:
                if exc.code == _BAD_TOO_MANY_OPERATIONS and chunk > 1:
                    # The server enforces a lower limit than it advertised: halve and retry.
                    chunk = max(1, chunk // 2)
                    self.stats.max_items_per_call = chunk
                    log.warning(
                        "%s: BadTooManyOperations; creating %d monitored items per call", self.name, chunk
                    )
                    continue
                if exc.code in _NO_SUBSCRIPTIONS:
                    refused.setdefault(ua.StatusCode(exc.code).name, []).extend(
                        plan[i].node_id for i, _ in part
                    )
                    to_poll.extend(part)
                    start += len(part)
                    continue
                raise
            for (i, nid), res in zip(part, results, strict=True):
                code = int(res.StatusCode.value)
                if code & 0x80000000 == 0:
                    self.stats.subscribed += 1
                elif code in _POLL_FALLBACK:
                    refused.setdefault(res.StatusCode.name, []).append(plan[i].node_id)
                    to_poll.append((i, nid))
                else:
                    self.stats.failed += 1
                    log.error(
                        "%s: cannot monitor %s (%s/%s): %s",
                        self.name,
                        plan[i].node_id,
                        plan[i].asset_id,
                        plan[i].signal,
                        res.StatusCode.name,
                    )
            start += len(part)
        for status, nodes in refused.items():
            log.warning(
                "%s: server refused to monitor %d nodes (%s), polling them instead: %s%s",
                self.name,
                len(nodes),
                status,
                ", ".join(nodes[:5]),
                " ..." if len(nodes) > 5 else "",
            )
        return to_poll

    async def _create_items(
        self, client: Any, subscription_id: int, plan: Sequence[PlannedNode], part: Sequence[tuple[int, Any]]
    ) -> list[Any]:
        ua = self._ua
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = subscription_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.ItemsToCreate = [self._request(plan[i], nid, i) for i, nid in part]
        self.stats.largest_create = max(self.stats.largest_create, len(part))
        return list(await client.uaclient.create_monitored_items(params))

    def _request(self, planned: PlannedNode, node_id: Any, handle: int) -> Any:
        ua = self._ua
        rv = ua.ReadValueId()
        rv.NodeId = node_id
        rv.AttributeId = ua.AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = handle
        interval = planned.sampling_interval_ms
        params.SamplingInterval = float(self.settings.sampling_interval_ms if interval is None else interval)
        params.QueueSize = self.settings.queue_size
        params.DiscardOldest = True
        mfilter = ua.DataChangeFilter()
        if planned.deadband and planned.deadband_type is not None:
            # With a timestamp trigger every new timestamp would pass the deadband.
            mfilter.Trigger = ua.DataChangeTrigger.StatusValue
            mfilter.DeadbandType = (
                ua.DeadbandType.Absolute if planned.deadband_type == "absolute" else ua.DeadbandType.Percent
            )
            mfilter.DeadbandValue = float(planned.deadband)
        else:
            mfilter.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
        params.Filter = mfilter
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = params
        return req

    def _publish_callback(self, session: _Session, emit: Emit) -> Callable[[Any], None]:
        """The hot path: one PublishResult -> one list of samples -> one `emit` call."""
        ua = self._ua
        data_change = ua.DataChangeNotification
        status_change = ua.StatusChangeNotification
        name = self.name
        stats = self.stats
        metrics = self.metrics
        bool_int_float = (bool, int, float)
        epoch, one_us = _EPOCH, _US

        def on_publish(result: Any) -> None:
            session.last_publish = time.monotonic()
            notifications = result.NotificationMessage.NotificationData
            if not notifications:
                return
            targets = session.targets
            n_targets = len(targets)
            recv = time.time_ns() // 1000
            out: list[RawSample] = []
            append = out.append
            for notif in notifications:
                if type(notif) is data_change:
                    for item in notif.MonitoredItems:
                        handle = item.ClientHandle
                        if handle >= n_targets:
                            continue
                        target = targets[handle]
                        dv = item.Value
                        variant = dv.Value
                        raw = variant.Value if variant is not None else None
                        if raw is None or isinstance(raw, bool_int_float):
                            value = None if raw is None else float(raw)
                            text = None
                        else:
                            value, text = None, str(raw)
                        src = dv.SourceTimestamp
                        append(
                            RawSample(
                                target.asset_id,
                                target.signal,
                                # asyncua decodes timestamps as aware UTC datetimes.
                                recv if src is None else (src - epoch) // one_us,
                                recv,
                                value,
                                text,
                                dv.StatusCode.value,
                            )
                        )
                elif type(notif) is status_change:
                    status = notif.Status
                    if not status.is_good():
                        log.warning("%s: subscription status %s; reconnecting", name, status.name)
                        session.lost.set()
            if out:
                stats.samples += len(out)
                metrics.samples(len(out))
                held = session.held
                if held is not None:
                    held.append(out)
                else:
                    emit(name, out)

        return on_publish

    # -- backfill from history -------------------------------------------------------------------

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

    # -- polling ---------------------------------------------------------------------------------

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


def _split_chain(der_chain: bytes) -> list[bytes]:
    """The certificates of a DER chain, leaf first (servers may send leaf + issuers concatenated)."""
    from cryptography import x509

    certs: list[bytes] = []
    rest = der_chain
    while rest:
        # A DER SEQUENCE header: 0x30, then a short- or long-form length.
        if rest[0] != 0x30 or len(rest) < 2:
            msg = "not a DER certificate chain"
            raise ValueError(msg)
        if rest[1] & 0x80:
            n = rest[1] & 0x7F
            length = int.from_bytes(rest[2 : 2 + n], "big") + 2 + n
        else:
            length = rest[1] + 2
        one, rest = rest[:length], rest[length:]
        x509.load_der_x509_certificate(one)
        certs.append(one)
    return certs


def _load_trusted(folder: Path) -> list[Any]:
    from cryptography import x509

    certs = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        data = path.read_bytes()
        try:
            certs.append(
                x509.load_pem_x509_certificate(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            log.warning("trust folder %s: %s is not a certificate; ignored", folder, path.name)
    return certs


def _extension(cert: Any, kind: Any) -> Any:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _ca_problem(cert: Any, below: int) -> str | None:
    """Why `cert` may not issue certificates (None if it may), `below` CAs between it and the leaf."""
    from cryptography import x509

    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return "it is not a CA (basicConstraints CA:TRUE missing)"
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        return "it is not a CA (keyUsage keyCertSign missing)"
    if constraints.path_length is not None and below > constraints.path_length:
        return f"its pathLenConstraint {constraints.path_length} allows fewer CAs below it than {below}"
    return None


def _describe(cert: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    return f"subject {cert.subject.rfc4514_string()}, SHA-256 {hashlib.sha256(der).hexdigest()}"


def _endpoint_host(endpoint: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(endpoint).hostname
    if not host:
        msg = f"OPC UA endpoint {endpoint!r} names no host; cannot bind the server certificate to it"
        raise UntrustedServerError(msg)
    return host


def _host_matches(cert: Any, host: str) -> bool:
    import ipaddress

    from cryptography import x509

    names = _extension(cert, x509.SubjectAlternativeName)
    if names is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        return any(n.rstrip(".").lower() == wanted for n in names.get_values_for_type(x509.DNSName))
    return address in names.get_values_for_type(x509.IPAddress)


def _application_uris(cert: Any) -> list[str]:
    from cryptography import x509

    names = _extension(cert, x509.SubjectAlternativeName)
    return [] if names is None else list(names.get_values_for_type(x509.UniformResourceIdentifier))


def _check_trusted(
    endpoint: str,
    der_chain: bytes,
    folder: Path | None,
    *,
    application_uri: str | None,
    now: dt.datetime | None = None,
) -> bytes:
    """Check the server certificate presented at `endpoint`; return its DER (the chain's leaf).

    Accepted only if all hold, else `UntrustedServerError` naming the endpoint and the subject:
    - it is in `folder` (pinned), or a chain leads from it to a certificate in `folder` through
      issuers that are CAs (basicConstraints CA:TRUE, keyUsage keyCertSign, pathLenConstraint);
      the issuers come from `folder` and the chain the server sent;
    - every certificate of the chain, up to its root where the folder has it, is within its validity;
    - its subjectAltName names the endpoint's host (DNS name or IP address) and holds the
      ApplicationUri `application_uri` (the configured one, else the one the server advertises).
    So one server's certificate in the folder lets its key speak for that server only.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding

    if not der_chain:
        msg = f"{endpoint} presented no certificate on its secure endpoint; refusing to connect"
        raise UntrustedServerError(msg)
    try:
        chain = [x509.load_der_x509_certificate(d) for d in _split_chain(der_chain)]
    except ValueError as exc:
        msg = f"{endpoint} presented a certificate that cannot be parsed ({exc}); refusing to connect"
        raise UntrustedServerError(msg) from exc
    leaf = chain[0]
    der = leaf.public_bytes(Encoding.DER)
    if folder is None or not folder.is_dir():
        msg = f"trust folder {folder} for {endpoint} does not exist; refusing to connect"
        raise UntrustedServerError(msg)
    now = now or dt.datetime.now(dt.UTC)
    anchors = _load_trusted(folder)
    anchor_der = {a.public_bytes(Encoding.DER) for a in anchors}
    pool = anchors + chain[1:]
    refusal = f"the certificate of OPC UA server {endpoint} ({_describe(leaf)})"

    # Walk up from the leaf: each step to an issuer whose signature verifies and that is a CA.
    path = [leaf]
    reached = der in anchor_der
    problems: list[str] = []
    while len(path) <= 8:
        current = path[-1]
        if current.issuer == current.subject and len(path) > 1:
            break  # a self-signed root
        step = None
        for candidate in pool:
            if candidate.subject != current.issuer or candidate in path:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            problem = _ca_problem(candidate, below=len(path) - 1)
            if problem is not None:
                problems.append(f"its issuer ({_describe(candidate)}) may not issue certificates: {problem}")
                continue
            step = candidate
            break
        if step is None:
            break
        path.append(step)
        reached = reached or step.public_bytes(Encoding.DER) in anchor_der
    if not reached:
        why = "; ".join(problems) or (
            f"it is not in the trust folder {folder} and not issued by a CA there. "
            "Copy the server certificate (or its CA) into the folder to trust it"
        )
        msg = f"{refusal} is not trusted: {why} (trust folder {folder}); refusing to connect"
        raise UntrustedServerError(msg)
    for cert in path:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            which = "it is" if cert is leaf else f"its issuer ({_describe(cert)}) is"
            period = (
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
            )
            msg = (
                f"{refusal} is not trusted: {which} outside its validity period ({period} UTC); "
                "refusing to connect"
            )
            raise UntrustedServerError(msg)

    host = _endpoint_host(endpoint)
    if not _host_matches(leaf, host):
        msg = (
            f"{refusal} is not bound to the endpoint: its subjectAltName does not name the host {host!r}; "
            "refusing to connect (a trusted certificate speaks only for the server it names)"
        )
        raise UntrustedServerError(msg)
    uris = _application_uris(leaf)
    if application_uri is None or application_uri not in uris:
        msg = (
            f"{refusal} is not bound to the endpoint: its ApplicationUri {', '.join(uris) or '(none)'} "
            f"is not the expected {application_uri!r}; refusing to connect"
        )
        raise UntrustedServerError(msg)
    return der
