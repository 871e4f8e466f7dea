"""End to end: simulator -> agent -> transport -> job -> lake, on real services and embedded."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.lineage import assert_exactly_once, assert_lineage

from tidm.cli.pipeline import run_pipeline
from tidm.edge_agent import AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.evidence import SqliteEvidenceLog
from tidm.ingest import AgentIdentity, FolderQuarantine, TopicQuarantine
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport
from tidm.simulator import SignalConfig, SimulatorConfig
from tidm.storage import Lake
from tidm.stream_processing import JobSettings

# Faults on: spikes, stuck values and bad-status gaps all have to travel through.
FAULTY = SignalConfig(
    spike_probability=0.02, gap_probability=0.02, gap_mode="bad_status", stuck_probability=0.02
)


def _sim() -> SimulatorConfig:
    return SimulatorConfig.fleet(4, 10, 100, seed=11, signal=FAULTY, max_ticks=40)


def _agent(topic: str) -> AgentSettings:
    return AgentSettings(
        agent_id="agent-e2e",
        site="plant-1",
        topic=topic,
        batch=BatchSettings(max_rows=300, max_age_ms=300),
        opcua=[OpcUaSourceSettings(endpoint="opc.tcp://set-by-pipeline", security="none")],
    )


@pytest.mark.integration
async def test_pipeline_on_kafka_and_s3_lands_every_sample_once(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    topic = unique_name("samples")
    identity = AgentIdentity.generate("agent-e2e")
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    lake = Lake.s3(
        bucket=s3_bucket,
        prefix="lake",
        endpoint=s3_config["endpoint"],
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
        region=s3_config["region"],
    )
    transport = KafkaTransport(kafka_bootstrap, client_id="e2e")
    result = await run_pipeline(
        sim_config=_sim(),
        agent_settings=_agent(topic),
        identity=identity,
        transport=transport,
        lake=lake,
        evidence=evidence,
        quarantine=lambda producer: TopicQuarantine(producer, evidence, actor="job:e2e"),
        job_settings=JobSettings(name="e2e", topics=(topic,), group_id=unique_name("group")),
        partitions=3,
    )
    assert len(result.produced) == 4 * 10 * 40
    assert result.job.quarantined == 0
    assert_exactly_once(result.produced, lake)
    assert assert_lineage(lake, evidence) == result.job.objects
    evidence.close()


async def test_pipeline_on_embedded_transport_and_local_folder(tmp_path: Path) -> None:
    topic = "tidm.samples"
    identity = AgentIdentity.generate("agent-e2e")
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    lake = Lake.local(tmp_path / "lake")
    result = await run_pipeline(
        sim_config=_sim(),
        agent_settings=_agent(topic),
        identity=identity,
        transport=EmbeddedTransport(tmp_path / "log", partitions=2),
        lake=lake,
        evidence=evidence,
        quarantine=lambda _p: FolderQuarantine(tmp_path / "quarantine", evidence, actor="job:e2e"),
        job_settings=JobSettings(name="e2e", topics=(topic,), group_id="e2e"),
    )
    assert len(result.produced) == 4 * 10 * 40
    assert_exactly_once(result.produced, lake)
    assert assert_lineage(lake, evidence) == result.job.objects
    evidence.close()
