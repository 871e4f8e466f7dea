"""AAS -> acquisition plan: what to collect, from where, how, and how sensitive it is.

The plan is read from the IDTA 02017 Asset Interfaces Description (AID) submodel of each shell:
every interface gives an endpoint, its security schemes and a protocol (from the interface's
supplemental semantic id, else the endpoint's URI scheme); every property affordance (and every
member of an object-typed one) gives one signal. Where an IDTA 02027 Asset Interfaces Mapping
Configuration (AIMC) maps an AID property to a submodel element, that element names the signal
(its idShort path) and gives its semantic id. An explicit YAML mapping file overrides both.

Things AID has no term for (sampling interval, deadband, classification level, category, JSONPath
of a signal inside a JSON payload, timestamp path) are read from qualifiers or extensions named
`tidm:samplingInterval`, `tidm:deadband`, `tidm:deadbandType`, `tidm:classification`,
`tidm:category`, `tidm:jsonPath`, `tidm:timestampPath` on the AIMC target, the AID property, its
form or its interface (first found wins), or from the mapping file.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import unquote

import yaml
from basyx.aas import model
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidm.semantics.aas import (
    AasEnvironment,
    element_path,
    find_child,
    load_environment,
    qualifier_value,
    semantic_id_of,
    supplemental_ids_of,
    value_text,
)
from tidm.semantics.classification import CATEGORY_DEFAULTS, Category, Level, infer_category
from tidm.semantics.errors import AasError, CatalogError

__all__ = [
    "AID_INTERFACE_SEMANTIC_ID",
    "AID_SUBMODEL_SEMANTIC_ID",
    "AIMC_SUBMODEL_SEMANTIC_ID",
    "AcquisitionPlan",
    "MappingFile",
    "MqttSignal",
    "OpcUaNode",
    "PlanProtocol",
    "PlanRow",
    "SkippedInterface",
    "build_plan",
    "load_mapping",
    "load_plan",
    "parse_node_id",
]

AID_SUBMODEL_SEMANTIC_ID = "https://admin-shell.io/idta/AssetInterfacesDescription/1/0/Submodel"
AID_INTERFACE_SEMANTIC_ID = "https://admin-shell.io/idta/AssetInterfacesDescription/1/0/Interface"
AIMC_SUBMODEL_SEMANTIC_ID = "https://admin-shell.io/idta/AssetInterfacesMappingConfiguration/1/0/Submodel"

# Any published version (1/0, 1/1, ...) is read the same way: later versions only add bindings.
_AID_SUBMODEL = re.compile(r"^https?://admin-shell\.io/idta/AssetInterfacesDescription/\d+/\d+/Submodel/?$")
_AID_INTERFACE = re.compile(r"^https?://admin-shell\.io/idta/AssetInterfacesDescription/\d+/\d+/Interface/?$")
_AIMC_SUBMODEL = re.compile(
    r"^https?://admin-shell\.io/idta/AssetInterfacesMappingConfiguration/\d+/\d+/Submodel/?$"
)
_WOT_TD = "https://www.w3.org/2019/wot/td"


class PlanProtocol(enum.StrEnum):
    """Protocols the edge agent collects from."""

    OPCUA = "opcua"
    MQTT = "mqtt"
    HTTP = "http"


_PROTOCOL_IDS = {
    "http://opcfoundation.org/ua/wot-binding": PlanProtocol.OPCUA,
    "https://www.w3.org/2019/wot/opcua": PlanProtocol.OPCUA,
    "http://www.w3.org/2011/mqtt": PlanProtocol.MQTT,
    "https://www.w3.org/2019/wot/mqtt": PlanProtocol.MQTT,
    "http://www.w3.org/2011/http": PlanProtocol.HTTP,
    "https://www.w3.org/2019/wot/http": PlanProtocol.HTTP,
}
# Bindings AID defines but the agent does not speak: reported as skipped, not as errors.
_UNSUPPORTED_IDS = {
    "http://www.w3.org/2011/modbus": "modbus",
    "https://www.w3.org/2019/wot/modbus": "modbus",
    "http://www.w3.org/2022/bacnet": "bacnet",
    "https://admin-shell.io/idta/assetinterfacesdescription/1/1/io-link": "io-link",
}
_SCHEMES = {
    "opc.tcp": PlanProtocol.OPCUA,
    "mqtt": PlanProtocol.MQTT,
    "mqtts": PlanProtocol.MQTT,
    "tcp": PlanProtocol.MQTT,
    "ssl": PlanProtocol.MQTT,
    "http": PlanProtocol.HTTP,
    "https": PlanProtocol.HTTP,
}
_UNSUPPORTED_SCHEMES = {"modbus+tcp": "modbus", "modbus+rtu": "modbus", "bacnet": "bacnet"}

_Q_LEVEL = ("tidm:classification", "tidm:level")
_Q_CATEGORY = ("tidm:category",)
_Q_SAMPLING = ("tidm:samplingInterval", "tidm:samplingIntervalMs")
_Q_DEADBAND = ("tidm:deadband",)
_Q_DEADBAND_TYPE = ("tidm:deadbandType",)
_Q_JSON_PATH = ("tidm:jsonPath",)
_Q_TS_PATH = ("tidm:timestampPath",)

_SPARKPLUG = {"sparkplugb", "sparkplug-b", "sparkplug_b", "spbv1.0", "sparkplug"}
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_NODE_ID = re.compile(r"^(?:(?:nsu=(?P<nsu>[^;]*)|ns=(?P<ns>\d+));)?(?P<kind>[isgb])=(?P<ident>.*)$", re.S)

_XSD_TYPES = {
    "double": "number",
    "float": "number",
    "decimal": "number",
    "boolean": "boolean",
    "string": "string",
    "anyuri": "string",
    "datetime": "string",
}
_JSON_TYPES = {
    "number": "number",
    "float": "number",
    "double": "number",
    "integer": "integer",
    "int": "integer",
    "boolean": "boolean",
    "bool": "boolean",
    "string": "string",
    "object": "object",
    "array": "array",
    "null": "null",
}


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One signal to collect. Protocol-specific fields are None where they do not apply."""

    asset_id: str
    signal: str
    protocol: PlanProtocol
    endpoint: str
    security: tuple[str, ...]
    semantic_id: str | None = None
    unit: str | None = None
    data_type: str | None = None
    node_id: str | None = None  # OPC UA ExpandedNodeId "nsu=<uri>;s=<id>"
    topic: str | None = None  # MQTT
    payload: str | None = None  # MQTT: json | sparkplug_b | text
    json_path: str | None = None  # MQTT JSON: where the value sits in the payload
    metric: str | None = None  # MQTT Sparkplug B: the metric name
    ts_path: str | None = None  # MQTT JSON: where the source timestamp sits, if in the payload
    qos: int | None = None
    url: str | None = None  # HTTP
    method: str | None = None
    sampling_interval_ms: float | None = None
    deadband: float | None = None
    deadband_type: str | None = None  # absolute | percent
    observable: bool | None = None
    level: Level = Level.GENERAL
    category: str | None = None
    interface: str = ""
    source: str = ""  # AID element path of the property this row comes from
    mapped_by: str = "aid"  # aid | aimc | mapping

    @property
    def address(self) -> str:
        """Where the signal is on its endpoint, in one string (for tables)."""
        if self.protocol is PlanProtocol.OPCUA:
            return self.node_id or ""
        if self.protocol is PlanProtocol.MQTT:
            detail = self.metric if self.payload == "sparkplug_b" else self.json_path
            return f"{self.topic} {detail}" if detail else str(self.topic)
        return f"{self.method or 'GET'} {self.url}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (enums as their values, security as a list)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Level):
                value = value.gbt
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRow:
        """The inverse of `to_dict`."""
        try:
            values = dict(data)
            values["protocol"] = PlanProtocol(values["protocol"])
            values["level"] = Level.parse(values.get("level", "general"))
            values["security"] = tuple(values.get("security") or ())
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"invalid plan row {dict(data)!r}: {exc}"
            raise CatalogError(msg) from exc


