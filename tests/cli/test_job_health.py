"""A stream job process serves /healthz, /readyz and /metrics when its settings give a port."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tidm.cli.processes import run_job, serve_health
from tidm.cli.settings import JobProcessSettings, load_settings
from tidm.edge_agent.config import HealthSettings
from tidm.stream_processing.spec import JobSpec


async def test_serve_health_exposes_stats_and_readiness() -> None:
    ready = {"running": True}
    server = await serve_health(
        HealthSettings(port=0),
        prefix="tidm_job",
        readiness=lambda: ready,
        stats=lambda: {"rows_landed": 42.0},
    )
    assert server is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert "tidm_job_rows_landed 42.0" in (await client.get("/metrics")).text
            ready["running"] = False
            assert (await client.get("/readyz")).status_code == 503
    finally:
        await server.close()


async def test_job_process_health_is_off_by_default_and_on_with_a_port(tmp_path: Path) -> None:
    (tmp_path / "trusted.json").write_text(json.dumps({"agents": {}}))
    env = {
        "TIDM_TRANSPORT__PATH": str(tmp_path / "log"),
        "TIDM_EVIDENCE__PATH": str(tmp_path / "evidence.db"),
        "TIDM_LAKE__URL": str(tmp_path / "lake"),
        "TIDM_TRUSTED_AGENTS": str(tmp_path / "trusted.json"),
        "TIDM_QUARANTINE": "folder",
    }
    assert load_settings(JobProcessSettings, None, env).health.port is None
    settings = load_settings(JobProcessSettings, None, {**env, "TIDM_HEALTH__PORT": "0"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_job(settings, JobSpec(name="h", topics=("t",)), stop=stop))
    await asyncio.sleep(1.5)
    stop.set()
    stats = await asyncio.wait_for(task, timeout=30)
    assert stats.messages == 0
