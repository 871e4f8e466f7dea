"""Classification levels of industrial data and the per-signal lookup.

Two national schemes name the same three steps of harm: GB/T 43697-2024 (Data security technology -
Rules for data classification and grading) grades data as general / important / core, and the MIIT
industrial data grading guide uses levels 1 / 2 / 3. `Level` is one ordered enum that speaks both.

A signal's level comes from, in order: a mapping-file rule that matches it (signal glob, asset glob,
semantic id), else its category's default (setpoints and recipes are higher than condition
monitoring), else the map's default level.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidm.semantics.errors import CatalogError

__all__ = [
    "CATEGORY_DEFAULTS",
    "Category",
    "ClassificationLevel",
    "ClassificationMap",
    "ClassificationRule",
    "Level",
    "SignalCategory",
    "SignalClass",
    "default_level",
    "highest",
    "infer_category",
    "load_classification",
]


class Level(enum.StrEnum):
    """Data level, valued by its GB/T 43697-2024 name and ordered general < important < core.

    `miit` is the MIIT industrial data level (1 lowest, 3 highest).
    """

    GENERAL = "general"  # GB/T 43697-2024 一般数据 / MIIT level 1
    IMPORTANT = "important"  # GB/T 43697-2024 重要数据 / MIIT level 2
    CORE = "core"  # GB/T 43697-2024 核心数据 / MIIT level 3

    @property
    def gbt(self) -> str:
        """The GB/T 43697-2024 name: 'general', 'important' or 'core'."""
        return self.value

    @property
    def miit(self) -> int:
        """The MIIT industrial data level, 1..3."""
        return _MIIT[self.value]

    # Ordered by severity, not alphabetically, so max() gives the most sensitive level.
    def __lt__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.miit < other.miit
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.miit <= other.miit
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.miit > other.miit
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, Level):
            return self.miit >= other.miit
        return NotImplemented

    @classmethod
    def from_miit(cls, level: int) -> Level:
        """The level for a MIIT industrial data level 1..3."""
        if isinstance(level, int) and 1 <= level <= 3:
            return _BY_MIIT[level - 1]
        msg = f"MIIT industrial data level must be 1, 2 or 3, got {level!r}"
        raise CatalogError(msg)

    @classmethod
    def parse(cls, value: object, *, where: str = "") -> Level:
        """Accept 'general'/'important'/'core', 1..3, 'L1'..'L3' or 'miit-1'..'miit-3' (any case)."""
        if isinstance(value, Level):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls.from_miit(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _MIIT:
                return cls(text)
            match = re.fullmatch(r"(?:l|level|miit)?[-_ ]?([123])", text)
            if match:
                return cls.from_miit(int(match.group(1)))
        prefix = f"{where}: " if where else ""
        msg = f"{prefix}unknown classification level {value!r} (use general/important/core or MIIT 1-3)"
        raise CatalogError(msg)


_MIIT = {"general": 1, "important": 2, "core": 3}
_BY_MIIT = (Level.GENERAL, Level.IMPORTANT, Level.CORE)


class Category(enum.StrEnum):
    """What a signal is, as far as its sensitivity goes."""

    RECIPE = "recipe"
    SETPOINT = "setpoint"
    CONFIGURATION = "configuration"
    PROCESS_VALUE = "process-value"
    CONDITION_MONITORING = "condition-monitoring"
    STATUS = "status"
    COUNTER = "counter"


# Recipes and setpoints encode the plant's know-how; a leak of condition monitoring harms less.
CATEGORY_DEFAULTS: dict[Category, Level] = {
    Category.RECIPE: Level.IMPORTANT,
    Category.SETPOINT: Level.IMPORTANT,
    Category.CONFIGURATION: Level.IMPORTANT,
    Category.PROCESS_VALUE: Level.GENERAL,
    Category.CONDITION_MONITORING: Level.GENERAL,
    Category.STATUS: Level.GENERAL,
    Category.COUNTER: Level.GENERAL,
}

# Name conventions seen on OPC UA servers and AAS idShorts; only used when nothing says otherwise.
_NAME_HINTS: tuple[tuple[re.Pattern[str], Category], ...] = (
    (re.compile(r"recipe|formula", re.IGNORECASE), Category.RECIPE),
    (re.compile(r"set_?point|(?:^|[_.\-/])sp$|Sp$|SP$|target", re.IGNORECASE), Category.SETPOINT),
    (re.compile(r"config|parameter", re.IGNORECASE), Category.CONFIGURATION),
    (re.compile(r"vibration|bearing|temperature|wear|health", re.IGNORECASE), Category.CONDITION_MONITORING),
    (re.compile(r"state|status|mode|alarm", re.IGNORECASE), Category.STATUS),
    (re.compile(r"count", re.IGNORECASE), Category.COUNTER),
)


# Names the AAS acquisition plan uses.
ClassificationLevel = Level
SignalCategory = Category


def default_level(category: Category | None) -> Level:
    """The default level of a category (general when there is none)."""
    return CATEGORY_DEFAULTS[category] if category is not None else Level.GENERAL


def infer_category(signal: str) -> Category | None:
    """Guess a category from a signal name (idShort path); None when no hint matches."""
    leaf = signal.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    for pattern, category in _NAME_HINTS:
        if pattern.search(leaf):
            return category
    return None


def highest(levels: Iterable[Level]) -> Level | None:
    """The highest of `levels` (None if there are none): a batch carries its most sensitive signal's level."""
    return max(levels, default=None)


