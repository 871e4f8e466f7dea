"""Acquisition plans of the shipped example AAS files: every format, the expected rows, AIMC."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from basyx.aas import model

from tidm.semantics import AcquisitionPlan as LazyPlan
from tidm.semantics.aas import load_environment, save_environment
from tidm.semantics.classification import Category, Level
from tidm.semantics.plan import AcquisitionPlan, PlanProtocol, PlanRow, build_plan, load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
FORMATS = ("json", "xml", "aasx")
PUMP_ASSET = "https://example.com/ids/asset/5412_7025_3012_0101"
CNC_ASSET = "https://example.com/ids/asset/7301_4410_9023_0007"
METER_ASSET = "https://example.com/ids/asset/3120_8801_5560_0007"
NS = "http://example.com/UA/CentrifugalPump/"


def builders() -> ModuleType:
    name = "tidm_aas_examples"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "build_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def by_signal(plan: AcquisitionPlan) -> dict[str, PlanRow]:
    return {r.signal: r for r in plan.rows}


@pytest.mark.parametrize("fmt", FORMATS)
def test_pump_plan(fmt: str) -> None:
    plan = load_plan(EXAMPLES / f"pump.{fmt}")
    rows = by_signal(plan)
    assert list(rows) == [
        "Hydraulics.InletPressure",
        "Hydraulics.OutletPressure",
        "Hydraulics.FlowRate",
        "Condition.BearingTemperature",
        "Drive.SpeedSetpoint",
    ]
    for row in plan.rows:
        assert row.asset_id == PUMP_ASSET
        assert row.protocol is PlanProtocol.OPCUA
        assert row.endpoint == "opc.tcp://pump-p101.plant.example.com:4840"
        assert row.security == ("opcua_channel_sc",)
        assert row.data_type == "number"
        assert row.mapped_by == "aimc"
        assert row.interface == "InterfaceOPCUA"
    inlet = rows["Hydraulics.InletPressure"]
    assert inlet.node_id == f"nsu={NS};s=P101.InletPressure"
    assert inlet.address == inlet.node_id
    assert (inlet.unit, inlet.sampling_interval_ms, inlet.deadband) == ("bar", 500.0, 0.01)
    assert inlet.semantic_id == "https://example.com/ids/cd/pump/SuctionPressure"
    assert inlet.level is Level.GENERAL
    assert inlet.observable is True
    assert (
        inlet.source
        == "AssetInterfacesDescription/InterfaceOPCUA/InteractionMetadata/properties/InletPressure"
    )
    # The AIMC target carries a classification qualifier.
    assert rows["Hydraulics.FlowRate"].level is Level.IMPORTANT
    assert rows["Hydraulics.FlowRate"].unit == "m3/h"
    temp = rows["Condition.BearingTemperature"]
    assert (temp.category, temp.level, temp.deadband, temp.sampling_interval_ms) == (
        "condition-monitoring",
        Level.GENERAL,
        0.2,
        5000.0,
    )
    setpoint = rows["Drive.SpeedSetpoint"]
    assert (setpoint.category, setpoint.level, setpoint.unit) == ("setpoint", Level.IMPORTANT, "rpm")
    assert plan.endpoints() == ["opc.tcp://pump-p101.plant.example.com:4840"]
    assert plan.skipped == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_cnc_spindle_plan(fmt: str) -> None:
    plan = load_plan(EXAMPLES / f"cnc_spindle.{fmt}")
    rows = by_signal(plan)
    assert list(rows) == [
        "Vibration.RMS",
        "Vibration.Peak",
        "Vibration.Temperature",
        "SpindleSpeed",
        "SpindleLoad",
        "FeedOverride",
    ]
    for row in plan.rows:
        assert (row.asset_id, row.protocol, row.endpoint, row.security) == (
            CNC_ASSET,
            PlanProtocol.MQTT,
            "mqtts://broker.plant.example.com:8883",
            ("basic_sc",),
        )
    rms = rows["Vibration.RMS"]
    assert (rms.topic, rms.payload, rms.json_path, rms.ts_path, rms.qos, rms.unit) == (
        "plant1/line2/cnc-07/spindle/vibration",
        "json",
        "$.rms",
        "$.ts",
        1,
        "mm/s",
    )
    assert rms.category == "condition-monitoring"
    assert rows["Vibration.Temperature"].json_path == "$.temp"
    speed = rows["SpindleSpeed"]
    assert (speed.topic, speed.payload, speed.metric, speed.json_path, speed.qos) == (
        "spBv1.0/Plant1/DDATA/EdgeNode-CNC07/Spindle",
        "sparkplug_b",
        "Spindle/Speed",
        None,
        0,
    )
    assert speed.address == "spBv1.0/Plant1/DDATA/EdgeNode-CNC07/Spindle Spindle/Speed"
    assert rows["FeedOverride"].level is Level.IMPORTANT
    assert {r.interface for r in plan.rows} == {"InterfaceMQTT", "InterfaceSparkplugB"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_energy_meter_plan(fmt: str) -> None:
    plan = load_plan(EXAMPLES / f"energy_meter.{fmt}")
    rows = by_signal(plan)
    assert {s: (r.json_path, r.unit) for s, r in rows.items()} == {
        "Measurements.Voltage": ("$['U_L1-N']", "V"),
        "Measurements.Current": ("$.I_L1", "A"),
        "Measurements.ActivePower": ("$.P_total", "kW"),
        "Measurements.Energy": ("$.E_import", "kWh"),
        "Frequency": (None, "Hz"),
    }
    assert rows["Frequency"].payload == "text"
    assert rows["Frequency"].topic == "site1/energy/em-7/frequency"
    assert rows["Measurements.Voltage"].sampling_interval_ms == 1000.0
    assert all(r.security == ("nosec_sc",) and r.asset_id == METER_ASSET for r in plan.rows)
    assert all(r.level is Level.GENERAL for r in plan.rows)


def test_formats_give_identical_plans() -> None:
    for name in ("pump", "cnc_spindle", "energy_meter"):
        plans = [load_plan(EXAMPLES / f"{name}.{fmt}") for fmt in FORMATS]
        assert plans[0].rows == plans[1].rows == plans[2].rows


def test_without_aimc_signals_are_aid_property_names(tmp_path: Path) -> None:
    objects = [
        o
        for o in builders().pump()
        if not (isinstance(o, model.Submodel) and o.id_short == "AssetInterfacesMappingConfiguration")
    ]
    save_environment(objects, tmp_path / "pump-no-aimc.json")
    plan = load_plan(tmp_path / "pump-no-aimc.json")
    rows = by_signal(plan)
    assert list(rows) == [
        "InletPressure",
        "OutletPressure",
        "FlowRate",
        "BearingTemperature",
        "SpeedSetpoint",
    ]
    assert all(r.mapped_by == "aid" and r.semantic_id is None for r in plan.rows)
    # The classification qualifier sat on the AIMC target, which is gone now.
    assert rows["FlowRate"].level is Level.GENERAL
    assert rows["SpeedSetpoint"].level is Level.IMPORTANT


def test_aimc_overrides_signal_and_semantic_id_but_not_the_address() -> None:
    with_aimc = by_signal(load_plan(EXAMPLES / "pump.json"))
    row = with_aimc["Drive.SpeedSetpoint"]
    assert row.node_id == f"nsu={NS};s=P101.SpeedSetpoint"
    assert row.semantic_id == "https://example.com/ids/cd/pump/SpeedSetpoint"
    assert row.mapped_by == "aimc"


def test_agent_inputs() -> None:
    pump = load_plan(EXAMPLES / "pump.json")
    nodes = pump.opcua_nodes()
    assert nodes[0].asset_id == PUMP_ASSET
    assert nodes[0].signal == "Hydraulics.InletPressure"
    assert nodes[0].node_id == f"nsu={NS};s=P101.InletPressure"
    assert (nodes[0].sampling_interval_ms, nodes[0].deadband, nodes[0].observable) == (500.0, 0.01, True)
    assert pump.opcua_nodes("opc.tcp://elsewhere:4840") == []
    assert pump.mqtt_signals() == []
    cnc = load_plan(EXAMPLES / "cnc_spindle.json")
    signals = cnc.mqtt_signals("mqtts://broker.plant.example.com:8883")
    assert [s.signal for s in signals][:2] == ["Vibration.RMS", "Vibration.Peak"]
    assert signals[3].payload == "sparkplug_b"
    assert signals[3].metric == "Spindle/Speed"
    assert len(cnc.rows_for("mqtt")) == 6
    assert cnc.rows_for(PlanProtocol.OPCUA) == []


def test_plan_json_round_trip_is_stable() -> None:
    for name in ("pump", "cnc_spindle", "energy_meter"):
        plan = load_plan(EXAMPLES / f"{name}.json")
        text = plan.to_json()
        again = AcquisitionPlan.from_json(text)
        assert again.rows == plan.rows
        assert again.to_json() == text
        assert '"level": "general"' in text or '"level": "important"' in text


def test_lazy_exports() -> None:
    assert LazyPlan is AcquisitionPlan
    import tidm.semantics as semantics

    with pytest.raises(AttributeError):
        _ = semantics.no_such_name  # type: ignore[attr-defined]


def test_build_plan_on_a_loaded_environment() -> None:
    env = load_environment(EXAMPLES / "energy_meter.aasx")
    plan = build_plan(env)
    assert len(plan) == 5
    assert [r.signal for r in plan] == [r.signal for r in plan.rows]
    assert plan.source.endswith("energy_meter.aasx")


def test_category_enum_values_are_used() -> None:
    row = by_signal(load_plan(EXAMPLES / "pump.json"))["Drive.SpeedSetpoint"]
    assert Category(row.category) is Category.SETPOINT
