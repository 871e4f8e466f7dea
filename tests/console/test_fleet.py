"""The Fleet view scrapes the processes' own health endpoints (the agent's HealthServer and the
jobs'/notary's serve_health, as the processes run them): numbers, sources, rates, a dead process."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path

from tests.console.test_app import _client, _login

from tidm.cli.processes import serve_health
from tidm.console import ConsoleSection, FleetTarget, create_console
from tidm.console.fleet import Fleet
from tidm.edge_agent.config import HealthSettings
from tidm.edge_agent.health import HealthServer
from tidm.edge_agent.metrics import AgentMetrics
from tidm.evidence import MemoryEvidenceLog
from tidm.storage import Lake
from tidm.storage.access import AccessControl, Principal

TOKEN = "console-test-token-maint-a"  # noqa: S105 - the token of tests/console/test_app.py


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_fleet_scrapes_agents_jobs_and_a_dead_process(tmp_path: Path) -> None:
    samples_in = [500]
    metrics = AgentMetrics()
    metrics.counter("tidm_agent_samples_in", "Samples received", lambda: samples_in[0])
    metrics.gauge("tidm_agent_queue_depth", "Sealed batches waiting", lambda: 3)
    opcua = metrics.source("opcua:press-1")
    opcua.connected(True)
    opcua.samples(480)
    mqtt = metrics.source("mqtt:line-2")
    mqtt.samples(20)
    mqtt.reconnected()
    agent = HealthServer(
        host="127.0.0.1",
        port=0,
        readiness=lambda: {**{f"source:{k}": v for k, v in metrics.sources_connected().items()}},
        metrics=metrics.exposition,
    )
    await agent.start()
    stats = {"rows_landed": 1200.0, "objects": 4.0, "quarantined": 1.0}
    job = await serve_health(
        HealthSettings(port=0), prefix="tidm_job", readiness=lambda: {"running": True}, stats=lambda: stats
    )
    assert job is not None
    dead = _closed_port()
    targets = [
        FleetTarget(name="gw-1", kind="agent", url=f"http://127.0.0.1:{agent.port}"),  # type: ignore[arg-type]
        FleetTarget(name="clean", kind="job", url=f"http://127.0.0.1:{job.port}"),  # type: ignore[arg-type]
        FleetTarget(name="gw-2", kind="agent", url=f"http://127.0.0.1:{dead}"),  # type: ignore[arg-type]
    ]
    clock = _Clock()
    fleet = Fleet(targets, timeout_s=2, clock=clock)
    try:
        first = await asyncio.to_thread(fleet.scrape)
        samples_in[0] = 1500
        stats["objects"] = 10.0
        clock.now += 2.0
        second = await asyncio.to_thread(fleet.scrape)
        access = AccessControl(
            [Principal(name="maint-a", token_sha256=(hashlib.sha256(TOKEN.encode()).hexdigest(),))],
            MemoryEvidenceLog(),
        )
        app = create_console(
            Lake.local(tmp_path / "lake"),
            access,
            settings=ConsoleSection(secure_cookie=False, fleet=tuple(targets)),
        )
        async with _client(app) as client:
            await _login(client)
            page = await client.get("/fleet")
    finally:
        await agent.close()
        await job.close()
    gw1, clean, gw2 = first
    assert gw1.up and gw1.ready is False  # mqtt:line-2 is not connected
    assert gw1.checks == {"source:mqtt:line-2": False, "source:opcua:press-1": True}
    assert gw1.numbers["samples in"] == 500 and gw1.numbers["queue depth"] == 3
    assert gw1.numbers["samples/s"] is None  # no earlier scrape to take a rate from
    assert gw1.sources == [
        {"name": "mqtt:line-2", "connected": False, "samples": 20.0, "reconnects": 1.0},
        {"name": "opcua:press-1", "connected": True, "samples": 480.0, "reconnects": 0.0},
    ]
    assert clean.up and clean.ready is True and clean.numbers["rows landed"] == 1200
    assert not gw2.up and gw2.error and f"127.0.0.1:{dead}" in gw2.error
    assert second[0].numbers["samples/s"] == 500.0
    assert second[1].numbers["objects/s"] == 3.0
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="agents-up">1<', html) and re.search(r'id="agents">2<', html)
    assert re.search(r'id="rows-landed">1200<', html)
    assert 'data-process="gw-2" data-kind="agent" data-up="false"' in html
