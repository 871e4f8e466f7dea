"""OPC UA equipment simulator: assets with noisy, faulty signals on an asyncua server.

Used by the demo and the integration tests; `produced` tells a test exactly which samples exist.
Imports only `tidm.errors` (and needs the `opcua` extra).
"""

from tidm.simulator.config import (
    AssetConfig,
    HistoryConfig,
    SecurityConfig,
    ServerLimits,
    SignalConfig,
    SimulatorConfig,
    load_config,
)
from tidm.simulator.errors import (
    SimulatorConfigError,
    SimulatorError,
    SimulatorStartError,
    SimulatorStateError,
    SimulatorTimeoutError,
    SimulatorWriteError,
)
from tidm.simulator.record import ProducedSample, read_produced
from tidm.simulator.server import Simulator, SimulatorStats, run_forever, serve
from tidm.simulator.signals import Reading, SignalGenerator

__all__ = [
    "AssetConfig",
    "HistoryConfig",
    "ProducedSample",
    "Reading",
    "SecurityConfig",
    "ServerLimits",
    "SignalConfig",
    "SignalGenerator",
    "Simulator",
    "SimulatorConfig",
    "SimulatorConfigError",
    "SimulatorError",
    "SimulatorStartError",
    "SimulatorStateError",
    "SimulatorStats",
    "SimulatorTimeoutError",
    "SimulatorWriteError",
    "load_config",
    "read_produced",
    "run_forever",
    "serve",
]
