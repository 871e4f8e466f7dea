"""The console in headless chromium against the real processes of a run: simulator, agent and job on
Kafka and the S3 server, then `tidm console`. Each view shows what the CLI and the processes report
for the same run; an out-of-grant asset is not visible; each data view is a FETCH entry."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cli.process_support import TIDM, agent_keygen, simulator_endpoint, start, start_simulator, stop
from tests.console.browser import chromium_page, console_process, free_port, login, screenshot, token_hash

from tidm.console.fleet import parse_metrics
from tidm.evidence import Signer, SqliteEvidenceLog, save_signer
from tidm.evidence.api import EventType

pytestmark = pytest.mark.integration

MAINT = "e2e-token-maint"  # noqa: S105 - test tokens
AUDITOR = "e2e-token-auditor"  # noqa: S105
PRESS = "urn:tidm:asset:press-7"
OVEN = "urn:tidm:asset:oven-3"


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        samples = parse_metrics(response.read().decode())
    return sum(v for _, v in samples.get(name, samples.get(f"{name}_total", [])))


def _wait_settled(agent_port: int, job_port: int, logs: Path) -> float:
    """Poll until the simulator has stopped, the agent's count holds still and the job landed it all."""
    deadline = time.monotonic() + 120
    last = -1.0
    while time.monotonic() < deadline:
        try:
            samples = _metric(agent_port, "tidm_agent_samples_in")
            done = _metric(job_port, "tidm_job_rows_landed") + _metric(job_port, "tidm_job_rows_rejected")
            depth = _metric(agent_port, "tidm_agent_queue_depth")
        except OSError:
            samples, done, depth = -1.0, -2.0, 1.0
        if samples > 0 and samples == last and done == samples and depth == 0:
            return samples
        last = samples
        time.sleep(1.0)
    raise AssertionError(f"the run did not settle:\n{(logs / 'job.log').read_text()[-3000:]}")


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*TIDM, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_console_views_show_what_the_cli_reports_for_a_real_run(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Any,
    tmp_path: Path,
) -> None:
    topic = unique_name("samples")
    env = {
        **os.environ,
        "TIDM_TRANSPORT__BOOTSTRAP": kafka_bootstrap,
        "TIDM_LAKE__ACCESS_KEY": s3_config["access_key"],
        "TIDM_LAKE__SECRET_KEY": s3_config["secret_key"],
    }
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(
        yaml.safe_dump(
            {
                "assets": [{"asset_id": PRESS, "name": "Press7"}, {"asset_id": OVEN, "name": "Oven3"}],
                "max_ticks": 40,
            }
        )
    )
    evidence = tmp_path / "evidence.db"
    lake = {"url": f"s3://{s3_bucket}/lake", "endpoint": s3_config["endpoint"], "region": s3_config["region"]}
    agent_port, job_port = free_port(), free_port()
    sim = start_simulator(sim_cfg, env)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        endpoint = simulator_endpoint(sim)
        key, trust = agent_keygen(tmp_path, "gw-1", env)
        agent_cfg = tmp_path / "agent.yaml"
        agent_cfg.write_text(
            yaml.safe_dump(
                {
                    "agent": {
                        "agent_id": "gw-1",
                        "site": "plant-9",
                        "key_file": str(key),
                        "topic": topic,
                        "batch": {"max_age_ms": 200},
                        "opcua": [{"endpoint": endpoint, "security": "none"}],
                    },
                    "transport": {"kind": "kafka", "partitions": 2},
                    "evidence": {"path": str(evidence)},
                    "health": {"port": agent_port},
                }
            )
        )
        job_spec = tmp_path / "job.yaml"
        job_spec.write_text(
            yaml.safe_dump(
                {
                    "name": "clean",
                    "topics": [topic],
                    "group_id": unique_name("g"),
                    "steps": ["drop_bad_samples"],
                    "unit_s": 1,
                    "idle_s": 0.5,
                }
            )
        )
        job_cfg = tmp_path / "process.yaml"
        job_cfg.write_text(
            yaml.safe_dump(
                {
                    "transport": {"kind": "kafka", "partitions": 2},
                    "evidence": {"path": str(evidence)},
                    "lake": lake,
                    "trusted_agents": str(trust),
                    "health": {"port": job_port},
                }
            )
        )
        procs.append(
            (
                start(["agent", "run", "--config", str(agent_cfg)], tmp_path / "agent.log", env),
                tmp_path / "agent.log",
            )
        )
        procs.append(
            (
                start(
                    ["job", "run", "--spec", str(job_spec), "--config", str(job_cfg)],
                    tmp_path / "job.log",
                    env,
                ),
                tmp_path / "job.log",
            )
        )
        samples_in = _wait_settled(agent_port, job_port, tmp_path)
        rows_landed = _metric(job_port, "tidm_job_rows_landed")

        signer = Signer.generate("test/notary")
        save_signer(signer, tmp_path / "notary.key")
        _cli(
            [
                "evidence",
                "checkpoint",
                "--log",
                str(evidence),
                "--key",
                str(tmp_path / "notary.key"),
                "--out",
                str(tmp_path / "cp"),
            ],
            env,
        )
        grants = {
            "principals": {
                "maint": {
                    "token_sha256": [token_hash(MAINT)],
                    "grants": [{"id": "presses", "assets": ["urn:tidm:asset:press-*"], "ceiling": "core"}],
                },
                "auditor": {
                    "token_sha256": [token_hash(AUDITOR)],
                    "grants": [{"id": "audit", "tables": ["evidence", "clean"], "ceiling": "core"}],
                },
            }
        }
        (tmp_path / "grants.yaml").write_text(yaml.safe_dump(grants))
        read_cfg = {
            "lake": lake,
            "evidence": {"path": str(evidence)},
            "read": {"grants": str(tmp_path / "grants.yaml")},
        }
        (tmp_path / "read.yaml").write_text(yaml.safe_dump(read_cfg))
        catalog = json.loads(
            _cli(["catalog", "--format", "json", "--config", str(tmp_path / "read.yaml")], env)
        )
        press_rows = sum(r["rows"] for r in catalog if r["asset"] == PRESS)
        press_signals = sorted(r["signal"] for r in catalog if r["asset"] == PRESS)
        console_cfg = {
            **read_cfg,
            "console": {
                "verifier_keys": [signer.vkey],
                "fleet": [
                    {"name": "gw-1", "kind": "agent", "url": f"http://127.0.0.1:{agent_port}"},
                    {"name": "clean", "kind": "job", "url": f"http://127.0.0.1:{job_port}"},
                ],
            },
        }
        with console_process(tmp_path, console_cfg, env) as url, chromium_page() as page:
            # Fleet: agents and the samples and rows the processes themselves report.
            login(page, url, AUDITOR)
            page.goto(f"{url}/fleet")
            assert page.text_content("#agents-up") == "1" and page.text_content("#agents") == "1"
            assert page.text_content("#samples-in") == str(int(samples_in))
            assert page.text_content("#rows-landed") == str(int(rows_landed))
            assert rows_landed == sum(r["rows"] for r in catalog)  # what `tidm catalog` counts in the lake
            screenshot(page, "fleet")
            # Evidence: the same verdict as `tidm evidence verify` gives right after.
            page.goto(f"{url}/evidence")
            page.click("#verify")
            page.wait_for_selector("#verify-result")
            shown = page.text_content("#verify-result")
            assert page.text_content("#checkpoint-signature") == "verified"
            screenshot(page, "evidence")
            page.click("form.logout button")
            page.wait_for_url(f"{url}/login")
            # Units, as maintenance: the oven is outside the grant and is not offered.
            page.fill("#token", MAINT)
            page.click("#login")
            page.wait_for_url(f"{url}/units")
            options = page.locator("#asset option").all_text_contents()
            assert len(options) == 1 and PRESS in options[0]
            assert OVEN not in page.content()
            page.click("#show")
            page.wait_for_selector("body[data-charts]")
            assert page.locator(".chart").count() == len(press_signals)
            assert [c.get_attribute("data-signal") for c in page.locator(".chart").all()] == press_signals
            assert page.text_content("#raw-points") == str(press_rows)
            screenshot(page, "units-run")
        verified = _cli(["evidence", "verify", "--log", str(evidence), "--vkey", signer.vkey], env)
        # Same signed size; the CLI ran after one more entry, the Units view's FETCH.
        assert shown is not None
        pattern = r"ok: (\d+) entries match the signed checkpoint \((\d+) appended since\)"
        in_console, in_cli = re.fullmatch(pattern, shown.strip()), re.fullmatch(pattern, verified.strip())
        assert in_console and in_cli, (shown, verified)
        assert in_console.group(1) == in_cli.group(1)
        assert int(in_cli.group(2)) == int(in_console.group(2)) + 1
    finally:
        for proc, log in reversed(procs):
            stop(proc, log)
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()
    log = SqliteEvidenceLog(evidence)
    try:
        fetches = [e.entry.attributes for e in log.read() if e.entry.event == EventType.FETCH]
    finally:
        log.close()
    console = [(f["principal"], f["table"], f["decision"]) for f in fetches if f.get("channel") == "console"]
    assert console == [
        ("auditor", "evidence", "allowed"),
        ("auditor", "evidence", "allowed"),
        ("maint", "clean", "allowed"),
    ]
