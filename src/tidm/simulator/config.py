"""Settings of the OPC UA equipment simulator: endpoint, assets, signals and their faults.

Every model is frozen and every field has a default, so `SimulatorConfig()` is a working one-asset,
one-signal simulator. Fault lengths are counted in updates of the signal, not in seconds, so a test
can predict exactly what a run produces.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidm.simulator.errors import SimulatorConfigError

__all__ = [
    "MIN_TICK_MS",
    "AssetConfig",
    "GapMode",
    "HistoryConfig",
    "SecurityConfig",
    "ServerLimits",
    "SignalConfig",
    "SignalKind",
    "SimulatorConfig",
    "load_config",
]

SignalKind = Literal["sine", "ramp", "counter", "text-state"]
GapMode = Literal["skip", "bad_status"]

# The update loop ticks at the greatest common divisor of the signal periods; below this the loop
# would spend its time waking up instead of writing.
MIN_TICK_MS = 10

# Names become OPC UA browse names and string node ids `<asset>.<signal>`: no dots, no spaces.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_RECORD_SUFFIXES = (".jsonl", ".csv")
_FLEET_KINDS: tuple[SignalKind, ...] = ("sine", "ramp", "counter", "text-state")


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        msg = (
            f"{what} {value!r} must start with a letter and use only letters, digits, '_' or '-' "
            "(it becomes an OPC UA browse name and part of the node id '<asset>.<signal>')"
        )
        raise ValueError(msg)
    return value


def _reject_duplicates(values: Sequence[str], what: str) -> None:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        msg = f"{what} must be unique; duplicated: {', '.join(dupes)}"
        raise ValueError(msg)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignalConfig(_Frozen):
    """One simulated signal: its shape, its noise and the faults it suffers."""

    name: str = "Value"
    kind: SignalKind = "sine"
    unit: str = ""
    amplitude: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    period_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    noise_std: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    spike_probability: float = Field(default=0.0, ge=0, le=1)
    spike_magnitude: float = Field(default=0.0, allow_inf_nan=False)
    gap_probability: float = Field(default=0.0, ge=0, le=1)
    gap_length: int = Field(default=10, ge=1, description="updates a gap lasts")
    gap_mode: GapMode = "skip"
    stuck_probability: float = Field(default=0.0, ge=0, le=1)
    stuck_length: int = Field(default=10, ge=1, description="updates a stuck value repeats")
    update_period_ms: int = Field(default=100, ge=1)
    states: tuple[str, ...] = Field(default=("IDLE", "RUNNING", "STOPPED"), min_length=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value, "signal name")

    @field_validator("states")
    @classmethod
    def _states_ok(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not state for state in value):
            msg = "text-state states must be non-empty strings"
            raise ValueError(msg)
        return value


class AssetConfig(_Frozen):
    """One piece of equipment: an OPC UA object carrying its global id and its signals."""

    asset_id: str = "urn:tidm:asset:asset-001"
    name: str = "Asset001"
    signals: tuple[SignalConfig, ...] = Field(default=(SignalConfig(),), min_length=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value, "asset name")

    @field_validator("asset_id")
    @classmethod
    def _asset_id_ok(cls, value: str) -> str:
        if not value or value != value.strip() or any(c.isspace() for c in value):
            msg = f"asset_id {value!r} must be non-empty and contain no whitespace"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _unique_signals(self) -> Self:
        _reject_duplicates([s.name for s in self.signals], f"signal names of asset {self.name!r}")
        return self


class ServerLimits(_Frozen):
    """Operation limits advertised under Server/ServerCapabilities, and the ones asyncua enforces.

    The `max_nodes_per_*` and `max_monitored_items_per_call` values are only advertised: asyncua's
    server does not reject larger requests. The last four are enforced by asyncua.
    """

    max_nodes_per_read: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_write: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_browse: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_register_nodes: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_translate_browse_paths: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_method_call: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_monitored_items_per_call: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_nodes_per_history_read_data: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_monitored_item_queue_size: int = Field(default=10_000, ge=1, le=2**32 - 1)
    max_subscriptions: int = Field(default=1_000, ge=1, le=2**32 - 1)
    max_connections: int = Field(default=1_000, ge=1)
    max_message_size: int = Field(default=100 * 1024 * 1024, ge=8192)


class SecurityConfig(_Frozen):
    """Endpoint security. `none` offers only the unsecured endpoint."""

    mode: Literal["none", "basic256sha256"] = "none"
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _paths_for_secure_mode(self) -> Self:
        if self.mode != "none" and (self.certificate is None or self.private_key is None):
            msg = f"security mode {self.mode!r} needs both 'certificate' and 'private_key' paths"
            raise ValueError(msg)
        return self


class HistoryConfig(_Frozen):
    """Historical access: when enabled, every written sample is kept (the newest
    `max_samples_per_signal` per variable) and served by HistoryRead (ReadRawModifiedDetails).
    Disabled, HistoryRead answers BadHistoryOperationUnsupported, like a server without history."""

    enabled: bool = False
    max_samples_per_signal: int = Field(default=100_000, ge=1)


class SimulatorConfig(_Frozen):
    """The whole simulator: endpoint, namespace, assets, reproducibility and recording."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    namespace_uri: str = "urn:tidm:simulator"
    extra_namespaces_before: tuple[str, ...] = ()
    application_uri: str = "urn:tidm:simulator:server"
    server_name: str = "TIDM equipment simulator"
    assets: tuple[AssetConfig, ...] = Field(default=(AssetConfig(),), min_length=1)
    seed: int = 0
    max_ticks: int | None = Field(default=None, ge=1, description="stop updating after this many ticks")
    start_paused: bool = False
    produced_limit: int | None = Field(
        default=None, ge=0, description="samples kept in memory; None keeps all, 0 keeps none"
    )
    record_path: Path | None = None
    limits: ServerLimits = ServerLimits()
    security: SecurityConfig = SecurityConfig()
    history: HistoryConfig = HistoryConfig()

    @field_validator("namespace_uri")
    @classmethod
    def _uri_ok(cls, value: str) -> str:
        if not value or ";" in value or any(c.isspace() for c in value):
            msg = (
                f"namespace_uri {value!r} must be non-empty, without ';' or whitespace "
                "(it goes in 'nsu=...;s=...')"
            )
            raise ValueError(msg)
        return value

    @field_validator("record_path")
    @classmethod
    def _record_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix not in _RECORD_SUFFIXES:
            msg = f"record_path {str(value)!r} must end with one of {', '.join(_RECORD_SUFFIXES)}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.namespace_uri in self.extra_namespaces_before:
            msg = (
                "extra_namespaces_before must not contain the simulator's own "
                f"namespace_uri {self.namespace_uri!r}"
            )
            raise ValueError(msg)
        _reject_duplicates(list(self.extra_namespaces_before), "extra_namespaces_before")
        _reject_duplicates([a.name for a in self.assets], "asset names")
        _reject_duplicates([a.asset_id for a in self.assets], "asset ids")
        tick = self.tick_ms
        if tick < MIN_TICK_MS:
            periods = sorted({s.update_period_ms for a in self.assets for s in a.signals})
            msg = (
                f"signal update periods {periods} ms share a common tick of {tick} ms; it must be at "
                f"least {MIN_TICK_MS} ms (use periods that are multiples of a common value, e.g. 100 and 250)"
            )
            raise ValueError(msg)
        return self

    @property
    def tick_ms(self) -> int:
        """The update loop's period: the greatest common divisor of all signal update periods."""
        return reduce(math.gcd, (s.update_period_ms for a in self.assets for s in a.signals))

    @property
    def signal_count(self) -> int:
        """Number of simulated variables."""
        return sum(len(a.signals) for a in self.assets)

    @classmethod
    def fleet(
        cls,
        n_assets: int,
        signals_per_asset: int,
        period_ms: int = 100,
        seed: int = 0,
        *,
        signal: SignalConfig | None = None,
        **fields: Any,
    ) -> SimulatorConfig:
        """Build a synthetic fleet of `n_assets` x `signals_per_asset` variables.

        Assets are `Asset0001`.. (`urn:tidm:asset:asset-0001`..), signals `Signal001`..; kinds cycle
        through sine, ramp, counter and text-state. `signal` is the template for every signal's other
        settings (noise, faults, ...); `fields` are passed on to `SimulatorConfig`.
        """
        if n_assets < 1 or signals_per_asset < 1:
            msg = f"fleet needs at least one asset and one signal, got {n_assets} x {signals_per_asset}"
            raise SimulatorConfigError(msg)
        template = signal or SignalConfig()
        width = max(4, len(str(n_assets)))
        swidth = max(3, len(str(signals_per_asset)))
        assets = []
        for i in range(1, n_assets + 1):
            signals = tuple(
                template.model_copy(
                    update={
                        "name": f"Signal{j:0{swidth}d}",
                        "kind": _FLEET_KINDS[(j - 1) % len(_FLEET_KINDS)],
                        # Spread the periods of the shapes so neighbouring signals differ.
                        "period_s": template.period_s * (1 + (j % 7) / 7),
                        "update_period_ms": period_ms,
                    }
                )
                for j in range(1, signals_per_asset + 1)
            )
            assets.append(
                AssetConfig(
                    asset_id=f"urn:tidm:asset:asset-{i:0{width}d}",
                    name=f"Asset{i:0{width}d}",
                    signals=signals,
                )
            )
        try:
            return cls.model_validate({**fields, "assets": tuple(assets), "seed": seed})
        except ValidationError as exc:
            msg = f"invalid fleet configuration:\n{exc}"
            raise SimulatorConfigError(msg) from exc


def load_config(path: str | Path) -> SimulatorConfig:
    """Read a simulator configuration from a YAML (or JSON) file."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read simulator config {source}: {exc}"
        raise SimulatorConfigError(msg) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"simulator config {source} must be a mapping at the top level, got {type(data).__name__}"
        raise SimulatorConfigError(msg)
    try:
        return SimulatorConfig.model_validate(data)
    except ValidationError as exc:
        msg = f"invalid simulator config {source}:\n{exc}"
        raise SimulatorConfigError(msg) from exc
