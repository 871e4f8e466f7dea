"""The signal catalog: per (asset, signal) its unit, semantic id, data type and classification.

Samples carry only asset and signal; everything else about a signal lives here, once. The catalog
is built from an acquisition plan on the edge and read as JSON on the lake/query side, so it does
not depend on basyx (only a plan's rows are read).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tidm.semantics.classification import Category, Level
from tidm.semantics.errors import CatalogError

__all__ = ["CATALOG_VERSION", "CatalogEntry", "SignalCatalog"]

CATALOG_VERSION = 1


class _PlanRowLike(Protocol):
    @property
    def asset_id(self) -> str: ...
    @property
    def signal(self) -> str: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def semantic_id(self) -> str | None: ...
    @property
    def data_type(self) -> str | None: ...
    @property
    def level(self) -> Level: ...
    @property
    def category(self) -> str | None: ...


class _PlanLike(Protocol):
    @property
    def rows(self) -> tuple[_PlanRowLike, ...]: ...


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What the catalog knows about one signal of one asset."""

    asset_id: str
    signal: str
    unit: str | None = None
    semantic_id: str | None = None
    data_type: str | None = None
    level: Level = Level.GENERAL
    category: Category | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the level by its GB/T name and its MIIT number."""
        return {
            "asset_id": self.asset_id,
            "signal": self.signal,
            "unit": self.unit,
            "semantic_id": self.semantic_id,
            "data_type": self.data_type,
            "level": self.level.gbt,
            "miit_level": self.level.miit,
            "category": self.category.value if self.category is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> CatalogEntry:
        """Read one entry; errors name `where` (e.g. `signals[3]`) and the field."""
        prefix = f"{where}." if where else ""
        if not isinstance(data, Mapping):
            msg = f"{where or 'entry'}: expected an object, got {type(data).__name__}"
            raise CatalogError(msg)
        for name in ("asset_id", "signal"):
            if not isinstance(data.get(name), str) or not data[name]:
                msg = f"{prefix}{name}: required non-empty string, got {data.get(name)!r}"
                raise CatalogError(msg)
        for name in ("unit", "semantic_id", "data_type"):
            if data.get(name) is not None and not isinstance(data[name], str):
                msg = f"{prefix}{name}: expected a string or null, got {data[name]!r}"
                raise CatalogError(msg)
        level = Level.parse(data.get("level", "general"), where=f"{prefix}level")
        category_text = data.get("category")
        try:
            category = Category(category_text) if category_text is not None else None
        except ValueError:
            known = ", ".join(c.value for c in Category)
            msg = f"{prefix}category: unknown category {category_text!r} (known: {known})"
            raise CatalogError(msg) from None
        return cls(
            asset_id=data["asset_id"],
            signal=data["signal"],
            unit=data.get("unit"),
            semantic_id=data.get("semantic_id"),
            data_type=data.get("data_type"),
            level=level,
            category=category,
        )


class SignalCatalog:
    """An immutable (asset, signal) -> CatalogEntry lookup."""

    def __init__(self, entries: Iterable[CatalogEntry] = ()) -> None:
        table: dict[tuple[str, str], CatalogEntry] = {}
        for entry in entries:
            key = (entry.asset_id, entry.signal)
            if key in table:
                msg = f"duplicate catalog entry for asset {entry.asset_id!r}, signal {entry.signal!r}"
                raise CatalogError(msg)
            table[key] = entry
        self._entries = dict(sorted(table.items()))

    @classmethod
    def from_plan(cls, plan: _PlanLike) -> SignalCatalog:
        """The catalog of every signal in an acquisition plan."""
        return cls(
            CatalogEntry(
                asset_id=row.asset_id,
                signal=row.signal,
                unit=row.unit,
                semantic_id=row.semantic_id,
                data_type=row.data_type,
                level=row.level,
                category=Category(row.category) if row.category else None,
            )
            for row in plan.rows
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: tuple[str, str]) -> CatalogEntry:
        try:
            return self._entries[key]
        except KeyError:
            msg = f"no catalog entry for asset {key[0]!r}, signal {key[1]!r}"
            raise CatalogError(msg) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignalCatalog) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(tuple(self._entries.items()))

    def __repr__(self) -> str:
        return f"SignalCatalog({len(self)} signals, {len(self.assets())} assets)"

    def get(self, asset_id: str, signal: str) -> CatalogEntry | None:
        """The entry of one signal, or None."""
        return self._entries.get((asset_id, signal))

    def assets(self) -> list[str]:
        """The asset ids, sorted."""
        return sorted({a for a, _ in self._entries})

    def signals(self, asset_id: str) -> list[CatalogEntry]:
        """The entries of one asset, sorted by signal."""
        return [e for (a, _), e in self._entries.items() if a == asset_id]

    def at_least(self, level: Level) -> list[CatalogEntry]:
        """The entries classified `level` or higher."""
        return [e for e in self._entries.values() if e.level >= level]

    def merged(self, other: SignalCatalog) -> SignalCatalog:
        """This catalog plus `other`; an entry of `other` replaces one here for the same signal."""
        combined = dict(self._entries)
        combined.update(other._entries)
        return SignalCatalog(combined.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: version and the entries sorted by (asset, signal)."""
        return {"version": CATALOG_VERSION, "signals": [e.to_dict() for e in self._entries.values()]}

    def to_json(self) -> str:
        """Stable JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> SignalCatalog:
        """Read what `to_dict` wrote; errors name the entry and field."""
        if not isinstance(data, Mapping):
            msg = f"a signal catalog must be a JSON object, got {type(data).__name__}"
            raise CatalogError(msg)
        version = data.get("version")
        if version != CATALOG_VERSION:
            msg = f"unsupported signal catalog version {version!r} (this TIDM reads {CATALOG_VERSION})"
            raise CatalogError(msg)
        signals = data.get("signals")
        if not isinstance(signals, list):
            msg = "signals: expected a list of entries"
            raise CatalogError(msg)
        return cls(CatalogEntry.from_dict(item, where=f"signals[{i}]") for i, item in enumerate(signals))

    @classmethod
    def from_json(cls, text: str | bytes) -> SignalCatalog:
        """Parse catalog JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"invalid signal catalog JSON: {exc}"
            raise CatalogError(msg) from exc
        return cls.from_dict(data)

    def save(self, path: Path | str) -> None:
        """Write the catalog atomically (temp file, fsync, replace)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path | str) -> SignalCatalog:
        """Read a catalog file written by `save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read signal catalog {path}: {exc.strerror or exc}"
            raise CatalogError(msg) from exc
        try:
            return cls.from_json(text)
        except CatalogError as exc:
            msg = f"{path}: {exc}"
            raise CatalogError(msg) from exc
