"""Simulator processes for the OPC UA source tests: `python -m tidm.simulator --config ...`.

Each process announces one JSON line with its endpoint. Several processes spread a large address
space over the machine's cores (an asyncua server handles about 2,000 updating variables well).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tidm.edge_agent.sources.opcua import PlannedNode
from tidm.simulator import Simulator, SimulatorConfig


class SimProcess:
    """One simulator in its own process; `stop()` ends it with SIGTERM (killing it if it hangs)."""

    def __init__(self, config: SimulatorConfig, workdir: Path, name: str) -> None:
        self.config = config
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        self.launch()
        return self.wait_ready(timeout_s)

    def launch(self) -> None:
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidm.simulator", "--config", str(self.path)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = ""
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
        assert line, f"simulator did not start: {self.stderr_path.read_text()}"
        self.info = json.loads(line)
        return self.info

    @property
    def endpoint(self) -> str:
        return str(self.info["endpoint"])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def restart_with(self, config: SimulatorConfig) -> dict[str, Any]:
        """Stop, then start a new process with `config` (same port: a server restart)."""
        self.stop()
        self.config = config
        self.path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
        return self.start()


def plan_for(config: SimulatorConfig) -> list[PlannedNode]:
    """The plan of every simulated variable, by ExpandedNodeId (namespace URI, not index)."""
    return [PlannedNode(a, s, n) for (a, s), n in Simulator(config).node_ids().items()]


@contextmanager
def sim_processes(configs: list[SimulatorConfig], workdir: Path) -> Iterator[list[SimProcess]]:
    """Start one process per config (all started before waiting, so they build in parallel)."""
    sims = [SimProcess(c, workdir, f"sim{i}") for i, c in enumerate(configs)]
    try:
        for sim in sims:
            sim.launch()
        for sim in sims:
            sim.wait_ready()
        yield sims
    finally:
        for sim in sims:
            sim.stop()
