"""The cluster's evidence path with the real processes: an agent, a job and `tidm query` configured with
`evidence.kind: kafka` send their entries to the evidence topic, `tidm notary run` sequences them into
tlog tiles on S3, and `tidm evidence verify` proves every landed object back to the agent's batches."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr
from tests.cli.process_support import TIDM, agent_keygen, simulator_endpoint, start, start_simulator, stop

from tidm.cli.main import cli
from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.evidence.objectstore import S3ObjectStore, S3StoreSettings
from tidm.evidence.tiles import TileEvidenceLog
from tidm.storage import Lake

ASSET = "urn:tidm:asset:press-7"


@pytest.mark.integration
def test_agent_job_and_query_evidence_reach_the_notary_and_verify(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Callable[..., str],
    tmp_path: Path,
) -> None:
    samples, evidence_topic = unique_name("samples"), unique_name("evidence")
    env = {
        **os.environ,
        "TIDM_TRANSPORT__BOOTSTRAP": kafka_bootstrap,
        # Only processes with the section take these: the job and the query (lake), the notary (store).
        "TIDM_LAKE__ACCESS_KEY": s3_config["access_key"],
        "TIDM_LAKE__SECRET_KEY": s3_config["secret_key"],
        "TIDM_STORE__S3__ACCESS_KEY": s3_config["access_key"],
        "TIDM_STORE__S3__SECRET_KEY": s3_config["secret_key"],
    }
    tile_store = {
        "endpoint": s3_config["endpoint"],
        "bucket": s3_bucket,
        "prefix": "evidence",
        "region": s3_config["region"],
        "create_bucket": False,
    }
    evidence = {"kind": "kafka", "topic": evidence_topic}
    notary_key = tmp_path / "notary.key"
    out = CliRunner().invoke(
        cli, ["notary", "keygen", "--name", "tidm.test/cluster", "--out", str(notary_key)]
    )
    assert out.exit_code == 0, out.output
    vkey = out.output.strip()
    notary_cfg = _write(
        tmp_path / "notary.yaml",
        {
            "notary": {
                "topic": evidence_topic,
                "group_id": unique_name("notary"),
                "key_file": str(notary_key),
                "checkpoint_interval_s": 0.5,
            },
            "transport": {"kind": "kafka"},
            "store": {"kind": "s3", "s3": tile_store},
        },
    )
    sim_cfg = _write(tmp_path / "sim.yaml", {"assets": [{"asset_id": ASSET, "name": "Press7"}]})
    sim = start_simulator(sim_cfg, env)
    notary = start(["notary", "run", "--config", str(notary_cfg)], tmp_path / "notary.log", env)
    lake = Lake.s3(
        bucket=s3_bucket,
        prefix="lake",
        endpoint=s3_config["endpoint"],
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
    )
    try:
        endpoint = simulator_endpoint(sim)
        key, trust = agent_keygen(tmp_path, "gw-1", env)
        agent_cfg = _write(
            tmp_path / "agent.yaml",
            {
                "agent": {
                    "agent_id": "gw-1",
                    "site": "plant-9",
                    "key_file": str(key),
                    "topic": samples,
                    "batch": {"max_age_ms": 200},
                    "opcua": [{"endpoint": endpoint, "security": "none"}],
                },
                "transport": {"kind": "kafka", "partitions": 2},
                # The agent stores and forwards: its local log lives with the test's files.
                "evidence": {**evidence, "path": str(tmp_path / "agent-evidence.db")},
            },
        )
        job_spec = _write(
            tmp_path / "job.yaml",
            {
                "name": "clean",
                "topics": [samples],
                "group_id": unique_name("g"),
                "steps": ["drop_bad_samples"],
                "unit_s": 1,
                "idle_s": 0.5,
            },
        )
        lake_settings = {"url": f"s3://{s3_bucket}/lake", "endpoint": s3_config["endpoint"]}
        # The job only appends (no `store`): its chain checks keep to the in-memory window.
        job_cfg = _write(
            tmp_path / "process.yaml",
            {
                "transport": {"kind": "kafka", "partitions": 2},
                "evidence": evidence,
                "lake": {**lake_settings, "region": s3_config["region"]},
                "trusted_agents": str(trust),
            },
        )
        agent = start(["agent", "run", "--config", str(agent_cfg)], tmp_path / "agent.log", env)
        job = start(
            ["job", "run", "--spec", str(job_spec), "--config", str(job_cfg)], tmp_path / "job.log", env
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lake.list_keys("clean")) < 3:
            time.sleep(0.5)
        stop(agent, tmp_path / "agent.log")
        # Stopped cleanly, the agent forwarded its whole local log before it exited.
        with SqliteEvidenceLog(tmp_path / "agent-evidence.db") as local:
            logged = local.size()
        assert logged > 0
        assert (tmp_path / "agent-evidence.db.forwarded").read_text().strip() == str(logged)
        time.sleep(2)
        stop(job, tmp_path / "job.log")
        # A read with a limited grant: the query counts earlier reads in the tile store (its reader)
        # and sends its FETCH entry to the topic.
        grants = _write(
            tmp_path / "grants.yaml",
            {"principals": {"ops": {"grants": [{"id": "all", "tables": ["clean"], "max_reads": 10}]}}},
        )
        query_cfg = _write(
            tmp_path / "read.yaml",
            {
                "lake": lake_settings,
                "evidence": {**evidence, "store": tile_store},
                "transport": {"kind": "kafka"},
                "read": {"grants": str(grants), "principal": "ops"},
            },
        )
        query_env = {
            **env,
            "TIDM_EVIDENCE__STORE__ACCESS_KEY": s3_config["access_key"],
            "TIDM_EVIDENCE__STORE__SECRET_KEY": s3_config["secret_key"],
        }
        queried = subprocess.run(
            [*TIDM, "query", "unit", ASSET, "--from", "2020-01-01", "--to", "now", "--format", "csv"]
            + ["--config", str(query_cfg)],
            env=query_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert queried.returncode == 0, queried.stderr
        assert s3_config["secret_key"] not in queried.stderr + queried.stdout
    finally:
        sim.terminate()
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()
        stop(notary, tmp_path / "notary.log")
    assert len(lake.list_keys("clean")) >= 3, (tmp_path / "job.log").read_text()
    store_settings = S3StoreSettings(
        endpoint=s3_config["endpoint"],
        bucket=s3_bucket,
        prefix="evidence",
        region=s3_config["region"],
        access_key=SecretStr(s3_config["access_key"]),
        secret_key=SecretStr(s3_config["secret_key"]),
        create_bucket=False,
    )
    with TileEvidenceLog(S3ObjectStore(store_settings)) as log:
        entries = [item.entry for item in log.read()]
        assert log.latest_checkpoint() is not None
    actors = {e.actor for e in entries}
    assert {"agent:gw-1", "job:clean", "principal:ops"} <= actors, actors
    assert any(e.event == EventType.FETCH and e.attributes.get("decision") == "allowed" for e in entries)
    verified = CliRunner(
        env={
            "TIDM_S3_ENDPOINT": s3_config["endpoint"],
            "TIDM_S3_ACCESS_KEY": s3_config["access_key"],
            "TIDM_S3_SECRET_KEY_FILE": str(_secret_file(tmp_path, s3_config["secret_key"])),
        }
    ).invoke(
        cli,
        [
            "evidence",
            "verify",
            "--log",
            f"s3://{s3_bucket}/evidence",
            "--lake",
            f"s3://{s3_bucket}/lake",
            "--vkey",
            vkey,
            "--state",
            str(tmp_path / "state.json"),
        ],
    )
    assert verified.exit_code == 0, verified.output
    assert "objects proven back to agent batches" in verified.output


def _write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _secret_file(folder: Path, secret: str) -> Path:
    """The S3 secret key in a file only this user reads (the evidence CLI takes it from files only)."""
    path = folder / "s3-secret-key"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path
