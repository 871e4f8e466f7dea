"""The OPC UA source against the in-process simulator: deadbands, polling (configured and as a
per-node fallback), operation limits, status codes kept, namespaces resolved by URI, backoff."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from asyncua import ua
from asyncua.server.monitored_item_service import MonitoredItemService

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource, PlannedNode
from tidm.semantics import quality_from_status
from tidm.simulator import ServerLimits, SignalConfig, Simulator, SimulatorConfig


def _plan(sim: Simulator, **overrides: Any) -> list[PlannedNode]:
    return [PlannedNode(a, s, n, **overrides) for (a, s), n in sim.node_ids().items()]


async def _run_until(
    source: OpcUaSource, done: Callable[[list[RawSample]], bool], timeout_s: float = 30
) -> list[RawSample]:
    got: list[RawSample] = []

    def emit(name: str, samples: Sequence[RawSample]) -> None:
        assert name == source.name
        got.extend(samples)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done(got) and not task.done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return got


def _each_at_least(n: int, keys: set[tuple[str, str]]) -> Callable[[list[RawSample]], bool]:
    def done(got: list[RawSample]) -> bool:
        counts = Counter((s.asset_id, s.signal) for s in got)
        return all(counts[k] >= n for k in keys)

    return done


async def test_poll_mode_reads_in_chunks_of_the_advertised_limit() -> None:
    limits = ServerLimits(max_nodes_per_read=10)
    async with Simulator(SimulatorConfig.fleet(1, 25, period_ms=100, limits=limits)) as sim:
        plan = _plan(sim)
        settings = OpcUaSourceSettings(
            endpoint=sim.endpoint, security="none", mode="poll", poll_interval_ms=100
        )
        source = OpcUaSource(settings, plan)
        got = await _run_until(source, _each_at_least(3, {(p.asset_id, p.signal) for p in plan}))
    assert source.stats.polled == 25 and source.stats.subscribed == 0
    assert source.stats.max_nodes_per_read == 10 and source.stats.largest_read == 10
    # Polling emits changes only: no sample twice.
    keys = [(s.asset_id, s.signal, s.ts_us) for s in got]
    assert len(keys) == len(set(keys))


async def test_refused_monitored_items_fall_back_to_polling(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that does not support percent deadbands (asyncua's accepts and ignores them).
    original = MonitoredItemService._create_data_change_monitored_item

    async def refuse_percent(self: MonitoredItemService, params: ua.MonitoredItemCreateRequest) -> Any:
        flt = params.RequestedParameters.Filter
        # (decoded filters are asyncua's generated class, not ua.DataChangeFilter)
        if getattr(flt, "DeadbandType", None) == ua.DeadbandType.Percent:
            result = ua.MonitoredItemCreateResult()
            result.StatusCode = ua.StatusCode(ua.StatusCodes.BadMonitoredItemFilterUnsupported)
            return result
        return await original(self, params)

    monkeypatch.setattr(MonitoredItemService, "_create_data_change_monitored_item", refuse_percent)
    async with Simulator(SimulatorConfig.fleet(1, 4, period_ms=100)) as sim:
        plan = _plan(sim)
        plan[1] = PlannedNode(
            plan[1].asset_id, plan[1].signal, plan[1].node_id, deadband=5, deadband_type="percent"
        )
        plan[2] = PlannedNode(plan[2].asset_id, plan[2].signal, plan[2].node_id, observable=False)
        settings = OpcUaSourceSettings(endpoint=sim.endpoint, security="none", poll_interval_ms=100)
        source = OpcUaSource(settings, plan)
        with caplog.at_level(logging.WARNING, logger="tidm.edge_agent.sources.opcua"):
            await _run_until(source, _each_at_least(3, {(p.asset_id, p.signal) for p in plan}))
    assert source.stats.subscribed == 2 and source.stats.polled == 2 and source.stats.failed == 0
    assert any(
        "refused to monitor 1 nodes (BadMonitoredItemFilterUnsupported), polling them" in r.getMessage()
        and plan[1].node_id in r.getMessage()
        for r in caplog.records
    )


async def test_absolute_deadband_reaches_the_server() -> None:
    async with Simulator(SimulatorConfig.fleet(1, 2, period_ms=100)) as sim:
        plan = _plan(sim)
        quiet = PlannedNode(
            plan[0].asset_id, plan[0].signal, plan[0].node_id, deadband=1e9, deadband_type="absolute"
        )
        source = OpcUaSource(OpcUaSourceSettings(endpoint=sim.endpoint, security="none"), [quiet, plan[1]])
        got = await _run_until(source, _each_at_least(10, {(plan[1].asset_id, plan[1].signal)}))
    counts = Counter(s.signal for s in got)
    assert counts[plan[0].signal] == 1, "only the initial value passes a deadband of 1e9"


async def test_status_codes_are_kept_and_map_to_quality() -> None:
    bad = SignalConfig(gap_probability=1.0, gap_mode="bad_status", gap_length=1000)
    async with Simulator(SimulatorConfig.fleet(1, 1, period_ms=100, signal=bad)) as sim:
        source = OpcUaSource(OpcUaSourceSettings(endpoint=sim.endpoint, security="none"), _plan(sim))
        got = await _run_until(source, lambda g: sum(s.status_code != 0 for s in g) >= 3)
    bad = [s for s in got if s.status_code != 0]
    assert all(s.status_code == ua.StatusCodes.BadNoCommunication and s.value is None for s in bad)
    assert {int(quality_from_status(s.status_code)) for s in bad} == {2}


async def test_missing_namespace_skips_only_its_nodes(caplog: pytest.LogCaptureFixture) -> None:
    async with Simulator(SimulatorConfig.fleet(1, 2, period_ms=100)) as sim:
        plan = [*_plan(sim), PlannedNode("urn:x", "Ghost", "nsu=urn:not:there;s=Ghost")]
        source = OpcUaSource(OpcUaSourceSettings(endpoint=sim.endpoint, security="none"), plan)
        with caplog.at_level(logging.ERROR, logger="tidm.edge_agent.sources.opcua"):
            await _run_until(source, _each_at_least(2, {(p.asset_id, p.signal) for p in plan[:2]}))
    assert source.stats.unresolved == 1 and source.stats.subscribed == 2
    assert any(
        "'urn:not:there' of 1 planned nodes is not on the server" in r.getMessage() for r in caplog.records
    )


async def test_browsing_finds_assets_and_signals_without_a_plan() -> None:
    async with Simulator(SimulatorConfig.fleet(2, 3, period_ms=100)) as sim:
        source = OpcUaSource(OpcUaSourceSettings(endpoint=sim.endpoint, security="none"))
        got = await _run_until(source, _each_at_least(2, set(sim.node_ids())))
    assert {(s.asset_id, s.signal) for s in got} == set(sim.node_ids())


def test_bad_plan_rows_are_named() -> None:
    settings = OpcUaSourceSettings(endpoint="opc.tcp://127.0.0.1:1", security="none")
    with pytest.raises(SourceError, match=r"'garbage' of urn:a/Sig is not a NodeId"):
        OpcUaSource(settings, [PlannedNode("urn:a", "Sig", "garbage")])
    with pytest.raises(ValueError, match="percent deadband of urn:a/Sig must be <= 100"):
        PlannedNode("urn:a", "Sig", "ns=2;s=x", deadband=150, deadband_type="percent")
    row = {"asset_id": "urn:a", "signal": "Sig", "node_id": "nsu=urn:u;s=x", "deadband": 0.5}
    assert PlannedNode.from_row({**row, "deadband_type": "absolute"}).deadband == 0.5
    with pytest.raises(SourceError, match="absolute or percent"):
        PlannedNode.from_row({**row, "deadband_type": "relative"})


async def test_reconnect_backoff_is_capped_and_jittered(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = OpcUaSourceSettings(
        endpoint=f"opc.tcp://127.0.0.1:{port}",
        security="none",
        reconnect_initial_s=0.01,
        reconnect_max_s=0.08,
    )
    source = OpcUaSource(settings, [])
    with caplog.at_level(logging.INFO, logger="tidm.edge_agent.sources.opcua"):
        await _run_until(source, lambda g: source.stats.reconnect_attempts >= 8, timeout_s=30)
    waits = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"reconnecting in ([\d.]+) s", r.getMessage()))
    ]
    assert len(waits) >= 8
    assert all(w <= 0.08 for w in waits), waits
    assert max(waits[5:]) >= 0.04, "the delay grew to the cap (half of it is fixed)"
    assert len(set(waits[4:])) > 1, "jitter: capped delays differ"
