"""`tidm agent run` as its own process: settings errors name file:line:field, the health endpoint
answers liveness, readiness and metrics, and SIGTERM flushes every collected sample."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from tidm.cli.main import cli
from tidm.cli.settings import AgentProcessSettings, ConfigError, load_settings
from tidm.ingest import AgentIdentity

TIDM = [sys.executable, "-m", "tidm.cli.main"]

BAD = """\
agent:
  agent_id: gw-1
  batch:
    max_rows: 0
  opcua:
    - endpoint: opc.tcp://127.0.0.1:4840
      security: none
    - endpoint: opc.tcp://127.0.0.1:4841
      sampling_interval_ms: -5
      security: none
    - endpoint: opc.tcp://127.0.0.1:4842
health:
  port: 99999
"""


def test_settings_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentProcessSettings, path, {})
    text = str(caught.value)
    assert f"{path}:4: agent.batch.max_rows:" in text
    assert f"{path}:9: agent.opcua.1.sampling_interval_ms:" in text
    # A model-level check points at the list item it is about.
    assert f"{path}:11: agent.opcua.2: Value error, security 'basic256sha256' (the default) needs" in text
    assert f"{path}:13: health.port:" in text


def test_cli_reports_the_line_and_exits_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("agent:\n  site: plant-1\n  batchh: {}\n", encoding="utf-8")
    out = CliRunner().invoke(cli, ["agent", "run", "--config", str(path)])
    assert out.exit_code != 0
    assert f"{path}:3: agent.batchh: Extra inputs are not permitted" in str(out.exception)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_agent_process_health_metrics_and_flush_on_sigterm(tmp_path: Path) -> None:
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(
        yaml.safe_dump({"assets": [{"asset_id": "urn:tidm:asset:press-7", "name": "Press7"}]}),
        encoding="utf-8",
    )
    sim = subprocess.Popen(
        [sys.executable, "-m", "tidm.simulator", "--config", str(sim_cfg)], stdout=subprocess.PIPE, text=True
    )
    log = tmp_path / "agent.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        endpoint = json.loads(sim.stdout.readline())["endpoint"]
        key = tmp_path / "agent.key"
        AgentIdentity.generate("gw-1").save(key)
        port = _free_port()
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "agent": {
                        "agent_id": "gw-1",
                        "key_file": str(key),
                        # Batches close only on size here, so SIGTERM must flush what is open.
                        "batch": {"max_age_ms": 600_000, "max_rows": 1_000_000},
                        "opcua": [{"endpoint": endpoint, "security": "none", "publishing_interval_ms": 50}],
                    },
                    "transport": {"kind": "embedded", "path": str(tmp_path / "log")},
                    "evidence": {"path": str(tmp_path / "evidence.db")},
                    "health": {"port": port},
                }
            ),
            encoding="utf-8",
        )
        with log.open("wb") as out:
            agent = subprocess.Popen(
                [*TIDM, "agent", "run", "--config", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and agent.poll() is None:
            ready = _get(f"{base}/readyz")
            if ready is not None and ready.status_code == 200:
                break
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, log.read_text()
        assert ready.json() == {"ready": True, "checks": {f"source:{endpoint}": True, "publisher": True}}
        live = _get(f"{base}/healthz")
        assert live is not None and live.status_code == 200
        metrics = ""
        while time.monotonic() < deadline:
            resp = _get(f"{base}/metrics")
            assert resp is not None and resp.status_code == 200
            metrics = resp.text
            if _metric(metrics, f'tidm_agent_samples_total{{source="{endpoint}"}}') >= 20:
                break
            time.sleep(0.2)
        assert _metric(metrics, f'tidm_agent_samples_total{{source="{endpoint}"}}') >= 20, metrics
        assert _metric(metrics, f'tidm_agent_source_connected{{source="{endpoint}"}}') == 1
        assert "tidm_agent_queue_depth" in metrics and "tidm_agent_batches_published_total" in metrics
        missing = _get(f"{base}/nope")
        assert missing is not None and missing.status_code == 404

        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        text = log.read_text()
        assert agent.returncode == 0, text
        line = next(x for x in text.splitlines() if x.startswith("agent stopped:"))
        samples_in = int(line.split(": ", 1)[1].split(" ", 1)[0])
        rows = int(line.rsplit(",", 1)[1].split()[0])
        assert samples_in >= 20 and rows == samples_in, line
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()
