"""Settings of the edge agent."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tidm.edge_agent.sources.decoders import QuarantineRetention
from tidm.edge_agent.sources.mqtt import MqttSourceSettings, MqttTlsSettings

__all__ = [
    "AgentSettings",
    "BatchSettings",
    "HealthSettings",
    "OpcUaSourceSettings",
    "PseudonymKeySettings",
    "SpoolSettings",
]


class OpcUaSourceSettings(BaseModel):
    """One OPC UA server. Security is Basic256Sha256 SignAndEncrypt unless `security: none` is
    written explicitly; the secure mode needs the agent's certificate, key and a trust folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str
    # `subscribe` falls back to polling per node when the server refuses a monitored item.
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_interval_ms: float = Field(default=0.0, ge=0)
    publishing_interval_ms: float = Field(default=100.0, gt=0)
    poll_interval_ms: float = Field(default=1000.0, gt=0)
    # Queue enough notifications per item to cover a publishing interval of the fastest signal.
    queue_size: int = Field(default=100, ge=1)
    # Caps per service call; the effective cap is the smaller of these and the server's
    # advertised OperationLimits (MaxMonitoredItemsPerCall, MaxNodesPerRead).
    max_items_per_call: int = Field(default=1000, ge=1)
    max_nodes_per_read: int = Field(default=1000, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    security: Literal["none", "basic256sha256"] = "basic256sha256"
    certificate: Path | None = None
    private_key: Path | None = None
    trust_folder: Path | None = None
    # The agent's own ApplicationUri (in its client certificate).
    application_uri: str = "urn:tidm:agent"
    # The ApplicationUri the server's certificate must hold; None takes the one the server advertises
    # (the host of `endpoint` is always bound). Set it where several servers share one trust folder or
    # one host: a trusted certificate then speaks only for the server it names.
    server_application_uri: str | None = None
    # On every (re)connect, HistoryRead what the server kept since the last sample the agent took per
    # signal (at most `backfill_max_s` back), before live notifications: a restart, a crash or an
    # outage then loses nothing the server historized. Servers without history: logged, live only.
    backfill: bool = True
    backfill_max_s: float = Field(default=3600.0, gt=0)
    # Caps per HistoryRead call (the node cap is also bounded by MaxNodesPerHistoryReadData).
    max_nodes_per_history_read: int = Field(default=100, ge=1)
    backfill_values_per_read: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _secure_needs_files(self) -> OpcUaSourceSettings:
        if self.security != "none":
            missing = [
                name for name in ("certificate", "private_key", "trust_folder") if getattr(self, name) is None
            ]
            if missing:
                msg = (
                    f"security {self.security!r} (the default) needs {', '.join(missing)}; "
                    "write `security: none` to collect without encryption"
                )
                raise ValueError(msg)
        return self


class HealthSettings(BaseModel):
    """The agent's HTTP endpoint: /healthz, /readyz and /metrics (Prometheus)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    # None turns the endpoint off; 0 picks a free port (logged at start).
    port: int | None = Field(default=9464, ge=0, le=65535)


class BatchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rows: int = Field(default=10_000, ge=1)
    max_age_ms: int = Field(default=1_000, ge=1)
    max_pending: int = Field(default=64, ge=1)


class SpoolSettings(BaseModel):
    """The durable spool (see `tidm.edge_agent.spool`): a local folder of sealed, unsent batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Path("spool")
    max_bytes: int = Field(default=1 << 30, ge=1)
    # When full: `pause` holds acquisition (nothing lost while sources can buffer), `drop_oldest`
    # removes the oldest unsent batches, each counted and recorded as a DROP evidence entry.
    full_policy: Literal["pause", "drop_oldest"] = "pause"
    # On stop, how long to keep sending; what is left stays spooled for the next start.
    drain_timeout_s: float = Field(default=10.0, ge=0)


class PseudonymKeySettings(BaseModel):
    """Where the pseudonymization keys come from: a key file and/or a `/run/secrets`-style folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Path | None = None
    folder: Path | None = None
    # Pin an epoch (e.g. to re-run old data); None uses the newest epoch in force.
    epoch: int | None = Field(default=None, ge=0)


class PlanSourceSettings(BaseModel):
    """The agent's side of a plan: the AAS file, and what the AAS does not say (keys, files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aas: Path
    mapping: Path | None = None
    opcua_certificate: Path | None = None
    opcua_private_key: Path | None = None
    opcua_trust_folder: Path | None = None
    # Expected server ApplicationUri per OPC UA endpoint URL (see OpcUaSourceSettings).
    opcua_server_application_uris: dict[str, str] = Field(default_factory=dict)
    mqtt_quarantine_dir: Path = Path("quarantine/mqtt")
    # Max age / max bytes of the MQTT quarantine (see MqttSourceSettings.quarantine_retention).
    mqtt_quarantine_retention: QuarantineRetention = QuarantineRetention()
    # For AID security `basic_sc` (username/password) and `mqtts://` endpoints (TLS).
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: MqttTlsSettings = MqttTlsSettings()


class AgentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_id: str = "agent-1"
    site: str = "site-1"
    key_file: Path = Path("agent.key")
    topic: str = "tidm.samples"
    batch: BatchSettings = BatchSettings()
    opcua: list[OpcUaSourceSettings] = Field(default_factory=list)
    mqtt: list[MqttSourceSettings] = Field(default_factory=list)
    # Sources planned from the equipment's AAS (Asset Interfaces Description), besides the above.
    plans: list[PlanSourceSettings] = Field(default_factory=list)
    # Desensitization: policy file, classification mapping file, pseudonymization keys.
    policy: Path | None = None
    classification: Path | None = None
    pseudonym_keys: PseudonymKeySettings = PseudonymKeySettings()
    # None keeps sealed batches in memory only (lost on a crash); `tidm agent run` warns about it.
    spool: SpoolSettings | None = None
