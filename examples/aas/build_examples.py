"""Build the example AAS environments of examples/aas/ with basyx, so they stay valid.

Run `python examples/aas/build_examples.py` after changing this file; it rewrites every example in
JSON, XML and AASX beside itself. The tests load this file too (its builder functions make AAS
environments for other endpoints, e.g. a simulator on a free port).

The examples use the IDTA 02017 Asset Interfaces Description (1.1 for the OPC UA binding) and, for
the pump, an IDTA 02027 Asset Interfaces Mapping Configuration onto an OperationalData submodel.
TIDM-specific settings (sampling interval, deadband, category, classification, timestamp path)
are qualifiers named `tidm:...`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, MutableSet, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from basyx.aas import model

HERE = Path(__file__).resolve().parent

AID = "https://admin-shell.io/idta/AssetInterfacesDescription"
AIMC = "https://admin-shell.io/idta/AssetInterfacesMappingConfiguration"
WOT_TD = "https://www.w3.org/2019/wot/td"
BINDINGS = {
    "opcua": "http://opcfoundation.org/UA/WoT-Binding/",
    "mqtt": "http://www.w3.org/2011/mqtt",
    "http": "http://www.w3.org/2011/http",
    "modbus": "http://www.w3.org/2011/modbus",
}
SECURITY_SCHEMES = {
    "nosec_sc": ("https://www.w3.org/2019/wot/security#NoSecurityScheme", "nosec"),
    "basic_sc": ("https://www.w3.org/2019/wot/security#BasicSecurityScheme", "basic"),
    "opcua_channel_sc": (
        "http://opcfoundation.org/UA/WoT-Binding/OPCUASecurityChannelScheme",
        "ua_channelsec",
    ),
    "opcua_authentication_sc": (
        "http://opcfoundation.org/UA/WoT-Binding/OPCUASecurityAuthenticationScheme",
        "ua_authentication",
    ),
}
_STR = model.datatypes.String
_BOOL = model.datatypes.Boolean
_DBL = model.datatypes.Double


def ext(value: str) -> model.ExternalReference:
    """An external (global) reference, as semantic ids are."""
    return model.ExternalReference((model.Key(model.KeyTypes.GLOBAL_REFERENCE, value),))


def prop(id_short: str, value: Any, semantic_id: str | None = None, value_type: Any = _STR) -> model.Property:
    """A Property with an optional semantic id."""
    return model.Property(id_short, value_type, value, semantic_id=ext(semantic_id) if semantic_id else None)


def qualifiers(values: dict[str, Any]) -> list[model.Qualifier]:
    """`tidm:*` qualifiers from a dict (numbers as xs:double, the rest as xs:string)."""
    out = []
    for name, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(model.Qualifier(name, _DBL, float(value)))
        else:
            out.append(model.Qualifier(name, _STR, str(value)))
    return out


@dataclass
class Affordance:
    """One AID property affordance (or, with no href, a member of an object-typed one)."""

    name: str
    type: str = "number"
    unit: str | None = None
    title: str | None = None
    href: str | None = None
    key: str | None = None
    observable: bool | None = True
    qos: str | None = None
    subprotocol: str | None = None
    content_type: str | None = None
    value_semantics: str | None = None
    tidm: dict[str, Any] = field(default_factory=dict)
    members: list[Affordance] = field(default_factory=list)


@dataclass
class Interface:
    """One AID interface."""

    id_short: str
    protocol: str
    title: str
    base: str
    security: Sequence[str]
    properties: Sequence[Affordance]
    content_type: str | None = "application/json"
    channel: dict[str, str] = field(default_factory=dict)
    tidm: dict[str, Any] = field(default_factory=dict)


def _affordance(a: Affordance, *, top: bool) -> model.SubmodelElementCollection:
    semantic = (
        f"{AID}/1/0/PropertyDefinition" if top else "https://www.w3.org/2019/wot/json-schema#propertyName"
    )
    children: list[model.SubmodelElement] = []
    if a.key is not None:
        children.append(prop("key", a.key, f"{AID}/1/0/key"))
    if a.title is not None:
        children.append(prop("title", a.title, f"{WOT_TD}#title"))
    children.append(prop("type", a.type, "https://www.w3.org/1999/02/22-rdf-syntax-ns#type"))
    if a.unit is not None:
        children.append(prop("unit", a.unit, "https://schema.org/unitCode"))
    if top and a.observable is not None:
        children.append(prop("observable", a.observable, f"{WOT_TD}#isObservable", _BOOL))
    if a.value_semantics is not None:
        children.append(
            model.ReferenceElement(
                "valueSemantics", ext(a.value_semantics), semantic_id=ext(f"{AID}/1/0/valueSemantics")
            )
        )
    if a.members:
        children.append(
            model.SubmodelElementCollection(
                "properties",
                [_affordance(m, top=False) for m in a.members],
                semantic_id=ext("https://www.w3.org/2019/wot/json-schema#properties"),
            )
        )
    if top:
        form: list[model.SubmodelElement] = []
        if a.href is not None:
            form.append(prop("href", a.href, "https://www.w3.org/2019/wot/hypermedia#hasTarget"))
        if a.content_type is not None:
            form.append(
                prop("contentType", a.content_type, "https://www.w3.org/2019/wot/hypermedia#forContentType")
            )
        if a.subprotocol is not None:
            form.append(
                prop("subprotocol", a.subprotocol, "https://www.w3.org/2019/wot/hypermedia#forSubProtocol")
            )
        if a.qos is not None:
            form.append(prop("mqv_qos", a.qos, "https://www.w3.org/2019/wot/mqtt#hasQoSFlag"))
        children.append(model.SubmodelElementCollection("forms", form, semantic_id=ext(f"{WOT_TD}#hasForm")))
    return model.SubmodelElementCollection(
        a.name,
        children,
        semantic_id=ext(semantic),
        supplemental_semantic_id=[ext(f"{WOT_TD}#name")] if top else (),
        qualifier=qualifiers(a.tidm),
    )


def aid_submodel(submodel_id: str, interfaces: Iterable[Interface], version: str = "1/1") -> model.Submodel:
    """An Asset Interfaces Description submodel with the given interfaces."""
    submodel = model.Submodel(
        submodel_id,
        id_short="AssetInterfacesDescription",
        semantic_id=ext(f"{AID}/{version}/Submodel"),
    )
    for iface in interfaces:
        definitions = []
        for name in sorted(set(iface.security)):
            semantic, scheme = SECURITY_SCHEMES[name]
            extra = []
            if name == "opcua_channel_sc":
                extra = [
                    prop("uav_securityMode", iface.channel.get("mode", "SignAndEncrypt")),
                    prop("uav_securityPolicy", iface.channel.get("policy", "Basic256Sha256")),
                ]
            definitions.append(
                model.SubmodelElementCollection(
                    name,
                    [prop("scheme", scheme, "https://www.w3.org/2019/wot/security#SecurityScheme"), *extra],
                    semantic_id=ext(semantic),
                )
            )
        security_refs = [
            model.ReferenceElement(
                None,
                model.ModelReference(
                    (
                        model.Key(model.KeyTypes.SUBMODEL, submodel_id),
                        model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, iface.id_short),
                        model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, "EndpointMetadata"),
                        model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, "securityDefinitions"),
                        model.Key(model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION, name),
                    ),
                    model.SubmodelElementCollection,
                ),
            )
            for name in iface.security
        ]
        metadata: list[model.SubmodelElement] = [prop("base", iface.base, f"{WOT_TD}#baseURI")]
        if iface.content_type is not None:
            metadata.append(
                prop(
                    "contentType", iface.content_type, "https://www.w3.org/2019/wot/hypermedia#forContentType"
                )
            )
        metadata += [
            model.SubmodelElementList(
                "security",
                model.ReferenceElement,
                security_refs,
                semantic_id=ext(f"{WOT_TD}#hasSecurityConfiguration"),
                semantic_id_list_element=None,
            ),
            model.SubmodelElementCollection(
                "securityDefinitions", definitions, semantic_id=ext(f"{WOT_TD}#definesSecurityScheme")
            ),
        ]
        submodel.submodel_element.add(
            model.SubmodelElementCollection(
                iface.id_short,
                [
                    prop("title", iface.title, f"{WOT_TD}#title"),
                    model.SubmodelElementCollection(
                        "EndpointMetadata", metadata, semantic_id=ext(f"{AID}/1/0/EndpointMetadata")
                    ),
                    model.SubmodelElementCollection(
                        "InteractionMetadata",
                        [
                            model.SubmodelElementCollection(
                                "properties",
                                [_affordance(a, top=True) for a in iface.properties],
                                semantic_id=ext(f"{WOT_TD}#PropertyAffordance"),
                            )
                        ],
                        semantic_id=ext(f"{AID}/1/0/InteractionMetadata"),
                        supplemental_semantic_id=[ext(f"{WOT_TD}#InteractionAffordance")],
                    ),
                ],
                semantic_id=ext(f"{AID}/1/0/Interface"),
                supplemental_semantic_id=[ext(WOT_TD), ext(BINDINGS[iface.protocol])],
                qualifier=qualifiers(iface.tidm),
            )
        )
    return submodel


def _model_ref(
    submodel_id: str, path: Sequence[tuple[model.KeyTypes, str]], type_: Any
) -> model.ModelReference[Any]:
    keys = (model.Key(model.KeyTypes.SUBMODEL, submodel_id), *(model.Key(t, v) for t, v in path))
    return model.ModelReference(keys, type_)


def aimc_submodel(
    submodel_id: str, aid_id: str, interface: str, relations: Sequence[tuple[str, str, Sequence[str]]]
) -> model.Submodel:
    """An AIMC submodel: each relation maps an AID property of `interface` to a target element.

    A relation is (AID property name, target submodel id, target idShort path as a list).
    """
    smc = model.KeyTypes.SUBMODEL_ELEMENT_COLLECTION
    rels = []
    for aid_property, target_sm, target_path in relations:
        first = _model_ref(
            aid_id,
            [(smc, interface), (smc, "InteractionMetadata"), (smc, "properties"), (smc, aid_property)],
            model.SubmodelElementCollection,
        )
        second = _model_ref(
            target_sm,
            [*[(smc, p) for p in target_path[:-1]], (model.KeyTypes.PROPERTY, target_path[-1])],
            model.Property,
        )
        rels.append(
            model.RelationshipElement(
                None, first, second, semantic_id=ext(f"{AIMC}/1/0/MappingSourceSinkRelation")
            )
        )
    config = model.SubmodelElementCollection(
        None,
        [
            model.ReferenceElement(
                "InterfaceReference",
                _model_ref(aid_id, [(smc, interface)], model.SubmodelElementCollection),
                semantic_id=ext(f"{AIMC}/1/0/InterfaceReference"),
            ),
            model.SubmodelElementList(
                "MappingSourceSinkRelations",
                model.RelationshipElement,
                rels,
                semantic_id=ext(f"{AIMC}/1/0/MappingSourceSinkRelations"),
                semantic_id_list_element=ext(f"{AIMC}/1/0/MappingSourceSinkRelation"),
            ),
        ],
        semantic_id=ext(f"{AIMC}/1/0/MappingConfiguration"),
    )
    return model.Submodel(
        submodel_id,
        id_short="AssetInterfacesMappingConfiguration",
        semantic_id=ext(f"{AIMC}/1/0/Submodel"),
        submodel_element=[
            model.SubmodelElementList(
                "MappingConfigurations",
                model.SubmodelElementCollection,
                [config],
                semantic_id=ext(f"{AIMC}/1/0/MappingConfigurations"),
                semantic_id_list_element=ext(f"{AIMC}/1/0/MappingConfiguration"),
            )
        ],
    )


def nameplate(submodel_id: str, manufacturer: str, product: str, serial: str, year: str) -> model.Submodel:
    """A small Digital Nameplate (IDTA 02006) with the fields plant IT looks for first."""
    nameplate_sid = "https://admin-shell.io/idta/nameplate/3/0/Nameplate"
    return model.Submodel(
        submodel_id,
        id_short="Nameplate",
        semantic_id=ext(nameplate_sid),
        submodel_element=[
            model.MultiLanguageProperty(
                "ManufacturerName", model.MultiLanguageTextType({"en": manufacturer}),
                semantic_id=ext("0112/2///61987#ABA565#009"),
            ),
            model.MultiLanguageProperty(
                "ManufacturerProductDesignation", model.MultiLanguageTextType({"en": product}),
                semantic_id=ext("0112/2///61987#ABA567#009"),
            ),
            prop("SerialNumber", serial, "0112/2///61987#ABA951#009"),
            prop("YearOfConstruction", year, "0112/2///61987#ABP000#002"),
        ],
    )  # fmt: skip


def shell(
    aas_id: str, id_short: str, asset_id: str, submodels: Iterable[model.Submodel]
) -> model.AssetAdministrationShell:
    """A shell for one asset instance referencing `submodels`."""
    return model.AssetAdministrationShell(
        model.AssetInformation(model.AssetKind.INSTANCE, global_asset_id=asset_id),
        aas_id,
        id_short=id_short,
        submodel=_OrderedSet(model.ModelReference.from_referable(s) for s in submodels),  # type: ignore[arg-type]
    )


class _OrderedSet(MutableSet[Any]):
    """A set that iterates in insertion order: basyx writes a shell's submodel references in
    iteration order, and a plain set would reorder them from run to run (noisy diffs)."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = dict.fromkeys(items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: Any) -> None:
        self._items[value] = None

    def discard(self, value: Any) -> None:
        self._items.pop(value, None)


