"""The simulated equipment: an asyncua server whose variables one asyncio task keeps updating.

Address space (namespace `config.namespace_uri`):

    Objects/
      <asset name>            object, ns=<idx>;s=<asset name>, property AssetId = global asset id
        <signal name>         variable, ns=<idx>;s=<asset name>.<signal name>, Double or String,
                              properties Unit and SignalId

Every value is written with explicit source and server timestamps and status; source timestamps are
strictly increasing per signal (µs), so (asset_id, signal, ts_us) identifies a sample, and every
written sample is recorded in the produced log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal as os_signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from tidm.errors import MissingExtraError
from tidm.simulator.config import SimulatorConfig
from tidm.simulator.errors import (
    SimulatorConfigError,
    SimulatorError,
    SimulatorStartError,
    SimulatorStateError,
    SimulatorTimeoutError,
    SimulatorWriteError,
)
from tidm.simulator.record import ProducedLog, ProducedSample
from tidm.simulator.signals import SignalGenerator, derive_seed

try:
    # Imported from the defining modules: `asyncua` and `asyncua.ua` re-export them implicitly,
    # which mypy --strict does not accept.
    from asyncua import ua
    from asyncua.server.server import Server
    from asyncua.ua.attribute_ids import AttributeIds
    from asyncua.ua.object_ids import ObjectIds
    from asyncua.ua.status_codes import StatusCodes
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    _extra = "opcua"
    raise MissingExtraError(_extra, "asyncua") from exc

from tidm.simulator.history import HistoryService, SignalHistory  # needs asyncua too

__all__ = ["Simulator", "SimulatorStats", "run_forever", "serve"]

_log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))
_BAD_NO_COMMUNICATION = ua.StatusCode(ua.UInt32(StatusCodes.BadNoCommunication))
_WAITING = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
_VALUE = AttributeIds.Value
_DOUBLE = ua.VariantType.Double
_STRING = ua.VariantType.String

# (ServerCapabilities node, ServerLimits field): what the server advertises to clients.
_ADVERTISED = (
    (ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, "max_nodes_per_read"),
    (ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite, "max_nodes_per_write"),
    (ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse, "max_nodes_per_browse"),
    (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRegisterNodes,
        "max_nodes_per_register_nodes",
    ),
    (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
        "max_nodes_per_translate_browse_paths",
    ),
    (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerMethodCall,
        "max_nodes_per_method_call",
    ),
    (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        "max_monitored_items_per_call",
    ),
    (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
        "max_nodes_per_history_read_data",
    ),
    (ObjectIds.Server_ServerCapabilities_MaxMonitoredItemsQueueSize, "max_monitored_item_queue_size"),
    (ObjectIds.Server_ServerCapabilities_MaxSubscriptions, "max_subscriptions"),
    (ObjectIds.Server_ServerCapabilities_MaxSessions, "max_connections"),
)


class _SharedDataValue(ua.DataValue):
    """A DataValue that deep-copies to itself.

    asyncua's server deep-copies each written DataValue once per monitored item
    (MonitoredItemValues.set_current_datavalue) in case the writer mutates it later; that copy was
    two thirds of the server's CPU with one subscriber. The simulator builds a fresh DataValue per
    write and never touches it again, and asyncua's server only reads stored values, so sharing is safe.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


# asyncua annotates NodeId and DataValue with its marker subclasses (ua.String, ua.Int16,
# ua.DateTime) but takes plain str/int/datetime at runtime; these two helpers hold the only ignores.
def _node_id(identifier: str | int, namespace: int) -> ua.NodeId:
    return ua.NodeId(identifier, namespace)  # type: ignore[arg-type]


