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
