"""Classification levels (GB/T 43697-2024 and MIIT), category defaults and the mapping-file lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidm.semantics.classification import (
    CATEGORY_DEFAULTS,
    Category,
    ClassificationMap,
    Level,
    default_level,
    highest,
    infer_category,
    load_classification,
)
from tidm.semantics.errors import CatalogError


def test_levels_map_between_gbt_and_miit_and_are_ordered() -> None:
    assert [lv.gbt for lv in Level] == ["general", "important", "core"]
    assert [lv.miit for lv in Level] == [1, 2, 3]
    assert all(Level.from_miit(lv.miit) is lv for lv in Level)
    assert Level.GENERAL < Level.IMPORTANT < Level.CORE
    assert max([Level.IMPORTANT, Level.CORE, Level.GENERAL]) is Level.CORE
    assert highest([]) is None
    assert highest([Level.GENERAL, Level.IMPORTANT]) is Level.IMPORTANT


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("core", Level.CORE),
        (" Important ", Level.IMPORTANT),
        (1, Level.GENERAL),
        ("L3", Level.CORE),
        ("miit-2", Level.IMPORTANT),
        ("3", Level.CORE),
    ],
)
def test_level_parse_accepts_both_schemes(text: object, level: Level) -> None:
    assert Level.parse(text) is level


def test_level_parse_rejects_unknown_naming_where() -> None:
    with pytest.raises(CatalogError, match=r"map.yaml: unknown classification level 'secret'"):
        Level.parse("secret", where="map.yaml")
    with pytest.raises(CatalogError, match="MIIT"):
        Level.from_miit(4)


def test_setpoints_and_recipes_default_higher_than_condition_monitoring() -> None:
    cm = CATEGORY_DEFAULTS[Category.CONDITION_MONITORING]
    assert CATEGORY_DEFAULTS[Category.SETPOINT] > cm
    assert CATEGORY_DEFAULTS[Category.RECIPE] > cm
    assert default_level(None) is Level.GENERAL
    assert default_level(Category.RECIPE) is Level.IMPORTANT
    assert infer_category("Line1/SpeedSetpoint") is Category.SETPOINT
    assert infer_category("RecipeName") is Category.RECIPE
    assert infer_category("BearingVibration") is Category.CONDITION_MONITORING
    assert infer_category("Signal001") is None


def test_lookup_rules_first_match_then_category_then_default(tmp_path: Path) -> None:
    path = tmp_path / "classification.yaml"
    path.write_text(
        """
default_level: general
categories: {setpoint: core}
signals:
  - {signal: "Signal00[12]", level: core}
  - {asset: "urn:tidm:asset:press-*", signal: "Force*", category: recipe}
  - {semantic_id: "0173-1#02-AAB381#003", level: 2}
  - {signal: "Signal*", level: general}
""",
        encoding="utf-8",
    )
    cmap = load_classification(path)
    assert cmap.level_of("Signal001") is Level.CORE
    assert cmap.lookup("Signal002").rule == 0
    assert cmap.level_of("Signal003") is Level.GENERAL
    assert cmap.level_of("ForceMax", asset_id="urn:tidm:asset:press-7") is Level.IMPORTANT
    assert cmap.level_of("ForceMax", asset_id="urn:tidm:asset:lathe-1") is Level.GENERAL
    assert cmap.level_of("Anything", semantic_id="0173-1#02-AAB381#003") is Level.IMPORTANT
    # No rule: the name hint says setpoint, which this map raised to core.
    assert cmap.level_of("TempSetpoint") is Level.CORE
    assert cmap.highest_of(["Signal003", "Signal001"]) is Level.CORE


def test_default_map_and_bad_files_name_the_file(tmp_path: Path) -> None:
    assert ClassificationMap().level_of("x") is Level.GENERAL
    bad = tmp_path / "bad.yaml"
    bad.write_text("signals:\n  - {signal: 'a*'}\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"(?s)bad.yaml.*needs a 'level' or a 'category'"):
        load_classification(bad)
    bad.write_text("default_level: top-secret\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"(?s)bad.yaml.*top-secret"):
        load_classification(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_classification(tmp_path / "missing.yaml")
