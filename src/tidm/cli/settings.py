"""Process settings: a YAML file, overridden by `TIDM_<SECTION>__<FIELD>` environment variables.

The environment is read here, at the entry point, and nowhere deeper; parts get settings objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tidm.edge_agent.config import AgentSettings
from tidm.errors import Terminal, TidmError
from tidm.storage.config import LakeSettings

__all__ = [
    "AgentProcessSettings",
    "ConfigError",
    "EvidenceSettings",
    "JobProcessSettings",
    "TransportSettings",
    "load_settings",
]

ENV_PREFIX = "TIDM_"
M = TypeVar("M", bound=BaseModel)


class ConfigError(TidmError, Terminal):
    """A settings file or variable is invalid; the message names the file and the field."""


class TransportSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kafka", "embedded"] = "embedded"
    bootstrap: str = "127.0.0.1:9092"
    path: Path = Path("tidm-log")
    partitions: int = Field(default=4, ge=1)


class EvidenceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Path("evidence.db")


class AgentProcessSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: AgentSettings = AgentSettings()
    transport: TransportSettings = TransportSettings()
    evidence: EvidenceSettings = EvidenceSettings()


class JobSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "clean"
    topics: list[str] = Field(default_factory=lambda: ["tidm.samples"])
    group_id: str = "tidm-clean"
    table: str = "clean"
    max_records: int = Field(default=500, ge=1)


class JobProcessSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job: JobSection = JobSection()
    transport: TransportSettings = TransportSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    lake: LakeSettings = LakeSettings()
    trusted_agents: Path = Path("trusted-agents.json")
    quarantine: Literal["topic", "folder"] = "topic"
    quarantine_path: Path = Path("quarantine")


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


def load_settings(model: type[M], path: Path | None, env: Mapping[str, str] | None = None) -> M:
    """Read `path` (YAML) if given, apply environment overrides, validate into `model`."""
    doc: dict[str, Any] = {}
    where = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    doc = _apply_env(doc, os.environ if env is None else env, set(model.model_fields))
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        msg = f"{where}: {problems}"
        raise ConfigError(msg) from None
