"""The edge agent: sources, batching, provenance stamping and publishing. Imported only by the CLI."""

from tidm.edge_agent.agent import Agent, AgentStats
from tidm.edge_agent.config import AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.edge_agent.errors import AgentError, SourceError, SourceUnavailable

__all__ = [
    "Agent",
    "AgentError",
    "AgentSettings",
    "AgentStats",
    "BatchSettings",
    "OpcUaSourceSettings",
    "SourceError",
    "SourceUnavailable",
]