class OpcUaNode(NamedTuple):
    """An OPC UA row in the shape the agent's `PlannedNode` takes, plus its monitoring settings."""

    asset_id: str
    signal: str
    node_id: str
    sampling_interval_ms: float | None
    deadband: float | None
    deadband_type: str | None
    observable: bool | None


class MqttSignal(NamedTuple):
    """An MQTT row: topic and how to find the value in the payload."""

    asset_id: str
    signal: str
    topic: str
    payload: str
    json_path: str | None
    metric: str | None
    ts_path: str | None
    qos: int | None


@dataclass(frozen=True, slots=True)
class SkippedInterface:
    """An AID interface the agent cannot collect from (a binding it does not speak)."""

    asset_id: str
    interface: str
    protocol: str
    reason: str


@dataclass(frozen=True)
class AcquisitionPlan:
    """Every signal of every shell in one AAS environment, in document order."""

    rows: tuple[PlanRow, ...]
    source: str = ""
    skipped: tuple[SkippedInterface, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PlanRow]:
        return iter(self.rows)

    def endpoints(self, protocol: PlanProtocol | str | None = None) -> list[str]:
        """The distinct endpoints (of one protocol), sorted."""
        wanted = PlanProtocol(protocol) if protocol is not None else None
        return sorted({r.endpoint for r in self.rows if wanted is None or r.protocol is wanted})

    def rows_for(self, protocol: PlanProtocol | str, endpoint: str | None = None) -> list[PlanRow]:
        """The rows of one protocol (and endpoint)."""
        wanted = PlanProtocol(protocol)
        return [r for r in self.rows if r.protocol is wanted and (endpoint is None or r.endpoint == endpoint)]

    def opcua_nodes(self, endpoint: str | None = None) -> list[OpcUaNode]:
        """OPC UA rows as plain fields for `PlannedNode(asset_id, signal, node_id)` on the agent side."""
        return [
            OpcUaNode(
                r.asset_id,
                r.signal,
                str(r.node_id),
                r.sampling_interval_ms,
                r.deadband,
                r.deadband_type,
                r.observable,
            )
            for r in self.rows_for(PlanProtocol.OPCUA, endpoint)
        ]

    def mqtt_signals(self, endpoint: str | None = None) -> list[MqttSignal]:
        """MQTT rows as plain fields for the agent's MQTT source."""
        return [
            MqttSignal(
                r.asset_id,
                r.signal,
                str(r.topic),
                r.payload or "json",
                r.json_path,
                r.metric,
                r.ts_path,
                r.qos,
            )
            for r in self.rows_for(PlanProtocol.MQTT, endpoint)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: source, rows, skipped interfaces."""
        return {
            "source": self.source,
            "rows": [r.to_dict() for r in self.rows],
            "skipped": [
                {"asset_id": s.asset_id, "interface": s.interface, "protocol": s.protocol, "reason": s.reason}
                for s in self.skipped
            ],
        }

    def to_json(self) -> str:
        """Stable JSON (sorted keys, two-space indent) for review and diffs."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AcquisitionPlan:
        """Read back what `to_json` wrote."""
        try:
            data = json.loads(text)
            rows = tuple(PlanRow.from_dict(r) for r in data["rows"])
            skipped = tuple(SkippedInterface(**s) for s in data.get("skipped", []))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            msg = f"invalid acquisition plan JSON: {exc}"
            raise CatalogError(msg) from exc
        return cls(rows=rows, source=str(data.get("source", "")), skipped=skipped)


# ---------------------------------------------------------------------------------------------
# The explicit mapping file (YAML): the fallback (and override) for AIMC.


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _parse_level_field(value: Any) -> Level | None:
    # pydantic reports ValueError with the field's location; CatalogError would escape it.
    if value is None:
        return None
    try:
        return Level.parse(value)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None


class MappingDefaults(_Frozen):
    """Values for every row that neither the AAS nor a mapping entry sets."""

    sampling_interval_ms: float | None = Field(default=None, ge=0)
    deadband: float | None = Field(default=None, ge=0)
    deadband_type: Literal["absolute", "percent"] | None = None
    level: Level | None = None
    category: Category | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return _parse_level_field(value)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any) -> Any:
        return value.strip().lower().replace("_", "-") if isinstance(value, str) else value


