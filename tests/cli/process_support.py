"""Shared helpers for tests that run TIDM's commands as OS processes (no tests here)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

TIDM = [sys.executable, "-m", "tidm.cli.main"]


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`tidm ARGS` in the background, its output into `log`."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*TIDM, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, then wait (bounded); the process must exit cleanly."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, log.read_text()


def start_simulator(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`tidm sim run`; its first output line says where it listens (`simulator_endpoint`)."""
    return subprocess.Popen([*TIDM, "sim", "run", "--config", str(config)], stdout=subprocess.PIPE, env=env)


def simulator_endpoint(sim: subprocess.Popen[bytes]) -> str:
    assert sim.stdout is not None
    endpoint: str = json.loads(sim.stdout.readline())["endpoint"]
    return endpoint


def agent_keygen(folder: Path, agent_id: str, env: dict[str, str]) -> tuple[Path, Path]:
    """`tidm agent keygen` into `folder`: (private key file, trusted-agents file)."""
    key, trust = folder / "agent.key", folder / "trusted.json"
    subprocess.run(
        [*TIDM, "agent", "keygen", "--agent-id", agent_id, "--out", str(key), "--trust-file", str(trust)],
        check=True,
        env=env,
        capture_output=True,
    )
    return key, trust
