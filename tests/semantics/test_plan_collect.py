"""An AAS whose AID describes an OPC UA and an MQTT interface drives an agent that collects from both.

The OPC UA half runs against the simulator, the MQTT half against the real Mosquitto; the sources
are built from the acquisition plan only (no hand-written node ids or topics).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import paho.mqtt.client as mqtt
import pytest

from tidm.edge_agent.config import PlanSourceSettings
from tidm.edge_agent.plan_sources import sources_from_plan
from tidm.edge_agent.sources.base import RawSample
from tidm.semantics.aas import save_environment
from tidm.semantics.plan import PlanProtocol, load_plan
from tidm.simulator import AssetConfig, SignalConfig, Simulator, SimulatorConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
ASSET = "https://example.com/ids/asset/5412_7025_3012_0101"


def builders() -> ModuleType:
    name = "tidm_aas_examples"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "build_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def write_aas(path: Path, sim: Simulator, broker: str, topic: str) -> None:
    """A pump whose AID has an OPC UA interface (the simulator) and an MQTT one (a vibration sensor)."""
    b = builders()

    def node(signal: str) -> str:
        return f"/?id=nsu={sim.namespace_uri};s=P101.{signal}"

    opcua = b.Interface(
        "InterfaceOPCUA",
        "opcua",
        "Pump P-101 controller",
        sim.endpoint,
        ["nosec_sc"],
        [
            b.Affordance(
                "InletPressure", unit="bar", href=node("InletPressure"), tidm={"tidm:samplingInterval": 50}
            ),
            b.Affordance(
                "OutletPressure", unit="bar", href=node("OutletPressure"), tidm={"tidm:deadband": 0.0}
            ),
            b.Affordance("SpeedSetpoint", unit="rpm", href=node("SpeedSetpoint")),
        ],
        content_type="application/octet-stream",
    )
    vibration = b.Interface(
        "InterfaceMQTT",
        "mqtt",
        "Pump P-101 vibration sensor",
        broker,
        ["nosec_sc"],
        [
            b.Affordance(
                "Vibration",
                type="object",
                href=topic,
                qos="1",
                tidm={"tidm:timestampPath": "$.ts"},
                members=[
                    b.Affordance("RMS", unit="mm/s", key="rms"),
                    b.Affordance("Peak", unit="m/s2", key="peak"),
                ],
            ),
            b.Affordance("BearingTemperature", unit="degC", href=f"{topic}/temp", content_type="text/plain"),
        ],
    )
    aid = b.aid_submodel("https://example.com/ids/sm/pump-p101/aid", [opcua, vibration])
    shell = b.shell("https://example.com/ids/aas/pump-p101", "Pump_P101", ASSET, [aid])
    save_environment([shell, aid], path)


class Collector:
    def __init__(self) -> None:
        self.samples: list[RawSample] = []

    def __call__(self, source: str, samples: Sequence[RawSample]) -> None:
        self.samples.extend(samples)

    def signals(self) -> set[tuple[str, str]]:
        return {(s.asset_id, s.signal) for s in self.samples}


async def test_aid_with_opcua_and_mqtt_drives_collection_from_both(
    mqtt_broker: tuple[str, int], unique_name: Callable[..., str], tmp_path: Path
) -> None:
    config = SimulatorConfig(
        assets=(
            AssetConfig(
                asset_id=ASSET,
                name="P101",
                signals=(
                    SignalConfig(
                        name="InletPressure", unit="bar", offset=1.2, amplitude=0.1, update_period_ms=50
                    ),
                    SignalConfig(
                        name="OutletPressure", unit="bar", offset=6.5, amplitude=0.3, update_period_ms=50
                    ),
                    SignalConfig(
                        name="SpeedSetpoint", kind="ramp", amplitude=100, offset=1450, update_period_ms=100
                    ),
                ),
            ),
        ),
    )
    host, port = mqtt_broker
    topic = unique_name("plant1/pump-p101/vibration")
    async with Simulator(config) as sim:
        aas = tmp_path / "pump-line.json"
        write_aas(aas, sim, f"mqtt://{host}:{port}", topic)
        plan = load_plan(aas)
        assert {r.protocol for r in plan.rows} == {PlanProtocol.OPCUA, PlanProtocol.MQTT}
        # The plan's node ids are the simulator's own ExpandedNodeIds.
        assert {(n.asset_id, n.signal): n.node_id for n in plan.opcua_nodes()} == sim.node_ids()

        # The product path: what `tidm agent run` builds from `agent.plans`.
        sources = sources_from_plan(
            plan,
            PlanSourceSettings(aas=aas, mqtt_quarantine_dir=tmp_path / "quarantine"),
            client_id=unique_name("agent"),
        )
        assert len(sources) == 2
        collected = Collector()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(collected, stop)) for s in sources]
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_name("pub"))
        publisher.connect(host, port, 30)
        publisher.loop_start()
        wanted = {(r.asset_id, r.signal) for r in plan.rows}
        try:
            async with asyncio.timeout(60):
                while not wanted <= collected.signals():
                    for task in tasks:
                        if task.done():
                            task.result()  # a source that died: show why
                    now_ms = int(time.time() * 1000)
                    payload = json.dumps({"ts": now_ms, "rms": 2.3, "peak": 11.5})
                    publisher.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
                    publisher.publish(f"{topic}/temp", "41.7", qos=0).wait_for_publish(timeout=10)
                    await asyncio.sleep(0.2)
        finally:
            publisher.disconnect()
            publisher.loop_stop()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        for task in tasks:
            assert task.exception() is None

    assert (
        collected.signals()
        == wanted
        == {
            (ASSET, "InletPressure"),
            (ASSET, "OutletPressure"),
            (ASSET, "SpeedSetpoint"),
            (ASSET, "Vibration.RMS"),
            (ASSET, "Vibration.Peak"),
            (ASSET, "BearingTemperature"),
        }
    )
    rms = [s for s in collected.samples if s.signal == "Vibration.RMS"]
    assert rms[0].value == 2.3
    assert all(s.value_text is None for s in rms)
    temps = [s.value for s in collected.samples if s.signal == "BearingTemperature"]
    assert temps[0] == 41.7
    inlet = [s.value for s in collected.samples if s.signal == "InletPressure" and s.value is not None]
    assert inlet and all(1.0 < v < 1.4 for v in inlet)