class MappingEntry(_Frozen):
    """One AID property (`Interface/property` or `property`, members as `property.member`) and what to set."""

    property: str = Field(min_length=1)
    asset_id: str | None = None
    signal: str | None = Field(default=None, min_length=1)
    semantic_id: str | None = None
    unit: str | None = None
    data_type: str | None = None
    level: Level | None = None
    category: Category | None = None
    sampling_interval_ms: float | None = Field(default=None, ge=0)
    deadband: float | None = Field(default=None, ge=0)
    deadband_type: Literal["absolute", "percent"] | None = None
    json_path: str | None = None
    ts_path: str | None = None
    metric: str | None = None
    exclude: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return _parse_level_field(value)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any) -> Any:
        return value.strip().lower().replace("_", "-") if isinstance(value, str) else value


class MappingFile(_Frozen):
    """An explicit AID-property -> signal mapping for AAS files without (or overriding) an AIMC."""

    version: Literal[1] = 1
    only_mapped: bool = False
    namespace_uris: dict[int, str] = Field(default_factory=dict)
    defaults: MappingDefaults = MappingDefaults()
    signals: list[MappingEntry] = Field(default_factory=list)
    source: str = ""


def load_mapping(path: Path | str) -> MappingFile:
    """Read and validate a YAML mapping file; errors name the file and the field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read mapping file: {exc.strerror or exc}"
        raise AasError(msg, file=source) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        msg = f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
        raise AasError(msg, file=source, path=where) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = "the mapping file must be a YAML mapping (version, defaults, signals)"
        raise AasError(msg, file=source)
    try:
        return MappingFile.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _loc(first["loc"])
        msg = f"{first['msg']} (value {first.get('input')!r})"
        raise AasError(msg, file=source, path=where) from exc
    except CatalogError as exc:  # pragma: no cover - pydantic wraps validator errors as ValidationError
        raise AasError(str(exc), file=source) from exc


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------------------------------------
# Node ids


def parse_node_id(text: str, namespace_uris: Mapping[int, str] | None = None) -> str:
    """Validate an OPC UA node id and return it as an ExpandedNodeId (`nsu=<uri>;s=<id>`).

    Namespace indices change when a server restarts, so `ns=<n>` (n > 0) is accepted only when
    `namespace_uris` says which URI the index stands for; `ns=0` ids are returned without prefix.
    Raises ValueError with the reason.
    """
    match = _NODE_ID.match(text.strip())
    if match is None:
        msg = (
            f"{text!r} is not an OPC UA node id "
            "(expected 'nsu=<namespace uri>;s=<id>', or ';i=', ';g=', ';b=' identifiers)"
        )
        raise ValueError(msg)
    nsu, ns, kind, ident = match.group("nsu"), match.group("ns"), match.group("kind"), match.group("ident")
    if kind == "i" and not (ident.isdigit() and int(ident) < 2**32):
        msg = f"{text!r}: a numeric identifier must be an integer 0..4294967295"
        raise ValueError(msg)
    if kind == "g" and not _GUID.match(ident):
        msg = f"{text!r}: a GUID identifier must look like 72962b91-fa75-4ae6-8d28-b404dc7daf63"
        raise ValueError(msg)
    if kind == "b" and not _BASE64.match(ident):
        msg = f"{text!r}: an opaque identifier must be base64"
        raise ValueError(msg)
    if kind == "s" and not ident:
        msg = f"{text!r}: the string identifier is empty"
        raise ValueError(msg)
    if nsu is not None:
        if not nsu or any(c.isspace() for c in nsu):
            msg = f"{text!r}: the namespace URI must be non-empty and contain no whitespace"
            raise ValueError(msg)
        return f"nsu={nsu};{kind}={ident}"
    index = int(ns) if ns is not None else 0
    if index == 0:
        return f"{kind}={ident}"
    uri = (namespace_uris or {}).get(index)
    if uri is None:
        msg = (
            f"{text!r} uses namespace index {index}, which changes when the server restarts: write "
            f"'nsu=<namespace uri>;{kind}=...' or give namespace_uris in the mapping file"
        )
        raise ValueError(msg)
    return f"nsu={uri};{kind}={ident}"


# ---------------------------------------------------------------------------------------------
# Building the plan


@dataclass
class _Interface:
    element: model.SubmodelElementCollection
    path: str
    protocol: PlanProtocol
    base: str
    content_type: str | None
    security: tuple[str, ...]


@dataclass
class _Leaf:
    """One signal-bearing element of an AID property: the property itself or a member of it."""

    top: model.SubmodelElementCollection  # the property affordance (has the forms)
    element: model.SubmodelElementCollection  # the leaf (top itself, or a nested member)
    local_name: str  # "property" or "property.member"
    keys: tuple[str, ...]  # payload keys from the top down to the leaf (empty for the top itself)
    chain: list[model.Referable] = field(default_factory=list)  # leaf .. top: qualifier lookup order


@dataclass(frozen=True)
class _Sink:
    element: model.Referable
    signal: str
    relation: str


def load_plan(aas: Path | str, mapping: Path | str | None = None) -> AcquisitionPlan:
    """Load an AAS file (and optional YAML mapping file) and build its acquisition plan."""
    env = load_environment(aas)
    return build_plan(env, load_mapping(mapping) if mapping is not None else None)


def build_plan(env: AasEnvironment, mapping: MappingFile | None = None) -> AcquisitionPlan:
    """Build the acquisition plan of every AID submodel in `env`; errors name the element path."""
    mapping = mapping or MappingFile()
    sinks = _aimc_sinks(env)
    rows: list[PlanRow] = []
    skipped: list[SkippedInterface] = []
    used_entries: set[int] = set()
    for submodel in env.submodels():
        if not _AID_SUBMODEL.match(semantic_id_of(submodel) or ""):
            continue
        shell = env.shell_of(submodel)
        asset_id = shell.asset_information.global_asset_id
        if not asset_id:
            msg = f"shell {shell.id!r} has no globalAssetId (the asset id every sample is keyed by)"
            raise AasError(msg, file=env.source, path=element_path(submodel))
        for element in submodel.submodel_element:
            if not isinstance(element, model.SubmodelElementCollection) or not _is_interface(element):
                continue
            iface = _interface(env, element, asset_id, skipped)
            if iface is None:
                continue
            for leaf in _leaves(env, iface):
                row = _row(env, iface, leaf, asset_id, sinks, mapping)
                entry_index = _match_entry(mapping, asset_id, iface, leaf)
                if entry_index is not None:
                    used_entries.add(entry_index)
                    entry = mapping.signals[entry_index]
                    if entry.exclude:
                        continue
                    row = _apply_entry(row, entry)
                elif mapping.only_mapped and row.mapped_by == "aid":
                    continue
                rows.append(row)
    _check_unused(mapping, used_entries)
    _check_duplicates(env, rows)
    if not rows and not skipped:
        msg = f"no Asset Interfaces Description submodel with properties found ({AID_SUBMODEL_SEMANTIC_ID})"
        raise AasError(msg, file=env.source)
    return AcquisitionPlan(rows=tuple(rows), source=env.source, skipped=tuple(skipped))


def _is_interface(element: model.SubmodelElementCollection) -> bool:
    sid = semantic_id_of(element)
    if sid is not None:
        return bool(_AID_INTERFACE.match(sid))
    return find_child(element, "EndpointMetadata") is not None


def _fail(env: AasEnvironment, message: str, where: model.Referable | str) -> AasError:
    path = where if isinstance(where, str) else element_path(where)
    return AasError(message, file=env.source, path=path)


def _interface(
    env: AasEnvironment,
    element: model.SubmodelElementCollection,
    asset_id: str,
    skipped: list[SkippedInterface],
) -> _Interface | None:
    path = element_path(element)
    metadata = find_child(element, "EndpointMetadata")
    if not isinstance(metadata, model.SubmodelElementCollection):
        raise _fail(
            env, "missing EndpointMetadata (the endpoint of the interface)", f"{path}/EndpointMetadata"
        )
    base = value_text(find_child(metadata, "base"))
    if base is None:
        raise _fail(env, "missing base (the endpoint URI of the interface)", f"{path}/EndpointMetadata/base")
    protocol = _protocol(env, element, base, path, asset_id, skipped)
    if protocol is None:
        return None
    security = _security(env, metadata, find_child(metadata, "security"), required=True)
    content_type = value_text(find_child(metadata, "contentType"))
    return _Interface(element, path, protocol, base.rstrip("/"), content_type, security)


def _protocol(
    env: AasEnvironment,
    element: model.SubmodelElementCollection,
    base: str,
    path: str,
    asset_id: str,
    skipped: list[SkippedInterface],
) -> PlanProtocol | None:
    declared: list[PlanProtocol] = []
    for sid in supplemental_ids_of(element):
        key = sid.rstrip("/").lower()
        if key == _WOT_TD:
            continue
        if key in _PROTOCOL_IDS:
            declared.append(_PROTOCOL_IDS[key])
        elif key in _UNSUPPORTED_IDS:
            reason = f"the {_UNSUPPORTED_IDS[key]} binding is not supported by the agent"
            skipped.append(SkippedInterface(asset_id, element.id_short or "", _UNSUPPORTED_IDS[key], reason))
            return None
        else:
            msg = (
                f"unknown protocol binding {sid!r} (supported: OPC UA "
                "'http://opcfoundation.org/UA/WoT-Binding/', MQTT 'http://www.w3.org/2011/mqtt', "
                "HTTP 'http://www.w3.org/2011/http')"
            )
            raise _fail(env, msg, f"{path}/supplementalSemanticId")
    scheme = base.split("://", 1)[0].lower() if "://" in base else ""
    from_scheme = _SCHEMES.get(scheme)
    if not declared:
        if scheme in _UNSUPPORTED_SCHEMES:
            reason = f"the {_UNSUPPORTED_SCHEMES[scheme]} binding is not supported by the agent"
            skipped.append(
                SkippedInterface(asset_id, element.id_short or "", _UNSUPPORTED_SCHEMES[scheme], reason)
            )
            return None
        if from_scheme is None:
            msg = (
                f"unknown protocol: no protocol supplementalSemanticId and the base URI scheme {scheme!r} "
                "is not opc.tcp, mqtt(s) or http(s)"
            )
            raise _fail(env, msg, f"{path}/EndpointMetadata/base")
        return from_scheme
    protocol = declared[0]
    if from_scheme is not None and from_scheme is not protocol:
        msg = f"the interface is declared {protocol.value} but its base URI {base!r} is {from_scheme.value}"
        raise _fail(env, msg, f"{path}/EndpointMetadata/base")
    return protocol


def _security(
    env: AasEnvironment,
    metadata: model.SubmodelElementCollection,
    holder: model.SubmodelElement | None,
    *,
    required: bool,
) -> tuple[str, ...]:
    if holder is None:
        if required:
            msg = "missing security (list the schemes of securityDefinitions to use; nosec_sc for none)"
            raise _fail(env, msg, f"{element_path(metadata)}/security")
        return ()
    if not isinstance(holder, model.SubmodelElementList | model.SubmodelElementCollection):
        raise _fail(env, "security must be a list of references into securityDefinitions", holder)
    definitions = find_child(metadata, "securityDefinitions")
    names: list[str] = []
    for item in holder.value:
        if not isinstance(item, model.ReferenceElement) or item.value is None:
            raise _fail(env, "expected a ReferenceElement to a security definition", item)
        name = _security_name(env, item, item.value, definitions)
        names.append(name)
    if required and not names:
        raise _fail(env, "security is empty (use nosec_sc to state 'no security')", holder)
    return tuple(names)


def _security_name(
    env: AasEnvironment,
    at: model.ReferenceElement,
    reference: model.Reference,
    definitions: model.SubmodelElement | None,
) -> str:
    last = str(reference.key[-1].value)
    # Template-derived AIDs often carry references that do not resolve (placeholder submodel ids);
    # a last key naming one of this interface's definitions says enough.
    if isinstance(definitions, model.SubmodelElementCollection) and find_child(definitions, last) is not None:
        return last
    target = env.resolve(reference, at=element_path(at))
    if cast(object, target.parent) is not definitions:
        msg = f"security reference points to {element_path(target)!r}, not into securityDefinitions"
        raise _fail(env, msg, at)
    return str(target.id_short)


def _leaves(env: AasEnvironment, iface: _Interface) -> list[_Leaf]:
    interaction = find_child(iface.element, "InteractionMetadata")
    if interaction is None:
        return []
    properties = find_child(interaction, "properties")
    if not isinstance(properties, model.SubmodelElementCollection):
        return []
    leaves: list[_Leaf] = []
    for prop in properties.value:
        if not isinstance(prop, model.SubmodelElementCollection):
            raise _fail(env, "a property affordance must be a SubmodelElementCollection", prop)
        name = str(prop.id_short)
        nested = find_child(prop, "properties")
        kind = (value_text(find_child(prop, "type")) or "").lower()
        if (
            iface.protocol is PlanProtocol.MQTT
            and kind == "object"
            and isinstance(nested, model.SubmodelElementCollection)
        ):
            leaves += _members(env, prop, nested, name, (), [prop, iface.element])
        else:
            leaves.append(_Leaf(prop, prop, name, (), [prop, iface.element]))
    return leaves


def _members(
    env: AasEnvironment,
    top: model.SubmodelElementCollection,
    holder: model.SubmodelElementCollection,
    prefix: str,
    keys: tuple[str, ...],
    chain: list[model.Referable],
) -> list[_Leaf]:
    out: list[_Leaf] = []
    for member in holder.value:
        if not isinstance(member, model.SubmodelElementCollection):
            raise _fail(env, "an object member must be a SubmodelElementCollection", member)
        key = value_text(find_child(member, "key")) or str(member.id_short)
        name = f"{prefix}.{member.id_short}"
        here = [member, *chain]
        nested = find_child(member, "properties")
        kind = (value_text(find_child(member, "type")) or "").lower()
        if kind == "object" and isinstance(nested, model.SubmodelElementCollection):
            out += _members(env, top, nested, name, (*keys, key), here)
        else:
            out.append(_Leaf(top, member, name, (*keys, key), here))
    return out


def _aimc_sinks(env: AasEnvironment) -> dict[str, _Sink]:
    """AID element path -> the element an AIMC maps it to."""
    sinks: dict[str, _Sink] = {}
    for submodel in env.submodels():
        if not _AIMC_SUBMODEL.match(semantic_id_of(submodel) or ""):
            continue
        configs = find_child(submodel, "MappingConfigurations")
        if configs is None:
            raise _fail(
                env, "missing MappingConfigurations", f"{element_path(submodel)}/MappingConfigurations"
            )
        if not isinstance(configs, model.SubmodelElementList | model.SubmodelElementCollection):
            raise _fail(env, "MappingConfigurations must be a list", configs)
        for config in configs.value:
            if not isinstance(config, model.SubmodelElementCollection):
                raise _fail(env, "a mapping configuration must be a SubmodelElementCollection", config)
            _aimc_config(env, config, sinks)
    return sinks


def _aimc_config(
    env: AasEnvironment, config: model.SubmodelElementCollection, sinks: dict[str, _Sink]
) -> None:
    iface_ref = find_child(config, "InterfaceReference")
    if not isinstance(iface_ref, model.ReferenceElement) or iface_ref.value is None:
        raise _fail(
            env,
            "missing InterfaceReference (the AID interface it maps)",
            f"{element_path(config)}/InterfaceReference",
        )
    interface = env.resolve(iface_ref.value, at=element_path(iface_ref))
    if not isinstance(interface, model.SubmodelElementCollection) or not _is_interface(interface):
        msg = f"InterfaceReference points to {element_path(interface)!r}, which is not an AID interface"
        raise _fail(env, msg, iface_ref)
    relations = find_child(config, "MappingSourceSinkRelations")
    if not isinstance(relations, model.SubmodelElementList | model.SubmodelElementCollection):
        raise _fail(
            env, "missing MappingSourceSinkRelations", f"{element_path(config)}/MappingSourceSinkRelations"
        )
    iface_path = element_path(interface)
    for relation in relations.value:
        if not isinstance(relation, model.RelationshipElement):
            raise _fail(env, "a mapping relation must be a RelationshipElement", relation)
        at = element_path(relation)
        if relation.first is None or relation.second is None:
            raise _fail(
                env, "a mapping relation needs both first (AID property) and second (target)", relation
            )
        source = env.resolve(relation.first, at=f"{at}/first")
        target = env.resolve(relation.second, at=f"{at}/second")
        source_path = element_path(source)
        if not source_path.startswith(f"{iface_path}/"):
            msg = f"first points to {source_path!r}, which is not a property of the interface {iface_path!r}"
            raise _fail(env, msg, f"{at}/first")
        if source_path in sinks:
            msg = f"{source_path!r} is mapped twice (also by {sinks[source_path].relation!r})"
            raise _fail(env, msg, relation)
        if isinstance(target, model.Identifiable):
            raise _fail(env, "second must point to a submodel element, not a whole submodel", f"{at}/second")
        sinks[source_path] = _Sink(target, target.get_id_short_path(), at)


def _row(
    env: AasEnvironment,
    iface: _Interface,
    leaf: _Leaf,
    asset_id: str,
    sinks: Mapping[str, _Sink],
    mapping: MappingFile,
) -> PlanRow:
    defaults = mapping.defaults
    forms = find_child(leaf.top, "forms")
    if not isinstance(forms, model.SubmodelElementCollection):
        raise _fail(env, "missing forms (how to reach the property)", f"{element_path(leaf.top)}/forms")
    href_element = find_child(forms, "href")
    href = value_text(href_element)
    if href is None:
        raise _fail(
            env, "missing href (where the property is on the endpoint)", f"{element_path(forms)}/href"
        )
    href_path = element_path(href_element) if href_element is not None else ""
    metadata = find_child(iface.element, "EndpointMetadata")
    if not isinstance(metadata, model.SubmodelElementCollection):  # pragma: no cover - checked in _interface
        raise _fail(env, "missing EndpointMetadata", iface.path)
    form_security = _security(env, metadata, find_child(forms, "security"), required=False)
    security = form_security or iface.security
    sink = sinks.get(element_path(leaf.element))
    chain: list[model.Referable] = ([sink.element] if sink else []) + [
        *leaf.chain[:-1],
        forms,
        leaf.chain[-1],
    ]
    # Lookup order: AIMC target, leaf, its parents, the form, the interface.
    lookup = [c for c in chain if isinstance(c, model.Referable)]

    def q(names: tuple[str, ...]) -> tuple[str | None, model.Referable | None]:
        for element in lookup:
            found = qualifier_value(element, names)
            if found is not None:
                return found, element
        return None, None

    data_type = _json_type(value_text(find_child(leaf.element, "type")))
    if data_type is None and sink is not None and isinstance(sink.element, model.Property):
        data_type = _xsd_type(sink.element.value_type)
    unit = value_text(find_child(leaf.element, "unit"))
    semantic_id = _value_semantics(leaf.element)
    if sink is not None:
        semantic_id = semantic_id_of(sink.element) if isinstance(sink.element, model.HasSemantics) else None
        semantic_id = semantic_id or _value_semantics(leaf.element)
    if unit is None and semantic_id is not None:
        unit = _concept_unit(env, semantic_id)

    category_text, category_at = q(_Q_CATEGORY)
    category = _category(env, category_text, category_at, leaf.local_name)
    level_text, level_at = q(_Q_LEVEL)
    level = _level(env, level_text, level_at)
    if level is None:
        if category is None and defaults.level is not None:
            level = defaults.level
        else:
            level = _default_level(category or defaults.category)
    category = category or defaults.category
    sampling = _number(env, *q(_Q_SAMPLING), "sampling interval (ms)")
    deadband = _number(env, *q(_Q_DEADBAND), "deadband")
    deadband_type_text, deadband_type_at = q(_Q_DEADBAND_TYPE)
    deadband_type = _deadband_type(env, deadband_type_text, deadband_type_at)
    if sampling is None:
        sampling = defaults.sampling_interval_ms
    if deadband is None:
        deadband = defaults.deadband
    if deadband_type is None:
        deadband_type = defaults.deadband_type
    observable_text = value_text(find_child(leaf.top, "observable"))
    observable = None if observable_text is None else observable_text.lower() in ("true", "1")

    row = PlanRow(
        asset_id=asset_id,
        signal=sink.signal if sink else leaf.local_name,
        protocol=iface.protocol,
        endpoint=iface.base,
        security=security,
        semantic_id=semantic_id,
        unit=unit,
        data_type=data_type,
        sampling_interval_ms=sampling,
        deadband=deadband,
        deadband_type=deadband_type,
        observable=observable,
        level=level,
        category=category.value if category else None,
        interface=str(iface.element.id_short),
        source=element_path(leaf.element),
        mapped_by="aimc" if sink else "aid",
    )
    if iface.protocol is PlanProtocol.OPCUA:
        endpoint, node_id = _opcua_address(env, iface.base, href, href_path, mapping.namespace_uris)
        return replace(row, endpoint=endpoint, node_id=node_id)
    if iface.protocol is PlanProtocol.MQTT:
        content_type = value_text(find_child(forms, "contentType")) or iface.content_type
        subprotocol = value_text(find_child(forms, "subprotocol"))
        payload = _payload(content_type, subprotocol)
        endpoint, topic = _mqtt_address(env, iface.base, href, href_path)
        json_path, _ = q(_Q_JSON_PATH)
        ts_path, _ = q(_Q_TS_PATH)
        metric = None
        if payload == "sparkplug_b":
            json_path = None
            metric = (
                leaf.keys[-1]
                if leaf.keys
                else value_text(find_child(leaf.top, "key")) or str(leaf.top.id_short)
            )
        elif payload == "json":
            json_path = json_path or _json_path(leaf.keys)
        else:
            json_path = None
        qos = _qos(env, find_child(forms, "mqv_qos"))
        return replace(
            row, endpoint=endpoint, topic=topic, payload=payload, json_path=json_path,
            metric=metric, ts_path=ts_path, qos=qos,
        )  # fmt: skip
    method = value_text(find_child(forms, "htv_methodName")) or "GET"
    url = href if _ABSOLUTE.match(href) else f"{iface.base}/{href.lstrip('/')}"
    return replace(row, url=url, method=method.upper())


def _opcua_address(
    env: AasEnvironment, base: str, href: str, href_path: str, namespace_uris: Mapping[int, str]
) -> tuple[str, str]:
    endpoint = base
    rest = href
    if _ABSOLUTE.match(href):
        endpoint, _, query = href.partition("?")
        endpoint = endpoint.rstrip("/")
        rest = f"?{query}" if query else ""
    query = rest.split("?", 1)[1] if "?" in rest else ""
    node_text = None
    for part in query.split("&"):
        if part.startswith("id="):
            node_text = unquote(part[3:])
    if node_text is None:
        msg = f"href {href!r} has no node id (expected '/?id=nsu=<namespace uri>;s=<identifier>')"
        raise _fail(env, msg, href_path)
    try:
        return endpoint, parse_node_id(node_text, namespace_uris)
    except ValueError as exc:
        raise _fail(env, f"bad node id: {exc}", href_path) from exc


def _mqtt_address(env: AasEnvironment, base: str, href: str, href_path: str) -> tuple[str, str]:
    endpoint = base
    if _ABSOLUTE.match(href):
        scheme, _, rest = href.partition("://")
        netloc, _, path = rest.partition("/")
        endpoint, topic = f"{scheme}://{netloc}", path
    elif href.startswith("./"):
        # AID writes a topic with a leading '/' as './/topic' so it is not taken as a base path.
        topic = href[2:]
    else:
        topic = href[1:] if href.startswith("/") else href
    topic = unquote(topic)
    if not topic:
        raise _fail(env, f"href {href!r} gives an empty MQTT topic", href_path)
    if "#" in topic[:-1] or ("#" in topic and not topic.endswith("#")):
        raise _fail(env, f"MQTT topic {topic!r}: '#' may only be the last level", href_path)
    return endpoint, topic


def _payload(content_type: str | None, subprotocol: str | None) -> str:
    sub = (subprotocol or "").strip().lower()
    ctype = (content_type or "").strip().lower()
    if sub in _SPARKPLUG or "sparkplug" in ctype:
        return "sparkplug_b"
    if ctype.startswith("text/plain"):
        return "text"
    return "json"


def _json_path(keys: tuple[str, ...]) -> str:
    path = "$"
    for key in keys:
        if _IDENT.match(key):
            path += f".{key}"
        else:
            escaped = key.replace("\\", "\\\\").replace("'", "\\'")
            path += f"['{escaped}']"
    return path


def _qos(env: AasEnvironment, element: model.SubmodelElement | None) -> int | None:
    text = value_text(element)
    if text is None:
        return None
    aliases = {"atmostonce": "0", "atleastonce": "1", "exactlyonce": "2"}
    text = aliases.get(text.lower(), text)
    if text not in ("0", "1", "2"):
        raise _fail(env, f"mqv_qos must be 0, 1 or 2, got {text!r}", element or "")
    return int(text)


def _json_type(text: str | None) -> str | None:
    if text is None:
        return None
    return _JSON_TYPES.get(text.strip().lower(), text.strip().lower())


def _xsd_type(value_type: Any) -> str | None:
    name = getattr(value_type, "__name__", str(value_type)).lower()
    if name in _XSD_TYPES:
        return _XSD_TYPES[name]
    if any(word in name for word in ("int", "long", "short", "byte")):
        return "integer"
    return None


def _value_semantics(element: model.SubmodelElementCollection) -> str | None:
    ref = find_child(element, "valueSemantics")
    if isinstance(ref, model.ReferenceElement) and ref.value is not None and ref.value.key:
        return str(ref.value.key[-1].value)
    return None


def _concept_unit(env: AasEnvironment, semantic_id: str) -> str | None:
    concept = env.concept_description(semantic_id)
    if concept is None:
        return None
    for spec in concept.embedded_data_specifications:
        content = spec.data_specification_content
        unit = getattr(content, "unit", None)
        if unit:
            return str(unit)
    return None


def _category(
    env: AasEnvironment, text: str | None, at: model.Referable | None, name: str
) -> Category | None:
    if text is not None:
        try:
            return Category(text.strip().lower().replace("_", "-"))
        except ValueError as exc:
            known = ", ".join(c.value for c in Category)
            raise _fail(env, f"unknown tidm:category {text!r} (known: {known})", at or "") from exc
    return infer_category(name)


def _default_level(category: Category | None) -> Level:
    return CATEGORY_DEFAULTS[category] if category is not None else Level.GENERAL


def _level(env: AasEnvironment, text: str | None, at: model.Referable | None) -> Level | None:
    if text is None:
        return None
    try:
        return Level.parse(text)
    except CatalogError as exc:
        raise _fail(env, str(exc), at or "") from exc


def _number(env: AasEnvironment, text: str | None, at: model.Referable | None, what: str) -> float | None:
    if text is None:
        return None
    raw = text.strip().lower()
    scale = 1.0
    if raw.endswith("ms"):
        raw = raw[:-2]
    elif raw.endswith("s") and what.startswith("sampling"):
        raw, scale = raw[:-1], 1000.0
    try:
        value = float(raw) * scale
    except ValueError as exc:
        raise _fail(env, f"{what} must be a number, got {text!r}", at or "") from exc
    if not value >= 0 or value == float("inf"):
        raise _fail(env, f"{what} must be a finite number >= 0, got {text!r}", at or "")
    return value


def _deadband_type(env: AasEnvironment, text: str | None, at: model.Referable | None) -> str | None:
    if text is None:
        return None
    value = text.strip().lower()
    if value not in ("absolute", "percent"):
        raise _fail(env, f"tidm:deadbandType must be absolute or percent, got {text!r}", at or "")
    return value


def _match_entry(mapping: MappingFile, asset_id: str, iface: _Interface, leaf: _Leaf) -> int | None:
    qualified = f"{iface.element.id_short}/{leaf.local_name}"
    for index, entry in enumerate(mapping.signals):
        if entry.asset_id is not None and entry.asset_id != asset_id:
            continue
        if entry.property in (qualified, leaf.local_name):
            return index
    return None


def _apply_entry(row: PlanRow, entry: MappingEntry) -> PlanRow:
    changes: dict[str, Any] = {"mapped_by": "mapping"}
    for name in (
        "signal",
        "semantic_id",
        "unit",
        "sampling_interval_ms",
        "deadband",
        "deadband_type",
        "ts_path",
    ):
        value = getattr(entry, name)
        if value is not None:
            changes[name] = value
    if entry.data_type is not None:
        changes["data_type"] = _json_type(entry.data_type)
    if entry.category is not None:
        changes["category"] = entry.category.value
        changes["level"] = _default_level(entry.category)
    if entry.level is not None:
        changes["level"] = entry.level
    if row.protocol is PlanProtocol.MQTT:
        if entry.json_path is not None:
            changes["json_path"] = entry.json_path
        if entry.metric is not None:
            changes["metric"] = entry.metric
    return replace(row, **changes)


def _check_unused(mapping: MappingFile, used: set[int]) -> None:
    for index, entry in enumerate(mapping.signals):
        if index not in used:
            msg = (
                f"no AID property {entry.property!r}"
                + (f" of asset {entry.asset_id!r}" if entry.asset_id else "")
                + " (write 'Interface/property' or 'property'; members as 'property.member')"
            )
            raise AasError(msg, file=mapping.source or "<mapping>", path=f"signals[{index}].property")


def _check_duplicates(env: AasEnvironment, rows: Iterable[PlanRow]) -> None:
    seen: dict[tuple[str, str], PlanRow] = {}
    for row in rows:
        key = (row.asset_id, row.signal)
        if key in seen:
            first = seen[key]
            msg = f"duplicate signal {row.signal!r} of asset {row.asset_id!r} (also from {first.source!r})"
            raise AasError(msg, file=env.source, path=row.source)
        seen[key] = row