# ---------------------------------------------------------------------------------------------
# The three example assets


def pump(
    endpoint: str = "opc.tcp://pump-p101.plant.example.com:4840",
    namespace: str = "http://example.com/UA/CentrifugalPump/",
    prefix: str = "P101",
    asset_id: str = "https://example.com/ids/asset/5412_7025_3012_0101",
    security: Sequence[str] = ("opcua_channel_sc",),
    channel: dict[str, str] | None = None,
) -> list[model.Identifiable]:
    """Centrifugal pump P-101: OPC UA, with an AIMC onto its OperationalData submodel."""
    base = "https://example.com/ids"
    cd = f"{base}/cd/pump"
    aid_id, aimc_id, op_id = (
        f"{base}/sm/pump-p101/aid",
        f"{base}/sm/pump-p101/aimc",
        f"{base}/sm/pump-p101/operational",
    )

    def node(name: str) -> str:
        return f"/?id=nsu={namespace};s={prefix}.{name}"

    interface = Interface(
        "InterfaceOPCUA",
        "opcua",
        "Pump P-101 OPC UA server",
        endpoint,
        security,
        [
            Affordance("InletPressure", unit="bar", href=node("InletPressure"),
                       tidm={"tidm:samplingInterval": 500, "tidm:deadband": 0.01}),
            Affordance("OutletPressure", unit="bar", href=node("OutletPressure"),
                       tidm={"tidm:samplingInterval": 500, "tidm:deadband": 0.01}),
            Affordance("FlowRate", unit="m3/h", href=node("FlowRate"), tidm={"tidm:samplingInterval": 1000}),
            Affordance("BearingTemperature", unit="degC", href=node("BearingTemperature"),
                       tidm={"tidm:samplingInterval": 5000, "tidm:deadband": 0.2,
                             "tidm:category": "condition-monitoring"}),
            Affordance("SpeedSetpoint", unit="rpm", href=node("SpeedSetpoint"), observable=True,
                       tidm={"tidm:samplingInterval": 1000, "tidm:category": "setpoint"}),
        ],
        content_type="application/octet-stream",
        channel=channel or {},
    )  # fmt: skip
    operational = model.Submodel(
        op_id,
        id_short="OperationalData",
        semantic_id=ext(f"{cd}/OperationalData/1/0"),
        submodel_element=[
            model.SubmodelElementCollection("Hydraulics", [
                prop("InletPressure", None, f"{cd}/SuctionPressure", _DBL),
                prop("OutletPressure", None, f"{cd}/DischargePressure", _DBL),
                model.Property("FlowRate", _DBL,
                               semantic_id=ext(f"{cd}/VolumeFlow"),
                               qualifier=qualifiers({"tidm:classification": "important"})),
            ]),
            model.SubmodelElementCollection("Condition", [
                prop("BearingTemperature", None, f"{cd}/BearingTemperature",
                     _DBL),
            ]),
            model.SubmodelElementCollection("Drive", [
                prop("SpeedSetpoint", None, f"{cd}/SpeedSetpoint", _DBL),
            ]),
        ],
    )  # fmt: skip
    aid = aid_submodel(aid_id, [interface])
    aimc = aimc_submodel(
        aimc_id,
        aid_id,
        "InterfaceOPCUA",
        [
            ("InletPressure", op_id, ["Hydraulics", "InletPressure"]),
            ("OutletPressure", op_id, ["Hydraulics", "OutletPressure"]),
            ("FlowRate", op_id, ["Hydraulics", "FlowRate"]),
            ("BearingTemperature", op_id, ["Condition", "BearingTemperature"]),
            ("SpeedSetpoint", op_id, ["Drive", "SpeedSetpoint"]),
        ],
    )
    plate = nameplate(f"{base}/sm/pump-p101/nameplate", "Example Pumps GmbH", "CP-80-200 centrifugal pump",
                      "CP80-2024-0101", "2024")  # fmt: skip
    submodels = [plate, aid, aimc, operational]
    return [shell(f"{base}/aas/pump-p101", "CentrifugalPump_P101", asset_id, submodels), *submodels]