def _parse_for_pydantic(value: object) -> Level:
    try:
        return Level.parse(value)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None  # pydantic then names the field that holds it


@dataclass(frozen=True)
class SignalClass:
    """The resolved classification of one signal."""

    level: Level
    category: Category | None
    rule: int | None  # index of the mapping rule that decided, None for defaults


class ClassificationRule(BaseModel):
    """One mapping-file rule: all given criteria must match; `level` or else `category` decides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: str | None = None  # glob on the signal (AAS idShort path)
    asset: str | None = None  # glob on the asset id
    semantic_id: str | None = None  # exact semantic id (IRDI / IRI)
    category: Category | None = None
    level: Level | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _parse_level(cls, value: object) -> object:
        return None if value is None else _parse_for_pydantic(value)

    @model_validator(mode="after")
    def _decides(self) -> ClassificationRule:
        if self.signal is None and self.asset is None and self.semantic_id is None:
            msg = "a rule needs at least one of 'signal', 'asset', 'semantic_id' to match on"
            raise ValueError(msg)
        if self.level is None and self.category is None:
            msg = "a rule needs a 'level' or a 'category'"
            raise ValueError(msg)
        return self

    def matches(self, signal: str, asset_id: str, semantic_id: str | None) -> bool:
        """True if every criterion the rule names matches."""
        if self.signal is not None and not fnmatch.fnmatchcase(signal, self.signal):
            return False
        if self.asset is not None and not fnmatch.fnmatchcase(asset_id, self.asset):
            return False
        return self.semantic_id is None or self.semantic_id == semantic_id


class ClassificationMap(BaseModel):
    """Signal -> level. File form (YAML)::

    default_level: general          # when no rule, category or name hint says otherwise
    infer_from_names: true          # use name hints (e.g. '*Setpoint*' -> setpoint)
    categories: {setpoint: core}    # overrides of CATEGORY_DEFAULTS
    signals:                        # first matching rule wins
      - {signal: "Recipe*", level: core}
      - {semantic_id: "0173-1#02-AAB381#003", level: important}
      - {asset: "urn:tidm:asset:press-*", signal: "Force*", category: setpoint}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_level: Level = Level.GENERAL
    infer_from_names: bool = True
    categories: dict[Category, Level] = Field(default_factory=dict)
    signals: tuple[ClassificationRule, ...] = ()

    @field_validator("default_level", mode="before")
    @classmethod
    def _parse_default(cls, value: object) -> object:
        return _parse_for_pydantic(value)

    @field_validator("categories", mode="before")
    @classmethod
    def _parse_categories(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _parse_for_pydantic(v) for k, v in value.items()}
        return value

    def category_level(self, category: Category) -> Level:
        """The default level of a category (map overrides first)."""
        return self.categories.get(category, CATEGORY_DEFAULTS[category])

    def lookup(self, signal: str, *, asset_id: str = "", semantic_id: str | None = None) -> SignalClass:
        """Classify one signal."""
        for index, rule in enumerate(self.signals):
            if rule.matches(signal, asset_id, semantic_id):
                if rule.level is not None:
                    return SignalClass(rule.level, rule.category, index)
                assert rule.category is not None  # noqa: S101 - the rule validator guarantees one of them
                return SignalClass(self.category_level(rule.category), rule.category, index)
        category = infer_category(signal) if self.infer_from_names else None
        if category is not None:
            return SignalClass(self.category_level(category), category, None)
        return SignalClass(self.default_level, None, None)

    def level_of(self, signal: str, *, asset_id: str = "", semantic_id: str | None = None) -> Level:
        """The level of one signal."""
        return self.lookup(signal, asset_id=asset_id, semantic_id=semantic_id).level

    def highest_of(self, signals: Sequence[str], *, asset_id: str = "") -> Level | None:
        """The highest level among `signals` (None for none)."""
        return highest(self.level_of(s, asset_id=asset_id) for s in signals)


def load_classification(path: str | Path) -> ClassificationMap:
    """Read a classification mapping file (YAML or JSON); errors name the file and the field."""
    source = Path(path)
    try:
        data: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read classification map {source}: {exc}"
        raise CatalogError(msg) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"classification map {source} must be a mapping at the top level, got {type(data).__name__}"
        raise CatalogError(msg)
    try:
        return ClassificationMap.model_validate(data)
    except (ValidationError, CatalogError) as exc:
        msg = f"invalid classification map {source}:\n{exc}"
        raise CatalogError(msg) from exc
