"""OPC UA backfill from history: a source that (re)connects after the agent took samples up to some
source timestamp per signal gets exactly the missing samples, once, then the live ones; a server
without history is logged once and collected live."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource, PlannedNode
from tidm.simulator import HistoryConfig, ProducedSample, ServerLimits, Simulator, SimulatorConfig

Key = tuple[str, str]


def _plan(sim: Simulator) -> list[PlannedNode]:
    return [PlannedNode(a, s, n) for (a, s), n in sim.node_ids().items()]


class _Taken:
    """The agent's side: the last source timestamp taken per signal, updated by what is emitted
    (as Agent._emit does), plus every sample in emit order."""

    def __init__(self, last: dict[Key, int]) -> None:
        self.last = dict(last)
        self.got: list[RawSample] = []

    def __call__(self, asset_id: str, signal: str) -> int | None:
        return self.last.get((asset_id, signal))

    def emit(self, name: str, samples: Sequence[RawSample]) -> None:
        for s in samples:
            self.got.append(s)
            self.last[(s.asset_id, s.signal)] = s.ts_us


async def _collect(
    source: OpcUaSource, taken: _Taken, done: Callable[[], bool], timeout_s: float = 30
) -> None:
    source.resume_from(taken)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(taken.emit, stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done() and not task.done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def _by_signal(produced: Sequence[ProducedSample]) -> dict[Key, list[int]]:
    out: dict[Key, list[int]] = {}
    for p in produced:
        out.setdefault((p.asset_id, p.signal), []).append(p.ts_us)
    return out


async def test_reconnect_after_n_ticks_gets_exactly_the_missing_samples_once() -> None:
    config = SimulatorConfig.fleet(
        2,
        3,
        period_ms=50,
        history=HistoryConfig(enabled=True),
        # Small limits, so the backfill is chunked by nodes (advertised) and by values per read.
        limits=ServerLimits(max_nodes_per_history_read_data=2),
    )
    async with Simulator(config) as sim:
        await sim.wait_ticks(25)
        sim.pause()
        await sim.wait_idle()
        produced = _by_signal(sim.produced)
        keys = sorted(produced)
        # The agent had taken the first 4 samples of each signal but one, and nothing of the last.
        last = {k: produced[k][3] for k in keys[:-1]}
        taken = _Taken(last)
        settings = OpcUaSourceSettings(endpoint=sim.endpoint, security="none", backfill_values_per_read=3)
        source = OpcUaSource(settings, _plan(sim))
        expected = {k: [t for t in produced[k] if t > last[k]] for k in keys[:-1]}
        # Without a last sample there is nothing to resume from: the subscription's current value.
        expected[keys[-1]] = produced[keys[-1]][-1:]

        def first_part_done() -> bool:
            return len(taken.got) >= sum(len(v) for v in expected.values())

        task_stop = asyncio.Event()
        source.resume_from(taken)
        task = asyncio.create_task(source.run(taken.emit, task_stop))
        try:
            async with asyncio.timeout(30):
                while not first_part_done():
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # nothing more may come while the simulator is paused
            assert _by_signal_got(taken.got) == expected
            # Then live, without repeats.
            sim.resume()
            await sim.wait_ticks(sim.ticks + 10)
            sim.pause()
            await sim.wait_idle()
            final = _by_signal(sim.produced)
            async with asyncio.timeout(30):
                while len(taken.got) < sum(len(v) for v in expected.values()) + 10 * len(keys):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a quiet window: a repeated sample would show up now
        finally:
            task_stop.set()
            await task
    got = _by_signal_got(taken.got)
    for k in keys:
        cut = last.get(k, expected[k][0] - 1)
        assert got[k] == [t for t in final[k] if t > cut], k
    assert source.stats.max_nodes_per_history_read == 2
    assert source.stats.backfilled == sum(len(v) for k, v in expected.items() if k in last)
    assert source.stats.history_unsupported == 0


def _by_signal_got(got: Sequence[RawSample]) -> dict[Key, list[int]]:
    out: dict[Key, list[int]] = {}
    for s in got:
        out.setdefault((s.asset_id, s.signal), []).append(s.ts_us)
    return out


async def test_restarted_server_is_backfilled_across_the_outage() -> None:
    config = SimulatorConfig.fleet(1, 4, period_ms=50, history=HistoryConfig(enabled=True))
    async with Simulator(config) as sim:
        await sim.wait_ticks(5)
        taken = _Taken({})
        settings = OpcUaSourceSettings(endpoint=sim.endpoint, security="none", reconnect_initial_s=0.2)
        source = OpcUaSource(settings, _plan(sim))
        source.resume_from(taken)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(taken.emit, stop))
        try:
            async with asyncio.timeout(30):
                while source.stats.connects < 1 or len(taken.got) < 20:
                    await asyncio.sleep(0.05)
            # The server goes away for a while and keeps producing (its history survives);
            # the namespace index changes too.
            await sim.restart(extra_namespaces_before=["urn:x"], downtime_s=0.5)
            async with asyncio.timeout(30):
                while source.stats.connects < 2:
                    await asyncio.sleep(0.05)
            await sim.wait_ticks(sim.ticks + 10)
            sim.pause()
            await sim.wait_idle()
            produced = _by_signal(sim.produced)
            async with asyncio.timeout(30):
                while any(taken.last.get(k) != v[-1] for k, v in produced.items()):
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
    got = _by_signal_got(taken.got)
    counts = Counter((s.asset_id, s.signal, s.ts_us) for s in taken.got)
    assert not [k for k, n in counts.items() if n > 1], "no sample twice"
    for k, ts in produced.items():
        first = got[k][0]
        assert got[k] == [t for t in ts if t >= first], f"{k}: nothing missing after the first sample"
    assert source.stats.backfilled > 0


async def test_server_without_history_is_logged_once_and_collected_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Simulator(SimulatorConfig.fleet(1, 3, period_ms=50)) as sim:
        await sim.wait_ticks(5)
        produced = _by_signal(sim.produced)
        taken = _Taken({k: v[1] for k, v in produced.items()})
        settings = OpcUaSourceSettings(endpoint=sim.endpoint, security="none")
        source = OpcUaSource(settings, _plan(sim))
        start = len(taken.got)
        with caplog.at_level(logging.WARNING, logger="tidm.edge_agent.sources.opcua"):
            await _collect(source, taken, lambda: len(taken.got) >= start + 15)
    assert source.stats.history_unsupported == 3
    assert source.stats.backfilled == 0
    warnings = [r.getMessage() for r in caplog.records if "no history" in r.getMessage()]
    assert len(warnings) == 1 and "BadHistoryOperationUnsupported" in warnings[0], warnings


async def test_backfill_off_or_lookback_bounded() -> None:
    config = SimulatorConfig.fleet(1, 2, period_ms=50, history=HistoryConfig(enabled=True))
    async with Simulator(config) as sim:
        await sim.wait_ticks(10)
        sim.pause()
        await sim.wait_idle()
        produced = _by_signal(sim.produced)
        last = {k: v[0] for k, v in produced.items()}
        off = OpcUaSource(
            OpcUaSourceSettings(endpoint=sim.endpoint, security="none", backfill=False), _plan(sim)
        )
        taken_off = _Taken(last)
        await _collect(off, taken_off, lambda: len(taken_off.got) >= 2)
        # A lookback shorter than the outage reads only its window (here: nothing that old).
        bounded = OpcUaSource(
            OpcUaSourceSettings(endpoint=sim.endpoint, security="none", backfill_max_s=0.001), _plan(sim)
        )
        taken_bounded = _Taken(last)
        await _collect(bounded, taken_bounded, lambda: len(taken_bounded.got) >= 2)
    for taken in (taken_off, taken_bounded):
        assert _by_signal_got(taken.got) == {k: v[-1:] for k, v in produced.items()}
    assert off.stats.backfilled == 0 and bounded.stats.backfilled == 0
