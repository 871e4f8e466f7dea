"""The bare-gateway install: the systemd unit (verified by systemd-analyze where it exists, and
structurally everywhere), the install script (dry run, shellcheck) and its settings template."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidm.cli.main import cli
from tidm.cli.settings import AgentProcessSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "deploy" / "gateway"
UNIT = GATEWAY / "tidm-agent.service"
INSTALL = GATEWAY / "install.sh"


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit as section -> key -> values (systemd keys repeat, so values are lists)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key, []).append(value)
    return sections


def test_unit_is_hardened() -> None:
    service = _unit()["Service"]
    required = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "tidm-agent",
        "UMask": "0077",
    }
    for key, value in required.items():
        assert service.get(key) == [value], f"{key}={value}"
    assert service["User"] == ["tidm-agent"] and "DynamicUser" not in service
    assert "@system-service" in service["SystemCallFilter"]
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["MemoryMax"], "a memory ceiling"
    assert any(c.startswith("agent.key:") for c in service["LoadCredential"])
    assert service["Restart"] == ["always"]


def test_unit_runs_a_real_command_with_its_key_from_credentials() -> None:
    service = _unit()["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/tidm-agent/venv/bin/tidm"
    assert argv[1:4] == ["agent", "run", "--config"]
    assert CliRunner().invoke(cli, ["agent", "run", "--help"]).exit_code == 0
    env = dict(e.split("=", 1) for e in service["Environment"])
    assert env["TIDM_AGENT__KEY_FILE"] == "%d/agent.key", "the key comes from $CREDENTIALS_DIRECTORY"
    assert env["NUMBA_CACHE_DIR"].startswith("/var/cache/tidm-agent"), "the cache is the CacheDirectory"


def _systemd_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    tidm = str(Path(sys.executable).parent / "tidm")
    copy = tmp_path / "tidm-agent.service"
    copy.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/tidm-agent/venv/bin/tidm", tidm))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(_systemd_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are warnings with exit code 0: any output is a failure.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_exposure_level_is_low(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(_systemd_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 2.0, proc.stdout


def _settings_template(agent_id: str = "gw-1") -> str:
    text = (GATEWAY / "agent.yaml").read_text(encoding="utf-8")
    return text.replace("@AGENT_ID@", agent_id).replace("@SITE@", "plant-a").replace("@BOOTSTRAP@", "k:9093")


def test_settings_template_is_accepted_and_matches_the_unit(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(_settings_template(), encoding="utf-8")
    credentials = "/run/credentials/tidm-agent.service"
    env = {"TIDM_AGENT__KEY_FILE": f"{credentials}/agent.key"}  # the unit's %d/agent.key
    settings = load_settings(AgentProcessSettings, path, env)
    service = _unit()["Service"]
    loaded = {c.split(":", 1)[0] for c in service["LoadCredential"]}
    for source in settings.agent.opcua:
        for file in (source.certificate, source.private_key):
            assert file is not None and str(file.parent) == credentials and file.name in loaded
    assert settings.agent.spool is not None
    assert str(settings.agent.spool.path).startswith("/var/lib/tidm-agent/"), "spool in StateDirectory"
    assert str(settings.evidence.path).startswith("/var/lib/tidm-agent/")


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_install_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    proc = _install("--dry-run", "--agent-id", "gw-1", "--prefix", str(prefix), "--no-start")
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    for expected in (
        "useradd --system",
        "install -d -o root -g root -m 0700 /etc/tidm-agent/credentials",
        f"{prefix}/venv",
        "--require-hashes",
        "agent keygen --agent-id gw-1",
        "/etc/systemd/system/tidm-agent.service",
        "systemctl enable tidm-agent.service",
    ):
        assert expected in plan, expected
    assert "systemctl restart" not in plan, "--no-start"
    assert not prefix.exists(), "a dry run creates nothing"


def test_install_rejects_bad_arguments() -> None:
    assert _install("--dry-run", "--agent-id", "bad id;rm").returncode == 2
    assert _install("--frobnicate").returncode == 2
    assert _install("--help").returncode == 0


def test_install_derives_the_public_key_the_way_keygen_prints_it(tmp_path: Path) -> None:
    """The Python snippet install.sh uses to write agent.pub for a kept key."""
    script = INSTALL.read_text(encoding="utf-8")
    snippet = script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    key = tmp_path / "agent.key"
    printed = CliRunner().invoke(cli, ["agent", "keygen", "--agent-id", "gw-1", "--out", str(key)])
    assert printed.exit_code == 0, printed.output
    derived = subprocess.run(
        [sys.executable, "-", str(key)], input=snippet, capture_output=True, text=True, timeout=60, check=True
    )
    assert derived.stdout.strip() == printed.output.strip()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    scripts = [INSTALL, ROOT / "deploy" / "tools" / "kustomize.sh"]
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
