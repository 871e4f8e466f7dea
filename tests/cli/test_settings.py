import re
from pathlib import Path

import pytest

from tidm.cli.settings import AgentProcessSettings, ConfigError, JobProcessSettings, load_settings


def test_environment_overrides_the_file_and_skips_other_processes_sections(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("transport:\n  kind: kafka\n  bootstrap: file:9092\n")
    env = {
        "TIDM_TRANSPORT__BOOTSTRAP": "env:9092",
        "TIDM_LAKE__SECRET_KEY": "s3cr3t",
        "TIDM_AGENT__SITE": "ignored-by-jobs",
        "OTHER": "x",
    }
    job = load_settings(JobProcessSettings, path, env)
    assert job.transport.bootstrap == "env:9092"
    assert job.lake.secret_key is not None and job.lake.secret_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(job), "secrets never show in reprs or logs"
    agent = load_settings(AgentProcessSettings, None, env)
    assert agent.agent.site == "ignored-by-jobs"


def test_unknown_field_in_a_known_section_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"<defaults>: transport.bootstrapp: Extra inputs"):
        load_settings(JobProcessSettings, None, {"TIDM_TRANSPORT__BOOTSTRAPP": "x"})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(JobProcessSettings, tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(JobProcessSettings, bad, {})


def test_kafka_security_from_settings_and_secret_files(tmp_path: Path) -> None:
    from tidm.cli.wiring import build_transport
    from tidm.ingest.transports import KafkaTransport

    secret = tmp_path / "kafka-password"
    secret.write_text("s3cr3t\n")
    env = {
        "TIDM_TRANSPORT__KIND": "kafka",
        "TIDM_TRANSPORT__SECURITY__PROTOCOL": "SASL_PLAINTEXT",
        "TIDM_TRANSPORT__SECURITY__USERNAME": "tidm-job",
        "TIDM_TRANSPORT__SECURITY__PASSWORD_FILE": str(secret),
    }
    settings = load_settings(JobProcessSettings, None, env)
    assert settings.transport.security.password is not None
    assert settings.transport.security.password.get_secret_value().strip() == "s3cr3t"
    transport = build_transport(settings.transport, client_id="t")
    assert isinstance(transport, KafkaTransport)
    options = transport.security.client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_plain_username"] == "tidm-job"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in repr(transport)


def test_evidence_defaults_to_the_local_sqlite_log() -> None:
    job = load_settings(JobProcessSettings, None, {})
    assert (job.evidence.kind, job.evidence.path, job.evidence.store) == ("sqlite", Path("evidence.db"), None)
    assert (job.evidence.topic, job.evidence.partitions) == ("tidm.evidence", 1)


def test_kafka_evidence_with_a_tile_store_and_secrets_from_files(tmp_path: Path) -> None:
    from tidm.cli.settings import LakeAccessSettings

    path = tmp_path / "read.yaml"
    path.write_text(
        "evidence:\n"
        "  kind: kafka\n"
        "  topic: plant.evidence\n"
        "  store:\n"
        "    endpoint: http://s3.example:9000\n"
        "    bucket: tidm-evidence\n"
        "    prefix: log\n"
    )
    secret = tmp_path / "secret-key"
    secret.write_text("s3cr3t\n")
    env = {"TIDM_EVIDENCE__STORE__SECRET_KEY_FILE": str(secret), "TIDM_EVIDENCE__STORE__ACCESS_KEY": "ak"}
    settings = load_settings(LakeAccessSettings, path, env)
    store = settings.evidence.store
    assert settings.evidence.kind == "kafka" and settings.evidence.topic == "plant.evidence"
    assert store is not None and (store.endpoint, store.bucket, store.prefix) == (
        "http://s3.example:9000",
        "tidm-evidence",
        "log",
    )
    assert store.secret_key is not None and store.secret_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("  kind: pulsar\n", r":4: evidence.kind: Input should be 'sqlite' or 'kafka'"),
        (
            "  kind: kafka\n  partitions: 0\n",
            r":5: evidence.partitions: Input should be greater than or equal to 1",
        ),
        ("  kind: kafka\n  store:\n    buckt: x\n", r":6: evidence.store.buckt: Extra inputs"),
    ],
)
def test_bad_evidence_settings_name_the_file_line_and_field(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("transport:\n  kind: kafka\nevidence:\n" + body)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + expected):
        load_settings(JobProcessSettings, path, {})


def test_kafka_evidence_without_a_store_fails_where_evidence_is_read() -> None:
    from tidm.cli.settings import EvidenceSettings, TransportSettings
    from tidm.cli.wiring import open_evidence

    settings = EvidenceSettings(kind="kafka")
    with pytest.raises(ConfigError, match=r"evidence\.store is not set: .*`tidm serve`"):
        open_evidence(settings, TransportSettings(), client_id="t", reads_for="`tidm serve`")


def test_query_with_kafka_evidence_and_no_store_names_the_missing_setting(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tidm.cli.main import cli

    config = tmp_path / "read.yaml"
    config.write_text(f"evidence:\n  kind: kafka\ntransport:\n  kind: embedded\n  path: {tmp_path / 'log'}\n")
    out = CliRunner().invoke(
        cli, ["query", "unit", "a", "--from", "2026-01-01", "--to", "2026-01-02", "--config", str(config)]
    )
    assert isinstance(out.exception, ConfigError)
    assert "evidence.store is not set" in str(out.exception) and "tidm query" in str(out.exception)
    assert not (tmp_path / "log").exists(), "fails before connecting anywhere"
