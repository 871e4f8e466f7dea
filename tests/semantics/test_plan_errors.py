"""Broken AAS variants: every error names the file and the AAS element path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from basyx.aas import model

from tidm.semantics.aas import save_environment
from tidm.semantics.errors import AasError
from tidm.semantics.plan import load_plan, parse_node_id

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
PUMP_PROPS = "AssetInterfacesDescription/InterfaceOPCUA/InteractionMetadata/properties"
PUMP_META = "AssetInterfacesDescription/InterfaceOPCUA/EndpointMetadata"


def builders() -> ModuleType:
    name = "tidm_aas_examples"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "build_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def find(objects: list[Any], path: str) -> Any:
    """The element at `Submodel/child/.../child` (list items as `name[i]`)."""
    first, *rest = path.split("/")
    item: Any = next(o for o in objects if isinstance(o, model.Submodel) and o.id_short == first)
    for part in rest:
        children = item.submodel_element if isinstance(item, model.Submodel) else item.value
        name, _, index = part.partition("[")
        item = next(c for c in children if c.id_short == name)
        if index:
            item = list(item.value)[int(index.rstrip("]"))]
    return item


def broken(
    tmp_path: Path, mutate: Callable[[list[Any]], None], build: str = "pump", fmt: str = "json", **kw: Any
) -> Path:
    objects = getattr(builders(), build)(**kw)
    mutate(objects)
    target = tmp_path / f"broken.{fmt}"
    save_environment(objects, target)
    return target


def expect(target: Path, path: str, message: str) -> AasError:
    with pytest.raises(AasError, match=message) as info:
        load_plan(target)
    assert info.value.path == path, str(info.value)
    assert info.value.file == str(target)
    assert f"{target}: {path}: " in str(info.value)
    return info.value


def remove(objects: list[Any], path: str) -> None:
    parent_path, _, name = path.rpartition("/")
    parent = find(objects, parent_path)
    children = parent.submodel_element if isinstance(parent, model.Submodel) else parent.value
    children.remove(next(c for c in children if c.id_short == name))


@pytest.mark.parametrize("fmt", ["json", "xml", "aasx"])
def test_missing_href(tmp_path: Path, fmt: str) -> None:
    target = broken(tmp_path, lambda o: remove(o, f"{PUMP_PROPS}/FlowRate/forms/href"), fmt=fmt)
    expect(target, f"{PUMP_PROPS}/FlowRate/forms/href", "missing href")


def test_missing_href_on_mqtt(tmp_path: Path) -> None:
    path = "AssetInterfacesDescription/InterfaceMQTT/InteractionMetadata/properties/Vibration/forms/href"
    target = broken(tmp_path, lambda o: remove(o, path), build="cnc_spindle")
    expect(target, path, "missing href")


def test_missing_forms(tmp_path: Path) -> None:
    target = broken(tmp_path, lambda o: remove(o, f"{PUMP_PROPS}/InletPressure/forms"))
    expect(target, f"{PUMP_PROPS}/InletPressure/forms", "missing forms")


@pytest.mark.parametrize(
    ("href", "message"),
    [
        ("/?id=nsu=urn:x;q=Pump.Inlet", "not an OPC UA node id"),
        ("/?id=nsu=urn:x;i=12ab", "numeric identifier"),
        ("/?id=nsu=urn:x;i=99999999999", "numeric identifier"),
        ("/?id=nsu=urn:x;g=not-a-guid", "GUID"),
        ("/?id=nsu=urn:x;b=***", "base64"),
        ("/?id=nsu=urn:x;s=", "string identifier is empty"),
        ("/?id=nsu=;s=Pump.Inlet", "namespace URI"),
        ("/?id=ns=2;s=Pump.Inlet", "namespace index 2"),
        ("/Pump.Inlet", "has no node id"),
    ],
)
def test_bad_node_ids(tmp_path: Path, href: str, message: str) -> None:
    def mutate(objects: list[Any]) -> None:
        find(objects, f"{PUMP_PROPS}/OutletPressure/forms/href").value = href

    target = broken(tmp_path, mutate)
    expect(target, f"{PUMP_PROPS}/OutletPressure/forms/href", message)


def test_node_id_forms() -> None:
    assert parse_node_id("nsu=urn:a;s=X.Y") == "nsu=urn:a;s=X.Y"
    assert parse_node_id("ns=0;i=2258") == "i=2258"
    assert parse_node_id("i=2258") == "i=2258"
    assert parse_node_id("ns=3;i=7", {3: "urn:b"}) == "nsu=urn:b;i=7"
    assert parse_node_id("nsu=urn:a;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63").startswith("nsu=urn:a;g=")
    assert parse_node_id("nsu=urn:a;b=AAEC") == "nsu=urn:a;b=AAEC"


def test_absolute_opcua_href_gives_its_own_endpoint(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        find(
            objects, f"{PUMP_PROPS}/FlowRate/forms/href"
        ).value = "opc.tcp://other-server:4841/?id=nsu=urn:x%3Ay;s=Flow%23Rate"

    plan = load_plan(broken(tmp_path, mutate))
    row = next(r for r in plan.rows if r.signal == "Hydraulics.FlowRate")
    assert (row.endpoint, row.node_id) == ("opc.tcp://other-server:4841", "nsu=urn:x:y;s=Flow#Rate")
    assert plan.endpoints() == ["opc.tcp://other-server:4841", "opc.tcp://pump-p101.plant.example.com:4840"]


def test_unknown_binding(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        iface = find(objects, "AssetInterfacesDescription/InterfaceOPCUA")
        iface.supplemental_semantic_id[1] = builders().ext("http://example.com/bindings/profinet")

    expect(
        broken(tmp_path, mutate),
        "AssetInterfacesDescription/InterfaceOPCUA/supplementalSemanticId",
        "unknown protocol binding",
    )


def test_unknown_scheme_without_binding(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        iface = find(objects, "AssetInterfacesDescription/InterfaceOPCUA")
        del iface.supplemental_semantic_id[1]
        find(objects, f"{PUMP_META}/base").value = "profinet://10.0.0.5"

    expect(broken(tmp_path, mutate), f"{PUMP_META}/base", "unknown protocol")


def test_binding_and_scheme_disagree(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        find(objects, f"{PUMP_META}/base").value = "mqtt://broker:1883"

    expect(broken(tmp_path, mutate), f"{PUMP_META}/base", "declared opcua but its base URI")


def test_protocol_from_scheme_when_no_binding_is_declared(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        del find(objects, "AssetInterfacesDescription/InterfaceOPCUA").supplemental_semantic_id[1]

    plan = load_plan(broken(tmp_path, mutate))
    assert {r.protocol.value for r in plan.rows} == {"opcua"}


def test_modbus_interface_is_skipped_not_fatal(tmp_path: Path) -> None:
    b = builders()

    def mutate(objects: list[Any]) -> None:
        aid = find(objects, "AssetInterfacesDescription")
        modbus = b.aid_submodel(
            aid.id,
            [
                b.Interface(
                    "InterfaceMODBUS",
                    "modbus",
                    "Drive registers",
                    "modbus+tcp://10.0.0.7:502/1",
                    ["nosec_sc"],
                    [b.Affordance("MotorCurrent", unit="A", href="40001?quantity=2")],
                )
            ],
        )
        for element in list(modbus.submodel_element):
            modbus.submodel_element.remove(element)
            aid.submodel_element.add(element)

    plan = load_plan(broken(tmp_path, mutate))
    assert len(plan.rows) == 5
    assert [(s.interface, s.protocol) for s in plan.skipped] == [("InterfaceMODBUS", "modbus")]


def test_missing_base(tmp_path: Path) -> None:
    target = broken(tmp_path, lambda o: remove(o, f"{PUMP_META}/base"))
    expect(target, f"{PUMP_META}/base", "missing base")


def test_missing_endpoint_metadata(tmp_path: Path) -> None:
    target = broken(tmp_path, lambda o: remove(o, PUMP_META))
    expect(target, PUMP_META, "missing EndpointMetadata")


def test_missing_security(tmp_path: Path) -> None:
    target = broken(tmp_path, lambda o: remove(o, f"{PUMP_META}/security"))
    expect(target, f"{PUMP_META}/security", "missing security")


def test_empty_security(tmp_path: Path) -> None:
    expect(broken(tmp_path, lambda o: None, security=()), f"{PUMP_META}/security", "security is empty")


def test_security_reference_to_nowhere(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        ref = list(find(objects, f"{PUMP_META}/security").value)[0]
        keys = (*ref.value.key[:-1], model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, "certificate_sc"))
        ref.value = model.ModelReference(keys, model.SubmodelElementCollection)

    expect(broken(tmp_path, mutate), f"{PUMP_META}/security[0]", "does not resolve")


def test_aimc_relation_to_nowhere(tmp_path: Path) -> None:
    relations = "AssetInterfacesMappingConfiguration/MappingConfigurations[0]/MappingSourceSinkRelations"

    def mutate(objects: list[Any]) -> None:
        remove(objects, "OperationalData/Drive/SpeedSetpoint")

    expect(broken(tmp_path, mutate), f"{relations}[4]/second", "does not resolve")


def test_aimc_source_outside_the_interface(tmp_path: Path) -> None:
    relations = "AssetInterfacesMappingConfiguration/MappingConfigurations[0]/MappingSourceSinkRelations"

    def mutate(objects: list[Any]) -> None:
        relation = list(find(objects, relations).value)[0]
        op = find(objects, "OperationalData")
        relation.first = model.ModelReference(
            (
                model.Key(model.KeyTypes.SUBMODEL, op.id),
                model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, "Drive"),
            ),
            model.SubmodelElementCollection,
        )

    expect(broken(tmp_path, mutate), f"{relations}[0]/first", "not a property of the interface")


def test_duplicate_signal_from_aimc(tmp_path: Path) -> None:
    relations = "AssetInterfacesMappingConfiguration/MappingConfigurations[0]/MappingSourceSinkRelations"

    def mutate(objects: list[Any]) -> None:
        # Map OutletPressure onto the same target as InletPressure.
        first, second = list(find(objects, relations).value)[:2]
        second.second = first.second

    err = expect(
        broken(tmp_path, mutate),
        f"{PUMP_PROPS}/OutletPressure",
        "duplicate signal 'Hydraulics.InletPressure'",
    )
    assert f"{PUMP_PROPS}/InletPressure" in str(err)


@pytest.mark.parametrize(
    ("qualifier", "value", "message"),
    [
        ("tidm:classification", "secret", "unknown classification level"),
        ("tidm:category", "gossip", "unknown tidm:category"),
        ("tidm:samplingInterval", "fast", "sampling interval"),
        ("tidm:deadband", "-1", "deadband"),
        ("tidm:deadbandType", "relative", "deadbandType"),
    ],
)
def test_bad_qualifiers(tmp_path: Path, qualifier: str, value: str, message: str) -> None:
    def mutate(objects: list[Any]) -> None:
        element = find(objects, f"{PUMP_PROPS}/OutletPressure")
        for q in list(element.qualifier):
            if q.type == qualifier:
                element.qualifier.remove(q)
        element.qualifier.add(model.Qualifier(qualifier, model.datatypes.String, value))

    expect(broken(tmp_path, mutate), f"{PUMP_PROPS}/OutletPressure", message)


def test_qualifier_values_are_read(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        element = find(objects, f"{PUMP_PROPS}/OutletPressure")
        element.qualifier.add(model.Qualifier("tidm:classification", model.datatypes.Integer, 3))
        element.qualifier.add(model.Qualifier("tidm:deadbandType", model.datatypes.String, "percent"))
        element.extension.add(model.Extension("tidm:timestampPath", model.datatypes.String, "$.t"))

    plan = load_plan(broken(tmp_path, mutate))
    row = next(r for r in plan.rows if r.signal == "Hydraulics.OutletPressure")
    assert (row.level.gbt, row.deadband_type, row.ts_path) == ("core", "percent", None)


def test_bad_mqtt_qos_and_topic(tmp_path: Path) -> None:
    props = "AssetInterfacesDescription/InterfaceMQTT/InteractionMetadata/properties"

    def bad_qos(objects: list[Any]) -> None:
        find(objects, f"{props}/Frequency/forms/mqv_qos").value = "3"

    expect(broken(tmp_path, bad_qos, build="energy_meter"), f"{props}/Frequency/forms/mqv_qos", "mqv_qos")

    def bad_topic(objects: list[Any]) -> None:
        find(objects, f"{props}/Frequency/forms/href").value = "site1/%23/frequency"

    expect(broken(tmp_path, bad_topic, build="energy_meter"), f"{props}/Frequency/forms/href", "'#' may only")


def test_mqtt_topic_forms(tmp_path: Path) -> None:
    props = "AssetInterfacesDescription/InterfaceMQTT/InteractionMetadata/properties"

    def mutate(objects: list[Any]) -> None:
        find(objects, f"{props}/Frequency/forms/href").value = ".//root/em-7/%23"
        find(objects, f"{props}/Measurements/forms/href").value = "mqtt://other:1884/site1/em-7/all"

    rows = {r.signal: r for r in load_plan(broken(tmp_path, mutate, build="energy_meter")).rows}
    assert rows["Frequency"].topic == "/root/em-7/#"
    assert (rows["Measurements.Voltage"].endpoint, rows["Measurements.Voltage"].topic) == (
        "mqtt://other:1884",
        "site1/em-7/all",
    )


def test_shell_without_global_asset_id(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        shell = next(o for o in objects if isinstance(o, model.AssetAdministrationShell))
        shell.asset_information = model.AssetInformation(
            specific_asset_id=[model.SpecificAssetId("serialNumber", "EM3P-2022-0007")]
        )

    expect(broken(tmp_path, mutate, build="energy_meter"), "AssetInterfacesDescription", "no globalAssetId")


def test_environment_without_aid(tmp_path: Path) -> None:
    def mutate(objects: list[Any]) -> None:
        objects[:] = [o for o in objects if getattr(o, "id_short", "") != "AssetInterfacesDescription"]

    with pytest.raises(AasError, match="no Asset Interfaces Description"):
        load_plan(broken(tmp_path, mutate, build="energy_meter"))


def test_http_interface_rows(tmp_path: Path) -> None:
    b = builders()

    def mutate(objects: list[Any]) -> None:
        aid = find(objects, "AssetInterfacesDescription")
        http = b.aid_submodel(
            aid.id,
            [
                b.Interface(
                    "InterfaceHTTP",
                    "http",
                    "Meter web API",
                    "https://em-7.plant.example.com/api/",
                    ["basic_sc"],
                    [
                        b.Affordance("PowerFactor", href="properties/pf"),
                        b.Affordance("Phase", type="string", href="https://em-7.plant.example.com/v2/phase"),
                    ],
                )
            ],
        )
        for element in list(http.submodel_element):
            http.submodel_element.remove(element)
            aid.submodel_element.add(element)

    plan = load_plan(broken(tmp_path, mutate, build="energy_meter"))
    rows = {r.signal: r for r in plan.rows_for("http")}
    assert rows["PowerFactor"].url == "https://em-7.plant.example.com/api/properties/pf"
    assert rows["PowerFactor"].method == "GET"
    assert rows["PowerFactor"].address == "GET https://em-7.plant.example.com/api/properties/pf"
    assert rows["Phase"].url == "https://em-7.plant.example.com/v2/phase"
    assert (rows["Phase"].data_type, rows["Phase"].security) == ("string", ("basic_sc",))