def cnc_spindle(
    broker: str = "mqtts://broker.plant.example.com:8883",
    asset_id: str = "https://example.com/ids/asset/7301_4410_9023_0007",
    topic: str = "plant1/line2/cnc-07/spindle/vibration",
    sparkplug_topic: str = "spBv1.0/Plant1/DDATA/EdgeNode-CNC07/Spindle",
    security: Sequence[str] = ("basic_sc",),
) -> list[model.Identifiable]:
    """CNC spindle on machine CNC-07: vibration as JSON over MQTT, drive data as Sparkplug B."""
    base = "https://example.com/ids"
    aid_id = f"{base}/sm/cnc-07-spindle/aid"
    json_iface = Interface(
        "InterfaceMQTT",
        "mqtt",
        "CNC-07 spindle vibration sensor",
        broker,
        security,
        [
            Affordance(
                "Vibration", type="object", href=topic, qos="1",
                tidm={"tidm:timestampPath": "$.ts", "tidm:category": "condition-monitoring"},
                members=[
                    Affordance("RMS", unit="mm/s", key="rms", title="Velocity RMS 10-1000 Hz"),
                    Affordance("Peak", unit="m/s2", key="peak", title="Acceleration peak"),
                    Affordance("Temperature", unit="degC", key="temp", title="Sensor housing temperature"),
                ],
            ),
        ],
    )  # fmt: skip
    spb_iface = Interface(
        "InterfaceSparkplugB",
        "mqtt",
        "CNC-07 edge node (Sparkplug B)",
        broker,
        security,
        [
            Affordance("SpindleSpeed", unit="rpm", href=sparkplug_topic, key="Spindle/Speed",
                       subprotocol="sparkplugb", qos="0"),
            Affordance("SpindleLoad", unit="%", href=sparkplug_topic, key="Spindle/Load",
                       subprotocol="sparkplugb", qos="0"),
            Affordance("FeedOverride", unit="%", href=sparkplug_topic, key="Override/Feed",
                       subprotocol="sparkplugb", qos="0", tidm={"tidm:category": "setpoint"}),
        ],
        content_type="application/octet-stream",
    )  # fmt: skip
    aid = aid_submodel(aid_id, [json_iface, spb_iface], version="1/0")
    plate = nameplate(f"{base}/sm/cnc-07-spindle/nameplate", "Example Machine Tools AG",
                      "HSK-A63 motor spindle 18 kW", "SP63-23-0007", "2023")  # fmt: skip
    return [shell(f"{base}/aas/cnc-07-spindle", "CNC07_Spindle", asset_id, [plate, aid]), plate, aid]


