"""5,100 variables on three simulator processes whose servers advertise operation limits of 100:
every variable is subscribed and delivers, and no call exceeded the limits."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.edge_agent.opcua_sims import plan_for, sim_processes

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.semantics import quality_from_status
from tidm.simulator import ServerLimits, SimulatorConfig

LIMITS = ServerLimits(max_nodes_per_read=100, max_monitored_items_per_call=100)
PROCESSES, ASSETS, SIGNALS = 3, 17, 100  # 3 x 1,700 = 5,100 variables


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_every_variable_of_5100_is_subscribed_and_delivers(tmp_path: Path) -> None:
    configs = [
        # A slow update period keeps three servers within this machine's budget; what is tested
        # is that every item is created within the limits and delivers, not throughput.
        SimulatorConfig.fleet(
            ASSETS, SIGNALS, period_ms=2000, seed=i, limits=LIMITS, namespace_uri=f"urn:sim:{i}"
        )
        for i in range(PROCESSES)
    ]
    # Distinct asset ids per process, so a key names one variable across the fleet.
    configs = [
        c.model_copy(
            update={
                "assets": tuple(a.model_copy(update={"asset_id": f"{a.asset_id}-p{i}"}) for a in c.assets)
            }
        )
        for i, c in enumerate(configs)
    ]
    with sim_processes(configs, tmp_path) as sims:
        counts: Counter[tuple[str, str]] = Counter()
        good: Counter[tuple[str, str]] = Counter()

        def emit(source: str, samples: Sequence[RawSample]) -> None:
            for s in samples:
                key = (s.asset_id, s.signal)
                counts[key] += 1
                if quality_from_status(s.status_code) == 0:
                    good[key] += 1

        sources = [
            OpcUaSource(
                # Configured caps above the advertised limits: the smaller (advertised) one wins.
                OpcUaSourceSettings(
                    endpoint=sim.endpoint,
                    security="none",
                    max_items_per_call=5000,
                    max_nodes_per_read=5000,
                    publishing_interval_ms=500,
                ),
                plan_for(sim.config),
            )
            for sim in sims
        ]
        expected = {
            (p.asset_id, p.signal)
            for src, sim in zip(sources, sims, strict=True)
            for p in plan_for(sim.config)
        }
        assert len(expected) == PROCESSES * ASSETS * SIGNALS >= 5000
        stop = asyncio.Event()
        tasks = [asyncio.create_task(src.run(emit, stop)) for src in sources]
        try:
            deadline = time.monotonic() + 180
            # Delivering = at least two samples per variable: the initial value and an update.
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                if all(counts[k] >= 2 for k in expected):
                    break
                for t in tasks:
                    if t.done():
                        t.result()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        missing = [k for k in expected if counts[k] < 2]
        assert not missing, f"{len(missing)} variables did not deliver twice, e.g. {missing[:5]}"
        assert set(counts) == expected
        assert all(good[k] >= 1 for k in expected)
        for src in sources:
            assert src.stats.subscribed == ASSETS * SIGNALS
            assert src.stats.failed == src.stats.polled == src.stats.unresolved == 0
            # The advertised limits were read and honoured (the server would not have refused more).
            assert src.stats.max_items_per_call == 100 and src.stats.max_nodes_per_read == 100
            assert 0 < src.stats.largest_create <= 100
            assert src.stats.largest_read <= 100