def _data_value(
    value: ua.Variant, status: ua.StatusCode, source: datetime | None, server: datetime | None
) -> ua.DataValue:
    return _SharedDataValue(
        Value=value,
        StatusCode=status,
        SourceTimestamp=source,  # type: ignore[arg-type]
        ServerTimestamp=server,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """Counters of the update loop; the timings are for benchmarks, not for test assertions."""

    ticks: int
    samples: int
    late_ticks: int
    busy_s: float
    max_tick_s: float


@dataclass(slots=True)
class _Variable:
    asset_id: str
    signal: str
    node_id: ua.NodeId
    generator: SignalGenerator
    every: int
    numeric: bool
    last_ts_us: int = 0
    history: SignalHistory | None = None  # kept across restarts, like the generators


class Simulator:
    """OPC UA equipment simulator. Use as `async with Simulator(config) as sim: ...`."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config or SimulatorConfig()
        cfg = self._config
        self._tick_s = cfg.tick_ms / 1000.0
        self._assets: list[list[_Variable]] = [
            [
                _Variable(
                    asset_id=asset.asset_id,
                    signal=sig.name,
                    node_id=_node_id(f"{asset.name}.{sig.name}", 0),  # index set at start
                    generator=SignalGenerator(sig, derive_seed(cfg.seed, asset.asset_id, sig.name)),
                    every=sig.update_period_ms // cfg.tick_ms,
                    numeric=sig.kind != "text-state",
                )
                for sig in asset.signals
            ]
            for asset in cfg.assets
        ]
        if cfg.history.enabled:
            for variables in self._assets:
                for var in variables:
                    var.history = SignalHistory(cfg.history.max_samples_per_signal, numeric=var.numeric)
        self._history_nodes: dict[ua.NodeId, SignalHistory] = {}
        self._log = ProducedLog(limit=cfg.produced_limit, path=cfg.record_path)
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._port: int = cfg.port
        self._ns_index: int | None = None
        self._ticks = 0
        self._late_ticks = 0
        self._busy_s = 0.0
        self._max_tick_s = 0.0
        self._resumed = asyncio.Event()
        if not cfg.start_paused:
            self._resumed.set()
        self._progress = asyncio.Condition()
        self._failure: BaseException | None = None
        self._in_tick = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space, write the first tick, listen, and start the update loop.

        The first tick is written before the server listens, so no client ever sees a placeholder.
        A stopped simulator may be started again: it keeps its port, produced log and generators.
        """
        if self._server is not None:
            msg = "simulator already started"
            raise SimulatorStateError(msg)
        cfg = self._config
        server = Server()
        await server.init()
        try:
            server.set_endpoint(f"opc.tcp://{cfg.host}:{self._port}")
            server.set_server_name(cfg.server_name)
            await server.set_application_uri(cfg.application_uri)
            await self._configure_security(server)
            await self._configure_limits(server)
            for uri in cfg.extra_namespaces_before:
                await server.register_namespace(uri)
            self._ns_index = await server.register_namespace(cfg.namespace_uri)
            await self._build_address_space(server, self._ns_index)
            # Node ids change with the namespace index on a restart; the histories do not.
            server.iserver.history_manager = HistoryService(server.iserver, self._history_nodes)
            self._server = server
            self._log.open()
            if not self.finished:
                await self._tick()
            try:
                await server.start()
            except OSError as exc:
                msg = f"cannot listen on {cfg.host}:{self._port}: {exc}"
                raise SimulatorStartError(msg) from exc
        except BaseException:
            self._server = None
            self._log.close()
            await server.stop()
            raise
        if server.bserver is not None:
            self._port = server.bserver.port
        self._task = asyncio.create_task(self._update_loop(), name="tidm-simulator-updates")
        _log.info("simulator listening on %s (%d variables)", self.endpoint, self._config.signal_count)

    async def stop(self) -> None:
        """Stop updating and close the server (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            # Never cancel in the middle of a tick: its samples may already be visible to clients
            # and must reach the produced log. The loop ends by itself after the current tick.
            self._stopping = True
            if not self._in_tick:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._stopping = False
        server, self._server = self._server, None
        if server is not None:
            # asyncua's clock task sleeps 1 s between updates and Server.stop() waits for it:
            # cancel it first so stopping takes milliseconds instead of up to a second.
            clock = server.iserver.time_task
            if clock is not None:
                server.iserver.time_task = None
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
            await server.stop()
        self._log.close()

    async def restart(
        self, *, extra_namespaces_before: Sequence[str] | None = None, downtime_s: float = 0.0
    ) -> None:
        """Stop, stay down `downtime_s`, and start again on the same port (the restart drill).

        `extra_namespaces_before` replaces the configured list, so the simulator's namespace index
        changes while node ids by namespace URI stay valid. Generators and the produced log carry on.
        """
        await self.stop()
        if extra_namespaces_before is not None:
            update = {**dict(self._config), "extra_namespaces_before": tuple(extra_namespaces_before)}
            self._config = SimulatorConfig.model_validate(update)
        if downtime_s > 0:
            await asyncio.sleep(downtime_s)
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- what tests and the demo ask -------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The configuration this simulator runs."""
        return self._config

    @property
    def endpoint(self) -> str:
        """`opc.tcp://host:port` with the port actually bound (known once started)."""
        if self._port == 0:
            msg = "the endpoint port is known only after start()"
            raise SimulatorStateError(msg)
        return f"opc.tcp://{self._config.host}:{self._port}"

    @property
    def namespace_uri(self) -> str:
        """The namespace URI of the simulated variables."""
        return self._config.namespace_uri

    @property
    def namespace_index(self) -> int:
        """The namespace index in the running server (changes with `extra_namespaces_before`)."""
        if self._ns_index is None:
            msg = "the namespace index is known only after start()"
            raise SimulatorStateError(msg)
        return self._ns_index

    @property
    def ticks(self) -> int:
        """Ticks completed so far (the first one is written by start())."""
        return self._ticks

    @property
    def finished(self) -> bool:
        """True once `max_ticks` ticks have been written: `produced` is then complete."""
        limit = self._config.max_ticks
        return limit is not None and self._ticks >= limit

    @property
    def paused(self) -> bool:
        """True while updates are paused."""
        return not self._resumed.is_set()

    @property
    def produced(self) -> list[ProducedSample]:
        """The samples written so far (those kept in memory, see `produced_limit`), oldest first."""
        return self._log.snapshot()

    @property
    def stats(self) -> SimulatorStats:
        """Counters of the update loop."""
        return SimulatorStats(
            ticks=self._ticks,
            samples=self._log.total,
            late_ticks=self._late_ticks,
            busy_s=self._busy_s,
            max_tick_s=self._max_tick_s,
        )

    def node_ids(self) -> dict[tuple[str, str], str]:
        """(asset_id, signal) -> ExpandedNodeId string `nsu=<uri>;s=<asset name>.<signal>`."""
        uri = self._config.namespace_uri
        return {
            (asset.asset_id, sig.name): f"nsu={uri};s={asset.name}.{sig.name}"
            for asset in self._config.assets
            for sig in asset.signals
        }

    def pause(self) -> None:
        """Stop updating at the next tick boundary (the server keeps serving the last values)."""
        self._resumed.clear()

    def resume(self) -> None:
        """Resume updating; the next tick comes one period later."""
        self._resumed.set()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no tick is being written: after `pause()`, `produced` is then final until
        `resume()` (a tick under way when `pause()` was called completes first)."""
        async with asyncio.timeout(timeout):
            while self._in_tick:
                await asyncio.sleep(0.005)

    async def wait_ticks(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least `n` ticks in total have been written; return the tick count."""
        limit = self._config.max_ticks
        if limit is not None and n > limit:
            msg = f"waiting for {n} ticks, but the simulator stops after max_ticks={limit}"
            raise SimulatorStateError(msg)

        def reached() -> bool:
            return self._ticks >= n or self._failure is not None

        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(reached)
        except TimeoutError:
            msg = f"simulator reached {self._ticks} of {n} ticks within {timeout} s (paused={self.paused})"
            raise SimulatorTimeoutError(msg) from None
        if self._failure is not None:
            msg = "the simulator's update loop failed"
            raise SimulatorError(msg) from self._failure
        return self._ticks

    async def wait_failed(self) -> BaseException:
        """Return the error that ended the update loop (waits until one happens)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self._failure is not None)
            failure = self._failure
        if failure is None:  # pragma: no cover - wait_for returned, so it is set
            msg = "update loop failure vanished"
            raise SimulatorStateError(msg)
        return failure

    # -- setup -----------------------------------------------------------------------------------

    async def _configure_security(self, server: Server) -> None:
        security = self._config.security
        # Anonymous only: no user/password endpoints, so asyncua does not warn about plaintext passwords.
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        if security.mode == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            return
        try:
            await server.load_certificate(str(security.certificate))
            await server.load_private_key(str(security.private_key))
        except (OSError, ValueError) as exc:
            paths = f"{security.certificate}, {security.private_key}"
            msg = f"cannot load the server certificate/key ({paths}): {exc}"
            raise SimulatorConfigError(msg) from exc
        server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
            ]
        )

    async def _configure_limits(self, server: Server) -> None:
        limits = self._config.limits
        iserver = server.iserver
        iserver.max_monitored_item_queue_size = limits.max_monitored_item_queue_size
        iserver.max_subscriptions = limits.max_subscriptions
        iserver.max_connections = limits.max_connections
        server.limits.max_message_size = limits.max_message_size
        server.limits.max_chunk_count = math.ceil(limits.max_message_size / server.limits.max_recv_buffer)
        now = datetime.now(UTC)
        for object_id, field in _ADVERTISED:
            value = ua.Variant(getattr(limits, field), ua.VariantType.UInt32)
            await self._write(server, _node_id(object_id, 0), _data_value(value, _GOOD, now, now))

    async def _build_address_space(self, server: Server, idx: int) -> None:
        objects = server.nodes.objects
        self._history_nodes.clear()
        for asset, variables in zip(self._config.assets, self._assets, strict=True):
            obj = await objects.add_object(_node_id(asset.name, idx), ua.QualifiedName(asset.name, idx))
            await obj.add_property(idx, "AssetId", ua.Variant(asset.asset_id, _STRING))
            for sig, var in zip(asset.signals, variables, strict=True):
                var.node_id = _node_id(f"{asset.name}.{sig.name}", idx)
                vtype = _DOUBLE if var.numeric else _STRING
                node = await obj.add_variable(
                    var.node_id,
                    ua.QualifiedName(sig.name, idx),
                    ua.Variant(0.0 if var.numeric else "", vtype),
                )
                await node.add_property(idx, "Unit", ua.Variant(sig.unit, _STRING))
                await node.add_property(idx, "SignalId", ua.Variant(sig.name, _STRING))
                if var.history is not None:
                    # What a client checks before HistoryRead (Part 3: AccessLevel, Historizing).
                    await node.set_attr_bit(AttributeIds.AccessLevel, ua.AccessLevel.HistoryRead)
                    await node.write_attribute(AttributeIds.Historizing, ua.DataValue(ua.Variant(True)))
                    self._history_nodes[var.node_id] = var.history
                # Not a sample: replaced by the first tick before the server listens.
                await self._write(server, var.node_id, _data_value(ua.Variant(), _WAITING, None, None))

    # -- the update loop -------------------------------------------------------------------------

    async def _update_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._tick_s
        next_at = loop.time() + period
        try:
            while not self.finished:
                if not self._resumed.is_set():
                    await self._resumed.wait()
                    next_at = loop.time() + period
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if not self._resumed.is_set():
                        continue
                elif -delay > period:
                    # More than a whole period behind: drop the missed slots instead of bursting.
                    self._late_ticks += 1
                    next_at = loop.time()
                self._in_tick = True
                try:
                    await self._tick()
                finally:
                    self._in_tick = False
                if self._stopping:
                    return
                next_at += period
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("simulator update loop failed")
            self._failure = exc
            async with self._progress:
                self._progress.notify_all()

    async def _tick(self) -> None:
        server = self._server
        if server is None:  # pragma: no cover - the loop runs only while started
            msg = "tick without a server"
            raise SimulatorStateError(msg)
        aspace = server.iserver.aspace
        started = time.perf_counter()
        tick = self._ticks  # 0-based index of the tick being written
        t_s = tick * self._tick_s  # nominal time: values do not depend on scheduling jitter
        samples: list[ProducedSample] = []
        for variables in self._assets:
            now_us = time.time_ns() // 1000
            server_ts = _EPOCH + timedelta(microseconds=now_us)
            for var in variables:
                if tick % var.every:
                    continue
                reading = var.generator.step(t_s)
                if reading is None:
                    continue
                ts_us = now_us if now_us > var.last_ts_us else var.last_ts_us + 1
                var.last_ts_us = ts_us
                if not reading.good:
                    variant = ua.Variant()
                    status = _BAD_NO_COMMUNICATION
                elif var.numeric:
                    variant = ua.Variant(reading.value, _DOUBLE)
                    status = _GOOD
                else:
                    variant = ua.Variant(reading.value_text, _STRING)
                    status = _GOOD
                dv = _data_value(variant, status, _EPOCH + timedelta(microseconds=ts_us), server_ts)
                result = await aspace.write_attribute_value(var.node_id, _VALUE, dv)
                if not result.is_good():
                    raise SimulatorWriteError(var.node_id.to_string(), result.name)
                if var.history is not None:
                    value = reading.value if var.numeric else reading.value_text
                    var.history.append(ts_us, now_us, value if reading.good else None, status.value)
                samples.append(
                    ProducedSample(
                        var.asset_id, var.signal, ts_us, reading.value, reading.value_text, status.value
                    )
                )
            # One asset at a time: let the server answer clients between assets.
            await asyncio.sleep(0)
        self._log.extend(samples)
        self._ticks = tick + 1
        elapsed = time.perf_counter() - started
        self._busy_s += elapsed
        self._max_tick_s = max(self._max_tick_s, elapsed)
        async with self._progress:
            self._progress.notify_all()

    @staticmethod
    async def _write(server: Server, node_id: ua.NodeId, dv: ua.DataValue) -> None:
        result = await server.iserver.aspace.write_attribute_value(node_id, _VALUE, dv)
        if not result.is_good():
            raise SimulatorWriteError(node_id.to_string(), result.name)


async def serve(
    config: SimulatorConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Run a simulator until `stop` is set (or its update loop fails, which is raised)."""
    stop = stop or asyncio.Event()
    async with Simulator(config) as sim:
        if on_ready is not None:
            on_ready(sim)
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(sim.wait_failed())
        done, pending = await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if failed in done:
            msg = "the simulator's update loop failed"
            raise SimulatorError(msg) from failed.result()


def run_forever(
    config: SimulatorConfig, *, announce: Callable[[Mapping[str, object]], None] | None = None
) -> None:
    """Run a simulator in this process until SIGINT/SIGTERM.

    `announce` receives {endpoint, namespace_uri, namespace_index, variables} once the server listens
    (the CLI prints it, so a parent process learns the port when `port` is 0).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (os_signal.SIGINT, os_signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        def ready(sim: Simulator) -> None:
            # asyncua's address space is ~700k long-lived objects; full collections over them
            # paused the update loop for 200-400 ms. This process is the simulator's alone, so
            # move them out of the collector's sight.
            gc.freeze()
            if announce is not None:
                announce(
                    {
                        "endpoint": sim.endpoint,
                        "namespace_uri": sim.namespace_uri,
                        "namespace_index": sim.namespace_index,
                        "variables": sim.config.signal_count,
                    }
                )

        await serve(config, stop=stop, on_ready=ready)

    asyncio.run(main())
