"""Server restart drill: the simulator is restarted 20 times on the same port (Simulator.restart),
each time with a different namespace order, under one OPC UA source. Data resumes after every restart (every
variable delivers again, resolved by namespace URI to the new index) and the source's process RSS
after the last restart is within 10% of after the first.

The source runs in its own process (tests/edge_agent/opcua_restart_agent.py) so the RSS measured is
the collecting code's alone: in the pytest process, log capture keeps records (with tracebacks and
the frames they reference) of every reconnect, which would grow memory that the agent never holds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from tests.edge_agent.opcua_sims import plan_for

from tidm.simulator import Simulator, SimulatorConfig

RESTARTS = 20
NS_URI = "urn:tidm:drill"


def _extra_namespaces(i: int) -> tuple[str, ...]:
    # Consecutive restarts have a different number of namespaces before ours: the index moves.
    return tuple(f"urn:tidm:extra:{(i + k) % 7}" for k in range(i % 4))


async def _read_line(proc: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    assert line, "the agent process ended"
    return dict(json.loads(line))


@pytest.mark.integration
@pytest.mark.timeout(400)
async def test_twenty_restarts_with_namespace_reordering(tmp_path: Path) -> None:
    config = SimulatorConfig.fleet(5, 20, period_ms=500, namespace_uri=NS_URI)  # 100 variables
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps([asdict(p) for p in plan_for(config)]), encoding="utf-8")
    async with Simulator(config) as sim:
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.edge_agent.opcua_restart_agent",
            sim.endpoint,
            str(plan_path),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            first = await _read_line(agent, 60)
            assert first["connects"] == 1 and first["namespace_index"] == {NS_URI: sim.namespace_index}
            reports = []
            for i in range(1, RESTARTS + 1):
                before = sim.namespace_index
                await sim.restart(extra_namespaces_before=_extra_namespaces(i))
                assert sim.namespace_index != before
                report = await _read_line(agent, 90)
                # A fresh connection, resolved to this run's namespace index, every variable delivering.
                assert report["connects"] == i + 1, report
                assert report["namespace_index"] == {NS_URI: sim.namespace_index}, report
                reports.append(report)
            rss_first, rss_last = reports[0]["rss"], reports[-1]["rss"]
            print(
                f"agent RSS after restart 1: {rss_first >> 10} KiB, "
                f"after restart {RESTARTS}: {rss_last >> 10} KiB"
            )
            assert rss_last <= rss_first * 1.10, [(r["connects"], r["rss"]) for r in reports]
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(agent.wait(), 30)
                except TimeoutError:
                    agent.kill()
                    await agent.wait()
    assert agent.returncode == 0
