"""The explicit YAML mapping file: the fallback where an AAS has no AIMC, and an override where it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidm.semantics.classification import Level
from tidm.semantics.errors import AasError
from tidm.semantics.plan import load_mapping, load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
METER_ASSET = "https://example.com/ids/asset/3120_8801_5560_0007"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "xml", "aasx"])
def test_shipped_mapping_renames_and_classifies(fmt: str) -> None:
    plan = load_plan(EXAMPLES / f"energy_meter.{fmt}", EXAMPLES / "energy_meter.mapping.yaml")
    rows = {r.signal: r for r in plan.rows}
    assert list(rows) == [
        "Electrical.VoltageL1N",
        "Electrical.CurrentL1",
        "Electrical.ActivePower",
        "Electrical.ImportedEnergy",
        "Electrical.Frequency",
    ]
    assert all(r.mapped_by == "mapping" for r in plan.rows)
    energy = rows["Electrical.ImportedEnergy"]
    assert (energy.level, energy.semantic_id, energy.json_path, energy.unit) == (
        Level.IMPORTANT,
        "https://example.com/ids/cd/energy/ActiveEnergyImport",
        "$.E_import",
        "kWh",
    )
    assert rows["Electrical.ActivePower"].deadband == 0.5
    assert rows["Electrical.Frequency"].sampling_interval_ms == 5000.0
    assert rows["Electrical.CurrentL1"].sampling_interval_ms == 1000.0  # from the AAS qualifier


def test_mapping_overrides_aimc(tmp_path: Path) -> None:
    mapping = write(
        tmp_path,
        """
signals:
  - property: InterfaceOPCUA/InletPressure
    signal: Suction.Pressure
    level: core
    unit: kPa
    deadband: 1
    deadband_type: percent
  - property: FlowRate
    category: recipe
""",
    )
    rows = {r.signal: r for r in load_plan(EXAMPLES / "pump.json", mapping).rows}
    suction = rows["Suction.Pressure"]
    assert (suction.level, suction.unit, suction.deadband, suction.deadband_type, suction.mapped_by) == (
        Level.CORE,
        "kPa",
        1.0,
        "percent",
        "mapping",
    )
    # The semantic id still comes from the AIMC target; the mapping did not set one.
    assert suction.semantic_id == "https://example.com/ids/cd/pump/SuctionPressure"
    assert (rows["Hydraulics.FlowRate"].category, rows["Hydraulics.FlowRate"].level) == (
        "recipe",
        Level.IMPORTANT,
    )
    assert "Hydraulics.OutletPressure" in rows


def test_only_mapped_and_exclude(tmp_path: Path) -> None:
    mapping = write(
        tmp_path,
        """
only_mapped: true
defaults: {level: important, sampling_interval_ms: 250}
signals:
  - {property: Measurements.Voltage, asset_id: "https://example.com/ids/asset/3120_8801_5560_0007"}
  - {property: Frequency}
  - {property: Measurements.Current, exclude: true}
""",
    )
    rows = load_plan(EXAMPLES / "energy_meter.json", mapping).rows
    assert [r.signal for r in rows] == ["Measurements.Voltage", "Frequency"]
    assert rows[0].sampling_interval_ms == 1000.0  # the AAS qualifier beats the mapping default
    assert rows[1].sampling_interval_ms == 250.0
    assert all(r.level is Level.IMPORTANT for r in rows)


def test_defaults_apply_where_nothing_else_says(tmp_path: Path) -> None:
    mapping = write(tmp_path, "defaults: {deadband: 0.1, category: condition_monitoring}\n")
    rows = {r.signal: r for r in load_plan(EXAMPLES / "pump.json", mapping).rows}
    assert rows["Hydraulics.FlowRate"].deadband == 0.1
    assert rows["Hydraulics.InletPressure"].deadband == 0.01
    assert rows["Hydraulics.FlowRate"].category == "condition-monitoring"
    assert rows["Drive.SpeedSetpoint"].category == "setpoint"
    assert rows["Drive.SpeedSetpoint"].level is Level.IMPORTANT


def test_namespace_uris_resolve_namespace_indices(tmp_path: Path) -> None:
    text = (EXAMPLES / "pump.json").read_text(encoding="utf-8")
    old = "nsu=http://example.com/UA/CentrifugalPump/;s=P101.FlowRate"
    assert old in text
    target = tmp_path / "pump-ns.json"
    target.write_text(text.replace(old, "ns=4;s=P101.FlowRate"), encoding="utf-8")
    mapping = write(tmp_path, "namespace_uris: {4: 'urn:plant:pumps'}\n")
    row = next(r for r in load_plan(target, mapping).rows if r.signal == "Hydraulics.FlowRate")
    assert row.node_id == "nsu=urn:plant:pumps;s=P101.FlowRate"


def test_unknown_property_is_named(tmp_path: Path) -> None:
    mapping = write(tmp_path, "signals:\n  - {property: Frequency}\n  - {property: InterfaceMQTT/Voltage}\n")
    with pytest.raises(AasError, match="no AID property 'InterfaceMQTT/Voltage'") as info:
        load_plan(EXAMPLES / "energy_meter.json", mapping)
    assert (info.value.file, info.value.path) == (str(mapping), "signals[1].property")


def test_entry_for_another_asset_does_not_match(tmp_path: Path) -> None:
    mapping = write(tmp_path, "signals:\n  - {property: Frequency, asset_id: 'urn:other'}\n")
    with pytest.raises(AasError, match="of asset 'urn:other'"):
        load_plan(EXAMPLES / "energy_meter.json", mapping)


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            "signals:\n  - {property: Frequency, level: secret}\n",
            "signals[0].level",
            "unknown classification",
        ),
        (
            "signals:\n  - {property: Frequency, deadband: -2}\n",
            "signals[0].deadband",
            "greater than or equal",
        ),
        ("signals:\n  - {property: Frequency, colour: red}\n", "signals[0].colour", "Extra inputs"),
        ("signals:\n  - {signal: X}\n", "signals[0].property", "Field required"),
        ("version: 2\n", "version", "Input should be 1"),
        ("defaults: {category: gossip}\n", "defaults.category", "Input should be"),
        ("signals: [\n  {property: Frequency\n", "line 3", "invalid YAML"),
        ("- just\n- a list\n", "", "must be a YAML mapping"),
    ],
)
def test_invalid_mapping_files(tmp_path: Path, text: str, path: str, message: str) -> None:
    mapping = write(tmp_path, text)
    with pytest.raises(AasError, match=message) as info:
        load_mapping(mapping)
    assert (info.value.file, info.value.path) == (str(mapping), path)


def test_missing_and_empty_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(AasError, match="cannot read mapping file"):
        load_mapping(tmp_path / "absent.yaml")
    empty = write(tmp_path, "")
    assert load_mapping(empty).signals == []
    assert len(load_plan(EXAMPLES / "energy_meter.json", empty).rows) == 5
