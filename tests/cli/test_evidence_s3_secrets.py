"""`tidm evidence` takes the S3 secret key only from a file, and says so when given a value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidm.cli.main import cli

SECRET = "s3cr3t-value-never-in-argv"  # noqa: S105 - a test value


def _checkpoint_args(folder: Path) -> list[str]:
    key = folder / "notary.key"
    assert (
        CliRunner().invoke(cli, ["notary", "keygen", "--name", "tidm.test/s", "--out", str(key)]).exit_code
        == 0
    )
    return ["--log", "s3://b/p", "--key", str(key), "--out", str(folder / "checkpoint")]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--s3-secret-key", SECRET], {}),
        ([], {"TIDM_S3_SECRET_KEY": SECRET}),
    ],
)
def test_a_secret_given_as_a_value_is_refused(args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    out = CliRunner(env=env).invoke(cli, ["evidence", "checkpoint", *_checkpoint_args(tmp_path), *args])
    assert out.exit_code == 2
    assert "taken only from a file" in out.output and "--s3-secret-key-file" in out.output
    assert SECRET not in out.output


def test_missing_or_empty_secret_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, what in ((tmp_path / "absent", "cannot read"), (empty, "is empty")):
        out = CliRunner().invoke(
            cli, ["evidence", "checkpoint", *_checkpoint_args(tmp_path), "--s3-secret-key-file", str(path)]
        )
        assert out.exit_code == 2 and what in out.output and str(path) in out.output


@pytest.mark.integration
def test_the_secret_file_reaches_s3(
    s3_config: dict[str, str], s3_bucket: str, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    secret = tmp_path / "s3-secret-key"
    secret.write_text(s3_config["secret_key"] + "\n")
    key = tmp_path / "notary.key"
    runner = CliRunner()
    assert runner.invoke(cli, ["notary", "keygen", "--name", "tidm.test/s", "--out", str(key)]).exit_code == 0
    env = {
        "TIDM_S3_ENDPOINT": s3_config["endpoint"],
        "TIDM_S3_ACCESS_KEY": s3_config["access_key"],
        "TIDM_S3_SECRET_KEY_FILE": str(secret),
    }
    out = CliRunner(env=env).invoke(
        cli,
        [
            "evidence",
            "checkpoint",
            "--log",
            f"s3://{s3_bucket}/{unique_name('ev')}",
            "--key",
            str(key),
            "--out",
            str(tmp_path / "checkpoint"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert s3_config["secret_key"] not in out.output
