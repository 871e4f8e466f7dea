"""The signal catalog built from a plan: lookups and the JSON round trip the lake side relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidm.semantics import CatalogEntry, SignalCatalog
from tidm.semantics.classification import Category, Level
from tidm.semantics.errors import CatalogError
from tidm.semantics.plan import load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
PUMP_ASSET = "https://example.com/ids/asset/5412_7025_3012_0101"


def catalog_of(*names: str) -> SignalCatalog:
    result = SignalCatalog()
    for name in names:
        result = result.merged(SignalCatalog.from_plan(load_plan(EXAMPLES / f"{name}.json")))
    return result


def test_catalog_from_plan() -> None:
    catalog = SignalCatalog.from_plan(load_plan(EXAMPLES / "pump.json"))
    assert len(catalog) == 5
    entry = catalog[(PUMP_ASSET, "Hydraulics.FlowRate")]
    assert (entry.unit, entry.semantic_id, entry.data_type, entry.level, entry.category) == (
        "m3/h",
        "https://example.com/ids/cd/pump/VolumeFlow",
        "number",
        Level.IMPORTANT,
        None,
    )
    assert catalog.get(PUMP_ASSET, "Drive.SpeedSetpoint") == CatalogEntry(
        PUMP_ASSET,
        "Drive.SpeedSetpoint",
        "rpm",
        "https://example.com/ids/cd/pump/SpeedSetpoint",
        "number",
        Level.IMPORTANT,
        Category.SETPOINT,
    )
    assert catalog.get(PUMP_ASSET, "nothing") is None
    assert (PUMP_ASSET, "Hydraulics.FlowRate") in catalog
    with pytest.raises(CatalogError, match="no catalog entry"):
        catalog[(PUMP_ASSET, "nothing")]
    assert [e.signal for e in catalog.at_least(Level.IMPORTANT)] == [
        "Drive.SpeedSetpoint",
        "Hydraulics.FlowRate",
    ]


def test_round_trip_of_all_examples(tmp_path: Path) -> None:
    catalog = catalog_of("pump", "cnc_spindle", "energy_meter")
    assert len(catalog) == 16
    assert len(catalog.assets()) == 3
    text = catalog.to_json()
    again = SignalCatalog.from_json(text)
    assert again == catalog
    assert hash(again) == hash(catalog)
    assert again.to_json() == text
    data = json.loads(text)
    assert data["version"] == 1
    first = data["signals"][0]
    assert set(first) == {
        "asset_id",
        "signal",
        "unit",
        "semantic_id",
        "data_type",
        "level",
        "miit_level",
        "category",
    }
    path = tmp_path / "sub" / "catalog.json"
    catalog.save(path)
    assert SignalCatalog.load(path) == catalog
    assert [p.name for p in path.parent.iterdir()] == ["catalog.json"]  # no temp file left behind
    assert "16 signals, 3 assets" in repr(catalog)


def test_signals_of_one_asset_are_sorted() -> None:
    catalog = catalog_of("cnc_spindle")
    asset = catalog.assets()[0]
    names = [e.signal for e in catalog.signals(asset)]
    assert names == sorted(names)
    assert list(catalog) == catalog.signals(asset)


def test_merged_replaces_same_signal() -> None:
    a = SignalCatalog([CatalogEntry("a", "s", unit="bar")])
    b = SignalCatalog([CatalogEntry("a", "s", unit="kPa"), CatalogEntry("a", "t")])
    merged = a.merged(b)
    assert merged[("a", "s")].unit == "kPa"
    assert len(merged) == 2


def test_duplicates_are_refused() -> None:
    with pytest.raises(CatalogError, match="duplicate catalog entry"):
        SignalCatalog([CatalogEntry("a", "s"), CatalogEntry("a", "s")])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({"version": 9, "signals": []}, "unsupported signal catalog version"),
        ({"version": 1, "signals": {}}, "signals: expected a list"),
        ({"version": 1, "signals": [7]}, r"signals\[0\]: expected an object"),
        ({"version": 1, "signals": [{"asset_id": "a"}]}, r"signals\[0\]\.signal: required"),
        ({"version": 1, "signals": [{"asset_id": "a", "signal": "s", "unit": 3}]}, r"signals\[0\]\.unit"),
        ({"version": 1, "signals": [{"asset_id": "a", "signal": "s", "level": "x"}]}, r"signals\[0\]\.level"),
        (
            {"version": 1, "signals": [{"asset_id": "a", "signal": "s", "category": "x"}]},
            r"signals\[0\]\.category",
        ),
    ],
)
def test_invalid_catalog_json(data: object, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        SignalCatalog.from_json(json.dumps(data))


def test_unreadable_catalog_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read signal catalog"):
        SignalCatalog.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"bad\.json: invalid signal catalog JSON"):
        SignalCatalog.load(bad)


def test_levels_read_as_miit_numbers() -> None:
    entry = CatalogEntry.from_dict({"asset_id": "a", "signal": "s", "level": 3})
    assert entry.level is Level.CORE
    assert entry.to_dict()["miit_level"] == 3
