"""The desensitization policy (which signals leave the plant how) and the pseudonymization keys.

A policy file is YAML::

    id: plant-1-egress
    version: 3
    default: pass                     # action for signals no rule matches
    rules:                            # first matching rule wins; all criteria of a rule must match
      - {match: {level: core}, action: drop}
      - {match: {signal: "Operator*"}, action: pseudonymize, key: operators}
      - {match: {signal: "Batch*"}, action: mask, keep_prefix: 2}
      - {match: {semantic_id: "0173-1#02-AAB381#003"}, action: generalize, step: 0.5, clamp: [0, 100]}
      - {match: {min_level: important}, action: generalize, time_step_ms: 60000}

Its identity in provenance is its id, version and the SHA-256 of its canonical form (sorted-key
JSON of the validated model), so two files that mean the same policy stamp the same hash.

Pseudonymization keys are named; each name has epochs (rotation): the key id stamped into a batch is
`<name>@<epoch>`, and the epoch used is the highest one whose `not_before` has passed. Keys come
from a key file (YAML/JSON) or a `/run/secrets`-style folder of files named `<name>@<epoch>`.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidm.edge_agent.errors import AgentError
from tidm.errors import Terminal
from tidm.semantics.classification import Level
from tidm.semantics.errors import CatalogError

__all__ = [
    "Action",
    "KeyRing",
    "Match",
    "Policy",
    "PolicyError",
    "PseudonymKey",
    "Rule",
    "load_policy",
]

Action = Literal["drop", "mask", "pseudonymize", "generalize", "pass"]

_KEY_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)@([0-9]+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_KEY_BYTES = 16


class PolicyError(AgentError, Terminal):
    """A policy or key file is invalid or a key is missing; the message names the file and field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _level(value: object) -> object:
    try:
        return None if value is None else Level.parse(value)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None  # pydantic then names the field that holds it


class Match(_Frozen):
    """Criteria of a rule; every one given must hold (an empty match matches every signal)."""

    signal: str | None = None  # glob on the signal (AAS idShort path)
    asset: str | None = None  # glob on the asset id
    semantic_id: str | None = None
    level: Level | None = None  # exactly this level
    min_level: Level | None = None  # this level or higher

    _parse_level = field_validator("level", "min_level", mode="before")(_level)

    def matches(self, signal: str, asset_id: str, semantic_id: str | None, level: Level) -> bool:
        """True if the signal meets every criterion."""
        if self.signal is not None and not fnmatch.fnmatchcase(signal, self.signal):
            return False
        if self.asset is not None and not fnmatch.fnmatchcase(asset_id, self.asset):
            return False
        if self.semantic_id is not None and self.semantic_id != semantic_id:
            return False
        if self.level is not None and level != self.level:
            return False
        return self.min_level is None or level >= self.min_level


class Rule(_Frozen):
    """What to do with the signals a match selects, with the action's parameters."""

    match: Match = Match()
    action: Action
    # pseudonymize
    key: str | None = None  # key name; the active epoch of it is used
    length: int = Field(default=16, ge=8, le=64, description="hex characters of the pseudonym")
    prefix: str = "ps:"
    # mask
    keep_prefix: int = Field(default=0, ge=0)
    keep_suffix: int = Field(default=0, ge=0)
    fill: str = Field(default="*", min_length=1, max_length=1)
    fixed_length: int | None = Field(default=None, ge=1, description="mask to this many fill characters")
    # generalize
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    buckets: tuple[float, ...] | None = None  # ascending edges; a value becomes its bucket's lower edge
    clamp: tuple[float, float] | None = None
    time_step_ms: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _parameters(self) -> Rule:
        if self.action == "pseudonymize":
            if self.key is None:
                msg = "action 'pseudonymize' needs 'key' (the name of a pseudonymization key)"
                raise ValueError(msg)
            if not _NAME.match(self.key):
                msg = f"key name {self.key!r} must use letters, digits, '_', '.', '-'"
                raise ValueError(msg)
        if self.action == "generalize":
            if (
                self.step is None
                and self.buckets is None
                and self.clamp is None
                and self.time_step_ms is None
            ):
                msg = "action 'generalize' needs at least one of 'step', 'buckets', 'clamp', 'time_step_ms'"
                raise ValueError(msg)
            if self.buckets is not None and (
                not self.buckets or any(b <= a for a, b in itertools.pairwise(self.buckets))
            ):
                msg = f"'buckets' must be strictly ascending edges, got {list(self.buckets)}"
                raise ValueError(msg)
            if self.clamp is not None and self.clamp[0] > self.clamp[1]:
                msg = f"'clamp' must be [low, high] with low <= high, got {list(self.clamp)}"
                raise ValueError(msg)
        return self


