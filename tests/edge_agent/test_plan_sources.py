"""Sources planned from the shipped example AAS files (no connection is made here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from tidm.cli.settings import AgentProcessSettings, load_settings
from tidm.edge_agent.config import PlanSourceSettings
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.plan_sources import sources_from_plan
from tidm.edge_agent.sources.mqtt import MqttSource
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.semantics.plan import load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"


def test_pump_plan_gives_a_secure_opcua_source_with_every_node(tmp_path: Path) -> None:
    for name in ("cert.der", "key.pem"):
        (tmp_path / name).write_bytes(b"x")
    settings = PlanSourceSettings(
        aas=EXAMPLES / "pump.aasx",
        opcua_certificate=tmp_path / "cert.der",
        opcua_private_key=tmp_path / "key.pem",
        opcua_trust_folder=tmp_path,
    )
    (source,) = sources_from_plan(load_plan(settings.aas), settings, client_id="gw-1")
    assert isinstance(source, OpcUaSource)
    assert source.settings.security == "basic256sha256", "no silent fallback to Security None"
    assert source.name == "opc.tcp://pump-p101.plant.example.com:4840"


def test_spindle_plan_needs_credentials_and_uses_tls() -> None:
    plan = load_plan(EXAMPLES / "cnc_spindle.json")
    with pytest.raises(SourceError, match="basic_sc"):
        sources_from_plan(plan, PlanSourceSettings(aas=EXAMPLES / "cnc_spindle.json"), client_id="gw-1")
    settings = PlanSourceSettings(
        aas=EXAMPLES / "cnc_spindle.json", mqtt_username="gw", mqtt_password=SecretStr("pw")
    )
    sources = sources_from_plan(plan, settings, client_id="gw-1")
    assert all(isinstance(s, MqttSource) for s in sources)
    mqtt = sources[0]
    assert isinstance(mqtt, MqttSource)
    assert mqtt.settings.tls is not None and mqtt.settings.port == 8883
    topics = {sub.topic for s in sources if isinstance(s, MqttSource) for sub in s.settings.subscriptions}
    assert "plant1/line2/cnc-07/spindle/vibration" in topics
    assert any(t.startswith("spBv1.0/Plant1/DDATA/EdgeNode-CNC07/") for t in topics)


def test_agent_settings_take_plans(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"agent:\n  plans:\n    - aas: {EXAMPLES / 'energy_meter.json'}\n      mapping: null\n")
    settings = load_settings(AgentProcessSettings, path, {})
    assert settings.agent.plans[0].aas.name == "energy_meter.json"
