"""Secrets from files: `TIDM_<SECTION>__<FIELD>_FILE=/run/secrets/...` reads the field's value
from the file, so credentials never sit in the environment (or in a ConfigMap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidm.cli.settings import AgentProcessSettings, ConfigError, JobProcessSettings, load_settings


def test_a_file_variable_reads_the_secret_and_cuts_the_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "s3-secret-key"
    secret.write_text("s3cr3t-from-file\n", encoding="utf-8")
    env = {"TIDM_LAKE__SECRET_KEY_FILE": str(secret), "TIDM_LAKE__ACCESS_KEY": "plain"}
    job = load_settings(JobProcessSettings, None, env)
    assert job.lake.secret_key is not None
    assert job.lake.secret_key.get_secret_value() == "s3cr3t-from-file"
    assert job.lake.access_key is not None and job.lake.access_key.get_secret_value() == "plain"
    assert "s3cr3t" not in repr(job)


def test_a_field_named_like_a_file_keeps_its_meaning(tmp_path: Path) -> None:
    """`agent.key_file` is a path field itself: `TIDM_AGENT__KEY_FILE` sets it, reads nothing."""
    env = {"TIDM_AGENT__KEY_FILE": "/run/secrets/agent/agent.key"}
    agent = load_settings(AgentProcessSettings, None, env)
    assert agent.agent.key_file == Path("/run/secrets/agent/agent.key")


def test_file_variables_of_other_processes_are_skipped_unread(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    agent = load_settings(AgentProcessSettings, None, {"TIDM_LAKE__SECRET_KEY_FILE": str(missing)})
    assert agent.agent.agent_id


def test_an_unreadable_secret_file_names_the_variable_not_the_secret(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError, match=r"TIDM_LAKE__SECRET_KEY_FILE: cannot read the file it names"):
        load_settings(JobProcessSettings, None, {"TIDM_LAKE__SECRET_KEY_FILE": str(missing)})


def test_a_misspelt_file_variable_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "x"
    secret.write_text("v", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lake.secretkey_file"):
        load_settings(JobProcessSettings, None, {"TIDM_LAKE__SECRETKEY_FILE": str(secret)})