class Policy(_Frozen):
    """A versioned desensitization policy."""

    id: str = Field(min_length=1)
    version: str = "1"
    default: Action = "pass"
    rules: tuple[Rule, ...] = ()

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _default_has_no_parameters(self) -> Policy:
        if self.default in ("pseudonymize", "generalize"):
            msg = (
                f"default action {self.default!r} needs parameters; "
                "write it as a last rule with an empty match"
            )
            raise ValueError(msg)
        return self

    def canonical(self) -> bytes:
        """Sorted-key compact JSON of the validated policy: what `sha256` covers."""
        doc = self.model_dump(mode="json")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the canonical form."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def rule_for(self, signal: str, *, asset_id: str, semantic_id: str | None, level: Level) -> Rule | None:
        """The first rule matching the signal, or None (the default action applies)."""
        for rule in self.rules:
            if rule.match.matches(signal, asset_id, semantic_id, level):
                return rule
        return None

    def key_names(self) -> set[str]:
        """Names of the pseudonymization keys the policy uses."""
        return {r.key for r in self.rules if r.key is not None and r.action == "pseudonymize"}


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (YAML or JSON); errors name the file and the field."""
    source = Path(path)
    try:
        data: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read policy {source}: {exc}"
        raise PolicyError(msg) from exc
    if not isinstance(data, dict):
        msg = f"policy {source} must be a mapping at the top level, got {type(data).__name__}"
        raise PolicyError(msg)
    try:
        return Policy.model_validate(data)
    except (ValidationError, ValueError) as exc:
        msg = f"invalid policy {source}:\n{exc}"
        raise PolicyError(msg) from exc


@dataclass(frozen=True)
class PseudonymKey:
    """One epoch of a named key. The secret never appears in repr, logs or errors."""

    name: str
    epoch: int
    secret: bytes
    not_before_us: int = 0

    @property
    def key_id(self) -> str:
        return f"{self.name}@{self.epoch}"

    def __repr__(self) -> str:
        return f"PseudonymKey({self.key_id}, not_before_us={self.not_before_us})"


def _parse_time_us(value: object, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            msg = f"{where}: not_before {value!r} is not an ISO 8601 time"
            raise PolicyError(msg) from None
    else:
        msg = f"{where}: not_before must be an ISO 8601 time"
        raise PolicyError(msg)
    if moment.tzinfo is None:
        msg = f"{where}: not_before {value!r} needs a time zone (e.g. 'Z')"
        raise PolicyError(msg)
    return int(moment.timestamp() * 1_000_000)


class KeyRing:
    """Named pseudonymization keys with epochs; `active(name)` picks the epoch in force."""

    def __init__(self, keys: Mapping[str, PseudonymKey] | None = None) -> None:
        self._keys: dict[str, PseudonymKey] = dict(keys or {})
        self._by_name: dict[str, list[PseudonymKey]] | None = None  # newest epoch first, built on use

    def __repr__(self) -> str:
        return f"KeyRing({sorted(self._keys)})"

    def add(self, key: PseudonymKey, *, where: str = "") -> None:
        """Add one key epoch; secrets shorter than 16 bytes are refused."""
        if len(key.secret) < MIN_KEY_BYTES:
            msg = f"{where or 'key'}: key {key.key_id} is shorter than {MIN_KEY_BYTES} bytes"
            raise PolicyError(msg)
        if key.key_id in self._keys:
            msg = f"{where or 'key'}: key {key.key_id} is defined twice"
            raise PolicyError(msg)
        self._keys[key.key_id] = key
        self._by_name = None

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, key_id: str) -> PseudonymKey:
        """The key with id `<name>@<epoch>`."""
        try:
            return self._keys[key_id]
        except KeyError:
            msg = f"no pseudonymization key {key_id!r} (have {self.key_ids})"
            raise PolicyError(msg) from None

    def active(self, name: str, *, at_us: int, epoch: int | None = None) -> PseudonymKey:
        """The epoch of `name` in force at `at_us` (the highest started one), or the pinned `epoch`."""
        if epoch is not None:
            return self.get(f"{name}@{epoch}")
        # Asked for every batch: the epochs of each name are sorted once.
        if self._by_name is None:
            by_name: dict[str, list[PseudonymKey]] = {}
            for k in self._keys.values():
                by_name.setdefault(k.name, []).append(k)
            for epochs in by_name.values():
                epochs.sort(key=lambda k: k.epoch, reverse=True)
            self._by_name = by_name
        for k in self._by_name.get(name, ()):
            if k.not_before_us <= at_us:
                return k
        msg = f"no pseudonymization key named {name!r} is in force (have {self.key_ids})"
        raise PolicyError(msg)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Keys from YAML/JSON: `{keys: [{name, epoch, secret_b64 | secret_hex, not_before?}, ...]}`."""
        where = str(path)
        try:
            data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            msg = f"cannot read key file {where}: {exc.strerror}"
            raise PolicyError(msg) from exc
        except yaml.YAMLError:
            # The parser's message may quote the file's text, i.e. a secret: say only where.
            msg = f"{where}: not valid YAML/JSON"
            raise PolicyError(msg) from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            msg = f"{where}: expected a mapping with a 'keys' list"
            raise PolicyError(msg)
        ring = cls()
        for i, item in enumerate(entries):
            here = f"{where}: keys[{i}]"
            if not isinstance(item, dict):
                msg = f"{here}: expected a mapping"
                raise PolicyError(msg)
            name, epoch = item.get("name"), item.get("epoch")
            if not isinstance(name, str) or not _NAME.match(name):
                msg = f"{here}: 'name' must use letters, digits, '_', '.', '-'"
                raise PolicyError(msg)
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                msg = f"{here}: 'epoch' must be a non-negative integer"
                raise PolicyError(msg)
            ring.add(
                PseudonymKey(
                    name, epoch, _secret_of(item, here), _parse_time_us(item.get("not_before"), here)
                ),
                where=where,
            )
        return ring

    @classmethod
    def from_folder(cls, folder: Path) -> KeyRing:
        """Keys from a `/run/secrets`-style folder: one file per key named `<name>@<epoch>`.

        The file holds the secret bytes (surrounding whitespace stripped); other files are ignored,
        so the folder can be shared with other secrets.
        """
        if not folder.is_dir():
            msg = f"key folder {folder} does not exist or is not a folder"
            raise PolicyError(msg)
        ring = cls()
        for path in sorted(folder.iterdir()):
            match = _KEY_ID.match(path.name)
            if match is None or not path.is_file():
                continue
            try:
                secret = path.read_bytes().strip()
            except OSError as exc:
                msg = f"cannot read key file {path}: {exc.strerror}"
                raise PolicyError(msg) from exc
            ring.add(PseudonymKey(match.group(1), int(match.group(2)), secret), where=str(path))
        return ring

    def merged(self, other: KeyRing) -> KeyRing:
        """A ring with the keys of both (a key id in both is an error)."""
        ring = KeyRing(self._keys)
        for key in other._keys.values():
            ring.add(key)
        return ring


def _secret_of(item: Mapping[str, Any], where: str) -> bytes:
    b64, hexed = item.get("secret_b64"), item.get("secret_hex")
    try:
        if isinstance(b64, str):
            return base64.b64decode(b64, validate=True)
        if isinstance(hexed, str):
            return bytes.fromhex(hexed)
    except ValueError:
        msg = f"{where}: the secret is not valid {'base64' if isinstance(b64, str) else 'hex'}"
        raise PolicyError(msg) from None
    msg = f"{where}: needs 'secret_b64' or 'secret_hex'"
    raise PolicyError(msg)
