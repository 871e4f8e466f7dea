"""The fleet's processes as separate OS processes: simulator, agent and job on real Kafka and S3."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from tests.cli.process_support import TIDM, agent_keygen, simulator_endpoint, start, start_simulator, stop

from tidm.cli.main import cli
from tidm.evidence import Signer, save_signer
from tidm.storage import Lake


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for args in (
        [],
        ["demo"],
        ["agent"],
        ["agent", "keygen"],
        ["agent", "run"],
        ["job"],
        ["job", "run"],
        ["sim", "run"],
        ["evidence", "checkpoint"],
        ["evidence", "verify"],
    ):
        out = runner.invoke(cli, [*args, "--help"])
        assert out.exit_code == 0, (args, out.output)
        assert "Usage:" in out.output


def test_bad_job_spec_names_the_file_line_and_step(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\nsteps:\n  - drop_bad_samples\n  - despike: {nonsense: 3}\n")
    out = CliRunner().invoke(cli, ["job", "run", "--spec", str(spec)])
    assert out.exit_code != 0
    assert f"{spec}:4: step 2 'despike'" in str(out.exception)


def test_job_spec_and_process_settings_load_separately_or_combined(tmp_path: Path) -> None:
    from tidm.cli.processes import load_job

    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\ntopics: [t1]\nsteps: [drop_bad_samples]\n")
    config = tmp_path / "process.yaml"
    config.write_text("transport: {kind: embedded, partitions: 3}\nquarantine: folder\n")
    settings, loaded = load_job(spec, config)
    assert loaded.name == "j" and loaded.topics == ("t1",) and settings.transport.partitions == 3
    combined = tmp_path / "combined.yaml"
    combined.write_text("job: {name: k, group_id: g}\ntransport: {partitions: 2}\n")
    settings, loaded = load_job(combined)
    assert loaded.name == "k" and loaded.group == "g" and settings.transport.partitions == 2


def test_bad_settings_name_the_file_and_field(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("job:\n  max_records: -1\n  nonsense: 1\n")
    out = CliRunner().invoke(cli, ["job", "run", "--spec", str(spec)])
    assert out.exit_code != 0
    text = str(out.exception)
    assert str(spec) in text and "job.max_records" in text and "job.nonsense" in text


@pytest.mark.integration
def test_agent_and_job_processes_on_kafka_and_s3(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    topic = unique_name("samples")
    env = {**os.environ, "TIDM_TRANSPORT__BOOTSTRAP": kafka_bootstrap}
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(yaml.safe_dump({"assets": [{"asset_id": "urn:tidm:asset:press-7", "name": "Press7"}]}))
    sim = start_simulator(sim_cfg, env)
    try:
        endpoint = simulator_endpoint(sim)
        key, trust = agent_keygen(tmp_path, "gw-1", env)
        evidence = tmp_path / "evidence.db"
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
                    "health": {"port": 0},
                }
            )
        )
        # The spec says what the job does; the process settings say where it runs.
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
                    "lake": {
                        "url": f"s3://{s3_bucket}/lake",
                        "endpoint": s3_config["endpoint"],
                        "region": s3_config["region"],
                    },
                    "trusted_agents": str(trust),
                }
            )
        )
        # Secrets come from the environment, as on Kubernetes, not from the file.
        env["TIDM_LAKE__ACCESS_KEY"] = s3_config["access_key"]
        env["TIDM_LAKE__SECRET_KEY"] = s3_config["secret_key"]
        agent = start(["agent", "run", "--config", str(agent_cfg)], tmp_path / "agent.log", env)
        job = start(
            ["job", "run", "--spec", str(job_spec), "--config", str(job_cfg)], tmp_path / "job.log", env
        )
        lake = Lake.s3(
            bucket=s3_bucket,
            prefix="lake",
            endpoint=s3_config["endpoint"],
            access_key=s3_config["access_key"],
            secret_key=s3_config["secret_key"],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lake.list_keys("clean")) < 3:
            time.sleep(0.5)
        stop(agent, tmp_path / "agent.log")
        time.sleep(2)
        stop(job, tmp_path / "job.log")
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()
    keys = lake.list_keys("clean")
    assert len(keys) >= 3, (tmp_path / "job.log").read_text()
    assert all("site=plant-9/asset=urn%3Atidm%3Aasset%3Apress-7/date=" in k for k in keys)
    table = pq.read_table(lake.path(keys[0]), filesystem=lake.filesystem)
    assert table.num_rows > 0
    signer = Signer.generate("test/notary")
    save_signer(signer, tmp_path / "notary.key")
    cp = tmp_path / "checkpoint"
    subprocess.run(
        [
            *TIDM,
            "evidence",
            "checkpoint",
            "--log",
            str(evidence),
            "--key",
            str(tmp_path / "notary.key"),
            "--out",
            str(cp),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    verified = subprocess.run(
        [*TIDM, "evidence", "verify", "--log", str(evidence), "--checkpoint", str(cp), "--vkey", signer.vkey],
        env=env,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: ")
