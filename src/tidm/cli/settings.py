"""Process settings: a YAML file, overridden by `TIDM_<SECTION>__<FIELD>` environment variables.

The environment is read here, at the entry point, and nowhere deeper; parts get settings objects.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from tidm.console.config import ConsoleSection
from tidm.edge_agent.config import AgentSettings, HealthSettings
from tidm.errors import Terminal, TidmError
from tidm.evidence.objectstore import S3StoreSettings
from tidm.storage.config import LakeSettings

__all__ = [
    "AgentProcessSettings",
    "ConfigError",
    "ConsoleSettings",
    "EvidenceSettings",
    "JobProcessSettings",
    "NotaryProcessSettings",
    "TransportSettings",
    "load_settings",
]

ENV_PREFIX = "TIDM_"
M = TypeVar("M", bound=BaseModel)


class ConfigError(TidmError, Terminal):
    """A settings file or variable is invalid; the message names the file and the field."""


class KafkaSecuritySettings(BaseModel):
    """TLS and SASL to the Kafka cluster (files from /run/secrets; the password via `..._FILE`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class TransportSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kafka", "embedded"] = "embedded"
    bootstrap: str = "127.0.0.1:9092"
    path: Path = Path("tidm-log")
    partitions: int = Field(default=4, ge=1)
    security: KafkaSecuritySettings = KafkaSecuritySettings()


class EvidenceSettings(BaseModel):
    """Where a process's evidence entries go.

    `sqlite`: a local log at `path` (embedded mode, one process or one host). `kafka`: the cluster's
    evidence `topic`, over the process's transport (same bootstrap and security); the notary sequences
    it into its store. Appends need nothing more; reads (grant read limits, durable duplicate checks)
    are served by the notary's tile store, given as `store` (used read-only). An edge agent with
    `kafka` stores and forwards: it appends to the local log at `path` and a background thread sends
    the entries on to the topic, so it never waits on the uplink.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sqlite", "kafka"] = "sqlite"
    path: Path = Path("evidence.db")
    topic: str = "tidm.evidence"
    partitions: int = Field(default=1, ge=1)
    store: S3StoreSettings | None = None


class AgentProcessSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: AgentSettings = AgentSettings()
    transport: TransportSettings = TransportSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    health: HealthSettings = HealthSettings()


class JobProcessSettings(BaseModel):
    """Where a stream job runs (`tidm job run --spec JOB.yaml [--config PROCESS.yaml]`).

    What the job does is its spec (tidm.stream_processing.spec). A single file may hold both: the
    spec under `job:` next to these sections; `job` is then validated as a spec, not here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: dict[str, Any] | None = None
    # Off unless a port is set: several jobs on one host would share the agent's default port.
    health: HealthSettings = HealthSettings(port=None)
    transport: TransportSettings = TransportSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    lake: LakeSettings = LakeSettings()
    trusted_agents: Path = Path("trusted-agents.json")
    quarantine: Literal["topic", "folder"] = "topic"
    quarantine_path: Path = Path("quarantine")


class NotarySection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = "tidm.evidence"
    group_id: str = "tidm-notary"
    key_file: Path = Path("notary.key")
    origin: str | None = None
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval_s: float = Field(default=5.0, gt=0)


class EvidenceStoreSettings(BaseModel):
    """Where the notary writes: SQLite (`path` a file), tiles in a folder (`path`) or tiles on S3."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sqlite", "tiles", "s3"] = "sqlite"
    path: Path = Path("evidence.db")
    s3: S3StoreSettings = S3StoreSettings()


class NotaryProcessSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    notary: NotarySection = NotarySection()
    health: HealthSettings = HealthSettings(port=None)
    transport: TransportSettings = TransportSettings()
    store: EvidenceStoreSettings = EvidenceStoreSettings()


class ReadSection(BaseModel):
    """Who reads and what governs reads: grants, the signal catalog, retention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    principal: str = "local-operator"
    grants: Path = Path("grants.yaml")
    catalog: Path | None = None
    retention_days: dict[str, int] = Field(default_factory=dict)
    # The read side's identity in the FETCH entries it records (`served_by`).
    served_by: str = Field(default="serve", min_length=1, max_length=128)
    # With evidence through Kafka: how long a read waits for the notary to sequence its reservation.
    count_timeout_s: float = Field(default=30.0, gt=0)


class ServeSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_rows_per_page: int = Field(default=100_000, ge=1)
    # Per-request caps: a wider time span or more rows is refused with a 4xx naming the cap.
    max_span: dt.timedelta = dt.timedelta(days=31)
    max_rows: int = Field(default=200_000_000, ge=1)
    catalog_cache_s: float = Field(default=30.0, ge=0)
    # Refusals: one evidence entry per (caller, status, reason) and interval, counting repeats.
    refusal_interval_s: float = Field(default=10.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_s: int = Field(default=5, ge=1)
    max_connections: int = Field(default=512, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)


class LakeAccessSettings(BaseModel):
    """Settings of `tidm query`, `tidm catalog`, `tidm recall`, `tidm lake ...` and `tidm serve`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lake: LakeSettings = LakeSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    # Used only to send evidence when `evidence.kind` is kafka (the read side has no data transport).
    transport: TransportSettings = TransportSettings()
    read: ReadSection = ReadSection()
    serve: ServeSection = ServeSection()


class ConsoleSettings(LakeAccessSettings):
    """Settings of `tidm console`: the read side's (same lake, evidence, grants and catalog as
    `tidm serve`) plus where the console listens and which processes its Fleet view scrapes."""

    console: ConsoleSection = ConsoleSection()


def _apply_env(doc: dict[str, Any], env: Mapping[str, str], sections: set[str]) -> dict[str, Any]:
    """Overlay `TIDM_<SECTION>__<FIELD>=value` variables. Sections the process does not have are
    skipped, because one environment (a Kubernetes ConfigMap) often serves several processes;
    unknown fields inside a known section still fail validation, so typos are caught."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path or path[0] not in sections:
            continue
        node = doc
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = value
    return doc


def _field_exists(model: type[BaseModel], path: list[str]) -> bool:
    """True when `path` names a field of `model`, descending through nested settings models."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or part not in current.model_fields:
            return False
        annotation = current.model_fields[part].annotation
        candidates = (annotation, *get_args(annotation))
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return True


def _resolve_file_vars(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, str]:
    """Turn `TIDM_<SECTION>__<FIELD>_FILE=/run/secrets/x` into `<FIELD>` = the file's text, so
    secrets come from mounted files and never sit in the environment. A variable whose name is a
    field itself (`TIDM_AGENT__KEY_FILE`) keeps its meaning; only the trailing newline is cut."""
    resolved = dict(env)
    for name, value in env.items():
        if not (name.startswith(ENV_PREFIX) and name.endswith("_FILE")):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) : -len("_FILE")].split("__") if p]
        if not path or _field_exists(model, [*path[:-1], f"{path[-1]}_file"]):
            continue
        if not _field_exists(model, path):
            continue
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"{name}: cannot read the file it names ({value}): {exc.strerror}"
            raise ConfigError(msg) from None
        del resolved[name]
        resolved[name[: -len("_FILE")]] = text.rstrip("\r\n")
    return resolved


def _yaml_with_lines(text: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse YAML, and record the 1-based line of every mapping key and sequence item by path, so a
    validation error can name the line (pydantic locations are such paths)."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines[(*path, i)] = value.start_mark.line + 1
                walk(value, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return yaml.safe_load(text), lines


def _line_of(loc: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    """The line of the longest prefix of `loc` written in the file (None if it came from elsewhere)."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def load_settings(model: type[M], path: Path | None, env: Mapping[str, str] | None = None) -> M:
    """Read `path` (YAML) if given, apply environment overrides, validate into `model`."""
    doc: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    where = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            loaded, lines = _yaml_with_lines(path.read_text(encoding="utf-8"))
        except OSError as exc:
            msg = f"cannot read settings file {where}: {exc.strerror}"
            raise ConfigError(msg) from exc
        except yaml.YAMLError as exc:
            msg = f"{where}: not valid YAML: {exc}"
            raise ConfigError(msg) from exc
        if loaded is not None and not isinstance(loaded, dict):
            msg = f"{where}: expected a mapping at the top level"
            raise ConfigError(msg)
        doc = loaded or {}
    env = _resolve_file_vars(model, os.environ if env is None else env)
    doc = _apply_env(doc, env, set(model.model_fields))
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            line = _line_of(tuple(e["loc"]), lines)
            at = f"{where}:{line}" if line is not None else where
            problems.append(f"{at}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
        msg = "; ".join(problems)
        raise ConfigError(msg) from None
