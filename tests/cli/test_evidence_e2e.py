"""End to end on real Kafka and S3: the pipeline's evidence goes through the evidence topic to the
notary, which writes tlog tiles on S3; `tidm evidence verify` then proves every landed object back to
its agent's signed batches, and a proof bundle verifies offline in a fresh process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from tidm.cli.commands.notary import run_notary
from tidm.cli.main import cli
from tidm.cli.pipeline import run_pipeline
from tidm.cli.settings import (
    EvidenceStoreSettings,
    NotaryProcessSettings,
    NotarySection,
    TransportSettings,
)
from tidm.edge_agent import AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.evidence import Signer, save_signer
from tidm.evidence.objectstore import S3ObjectStore, S3StoreSettings
from tidm.evidence.tiles import TileEvidenceLog
from tidm.ingest import AgentIdentity, TopicQuarantine
from tidm.ingest.evidence_sink import KafkaEvidenceSink
from tidm.ingest.transports import KafkaTransport
from tidm.simulator import SimulatorConfig
from tidm.storage import Lake
from tidm.stream_processing import JobSettings


@pytest.mark.integration
async def test_pipeline_evidence_via_notary_and_s3_tiles_verifies_and_proves(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Callable[..., str],
    tmp_path: Path,
) -> None:
    samples, evidence_topic = unique_name("samples"), unique_name("evidence")
    signer = Signer.generate("tidm.test/e2e")
    save_signer(signer, tmp_path / "notary.key")
    store_settings = S3StoreSettings(
        endpoint=s3_config["endpoint"],
        bucket=s3_bucket,
        prefix="evidence",
        access_key=SecretStr(s3_config["access_key"]),
        secret_key=SecretStr(s3_config["secret_key"]),
        region=s3_config["region"],
        create_bucket=False,
    )
    notary_settings = NotaryProcessSettings(
        notary=NotarySection(
            topic=evidence_topic,
            group_id=unique_name("notary"),
            key_file=tmp_path / "notary.key",
            checkpoint_every=100,
            checkpoint_interval_s=1.0,
        ),
        transport=TransportSettings(kind="kafka", bootstrap=kafka_bootstrap),
        store=EvidenceStoreSettings(kind="s3", s3=store_settings),
    )
    notary_stop = asyncio.Event()
    notary = asyncio.create_task(run_notary(notary_settings, stop=notary_stop))
    reader = TileEvidenceLog(S3ObjectStore(store_settings))
    transport = KafkaTransport(kafka_bootstrap, client_id="e2e-evidence")
    sink = KafkaEvidenceSink(transport, evidence_topic, reader=reader).start()
    lake = Lake.s3(
        bucket=s3_bucket,
        prefix="lake",
        endpoint=s3_config["endpoint"],
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
        region=s3_config["region"],
    )
    try:
        result = await run_pipeline(
            sim_config=SimulatorConfig.fleet(2, 5, 100, seed=5, max_ticks=20),
            agent_settings=AgentSettings(
                agent_id="agent-e2e",
                site="plant-1",
                topic=samples,
                batch=BatchSettings(max_rows=50, max_age_ms=200),
                opcua=[OpcUaSourceSettings(endpoint="opc.tcp://set-by-pipeline", security="none")],
            ),
            identity=AgentIdentity.generate("agent-e2e"),
            transport=transport,
            lake=lake,
            evidence=sink,
            quarantine=lambda producer: TopicQuarantine(producer, sink, actor="job:e2e"),
            job_settings=JobSettings(name="e2e", topics=(samples,), group_id=unique_name("group")),
            partitions=2,
        )
    finally:
        sent = sink.sent_entries
        sink.close()
        notary_stop.set()
        stats = await asyncio.wait_for(notary, 120)
        reader.close()
    assert result.job.objects >= 2
    assert stats.appended == sent and stats.rejected == 0
    env = {
        **os.environ,
        "TIDM_S3_ENDPOINT": s3_config["endpoint"],
        "TIDM_S3_ACCESS_KEY": s3_config["access_key"],
        "TIDM_S3_SECRET_KEY_FILE": str(_secret_file(tmp_path, s3_config["secret_key"])),
    }
    log_url, lake_url = f"s3://{s3_bucket}/evidence", f"s3://{s3_bucket}/lake"
    runner = CliRunner(env=env)
    out = runner.invoke(
        cli,
        [
            "evidence",
            "verify",
            "--log",
            log_url,
            "--lake",
            lake_url,
            "--vkey",
            signer.verifier.vkey,
            "--state",
            str(tmp_path / "state.json"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert f"{result.job.objects} objects proven back to agent batches" in out.output
    key = result.job.landed_keys[0]
    bundle = tmp_path / "bundle.json"
    out = runner.invoke(
        cli, ["evidence", "prove", key, "--log", log_url, "--lake", lake_url, "--out", str(bundle)]
    )
    assert out.exit_code == 0, out.output
    (tmp_path / "object.parquet").write_bytes(lake.read_bytes(key))
    # The auditor's side: a fresh process with the bundle, the file and the public key, no services.
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("TIDM_")}
    fresh = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidm.cli.main",
            "evidence",
            "verify",
            "--bundle",
            str(bundle),
            "--file",
            str(tmp_path / "object.parquet"),
            "--vkey",
            signer.verifier.vkey,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(bundle.read_text())["object"] == key


def _secret_file(folder: Path, secret: str) -> Path:
    """The S3 secret key in a file only this user reads (the evidence CLI takes it from files only)."""
    path = folder / "s3-secret-key"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path
