"""Settings of the edge agent."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AgentSettings", "BatchSettings", "OpcUaSourceSettings"]


class OpcUaSourceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str
    sampling_interval_ms: float = Field(default=0.0, ge=0)
    publishing_interval_ms: float = Field(default=100.0, gt=0)
    # Queue enough notifications per item to cover a publishing interval of the fastest signal.
    queue_size: int = Field(default=100, ge=1)
    max_items_per_call: int = Field(default=1000, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)


class BatchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rows: int = Field(default=10_000, ge=1)
    max_age_ms: int = Field(default=1_000, ge=1)
    max_pending: int = Field(default=64, ge=1)


class AgentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_id: str = "agent-1"
    site: str = "site-1"
    key_file: Path = Path("agent.key")
    topic: str = "tidm.samples"
    batch: BatchSettings = BatchSettings()
    opcua: list[OpcUaSourceSettings] = Field(default_factory=list)
