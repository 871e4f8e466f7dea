"""Errors of the equipment simulator."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = [
    "SimulatorConfigError",
    "SimulatorError",
    "SimulatorStartError",
    "SimulatorStateError",
    "SimulatorTimeoutError",
    "SimulatorWriteError",
]


class SimulatorError(TidmError):
    """Base for every error the simulator raises."""


class SimulatorConfigError(SimulatorError, Terminal, ValueError):
    """A simulator configuration file cannot be read or does not validate."""


class SimulatorStartError(SimulatorError, Transient):
    """The server could not listen (e.g. the port is still in use after a restart)."""


class SimulatorStateError(SimulatorError, Terminal):
    """An operation was called in the wrong lifecycle state (e.g. `endpoint` before `start`)."""


class SimulatorTimeoutError(SimulatorError, Transient, TimeoutError):
    """The simulator did not reach the awaited tick count in time."""


class SimulatorWriteError(SimulatorError, Terminal):
    """The OPC UA address space refused a value the simulator produced."""

    def __init__(self, node_id: str, status: str) -> None:
        super().__init__(f"writing {node_id} failed with {status}")
        self.node_id = node_id
        self.status = status