def energy_meter(
    broker: str = "mqtt://broker.plant.example.com:1883",
    asset_id: str = "https://example.com/ids/asset/3120_8801_5560_0007",
    topic: str = "site1/energy/em-7/measurements",
    frequency_topic: str = "site1/energy/em-7/frequency",
    security: Sequence[str] = ("nosec_sc",),
) -> list[model.Identifiable]:
    """Three-phase energy meter EM-7: one JSON message with all readings, frequency as plain text."""
    base = "https://example.com/ids"
    aid_id = f"{base}/sm/em-7/aid"
    iface = Interface(
        "InterfaceMQTT",
        "mqtt",
        "Energy meter EM-7 (MQTT)",
        broker,
        security,
        [
            Affordance(
                "Measurements", type="object", href=topic, qos="1",
                tidm={"tidm:timestampPath": "$.ts", "tidm:samplingInterval": 1000},
                members=[
                    Affordance("Voltage", unit="V", key="U_L1-N", title="Voltage L1-N"),
                    Affordance("Current", unit="A", key="I_L1", title="Current L1"),
                    Affordance("ActivePower", unit="kW", key="P_total", title="Total active power"),
                    Affordance("Energy", unit="kWh", key="E_import", title="Imported active energy"),
                ],
            ),
            Affordance("Frequency", unit="Hz", href=frequency_topic, content_type="text/plain", qos="0"),
        ],
    )  # fmt: skip
    aid = aid_submodel(aid_id, [iface], version="1/0")
    plate = nameplate(f"{base}/sm/em-7/nameplate", "Example Metering Ltd", "EM-3P-80 energy meter",
                      "EM3P-2022-0007", "2022")  # fmt: skip
    return [shell(f"{base}/aas/em-7", "EnergyMeter_EM7", asset_id, [plate, aid]), plate, aid]


EXAMPLES = {"pump": pump, "cnc_spindle": cnc_spindle, "energy_meter": energy_meter}


def main(argv: Sequence[str] = ()) -> int:
    """Write every example as .json, .xml and .aasx into `argv[0]` (default: beside this file)."""
    from tidm.semantics.aas import save_environment  # needs TIDM installed (pip install -e '.[aas]')

    out = Path(argv[0]) if argv else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, build in EXAMPLES.items():
        for suffix in ("json", "xml", "aasx"):
            save_environment(build(), out / f"{name}.{suffix}")
            print(f"wrote {out / f'{name}.{suffix}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
