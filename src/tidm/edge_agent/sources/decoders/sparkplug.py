"""Sparkplug B: protobuf payloads on `spBv1.0/<group>/<type>/<node>[/<device>]`.

Stateful, as the specification requires of a host application:
- NBIRTH/DBIRTH announce every metric with name, alias and datatype; later NDATA/DDATA may name a
  metric only by its alias, which is resolved against the latest birth (a rebirth replaces the map).
- NDEATH/DDEATH: every known metric of the node (and its devices) / the device gets one sample of
  quality bad (Bad_NoCommunication) so consumers see the outage instead of a stale last value.
  An NDEATH whose bdSeq does not match the current birth is a stale will message and is ignored.
- `seq` (0..255, per node, over NBIRTH/NDATA/DBIRTH/DDATA/DDEATH) is checked; a gap is logged and
  counted (the data is still used: it is correct, something else was lost).
- `is_historical` metrics are emitted with status Good + historian-raw info bits (see
  `STATUS_GOOD_HISTORICAL`): the values are real readings delivered late, not doubtful ones.

The protobuf classes are built at runtime from a FileDescriptorProto (no protoc, no generated code),
in a private descriptor pool so they cannot clash with another copy of the Sparkplug schema.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders.base import (
    STATUS_BAD_NO_COMMUNICATION,
    STATUS_BAD_NO_DATA,
    STATUS_GOOD,
    STATUS_GOOD_HISTORICAL,
    Decoded,
    Reject,
)
from tidm.errors import MissingExtraError

if TYPE_CHECKING:
    from tidm.edge_agent.sources.decoders.quarantine import FieldPolicy

__all__ = ["DataType", "SparkplugDecoder", "SparkplugDecoderSettings", "SparkplugStats", "payload_class"]

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
_MAX_US = 253_402_300_799_999_999


class DataType:
    """Sparkplug B metric datatypes; 1..15 are the scalars TIDM turns into samples."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19


_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_SCALAR = frozenset(range(1, 16))
_SKIPPED_NAMES = ("bdSeq", "Node Control/")  # protocol bookkeeping, not equipment data

_PAYLOAD_CLASS: Any = None


def _build_payload_class() -> Any:
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(extra="mqtt", module="protobuf") from exc
    fdp = descriptor_pb2.FieldDescriptorProto
    opt, rep = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED

    def add(msg: Any, name: str, number: int, ftype: int, label: int = opt, type_name: str = "") -> Any:
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
        return f

    file = descriptor_pb2.FileDescriptorProto(
        name="tidm/sparkplug_b.proto", package="org.eclipse.tahu.protobuf", syntax="proto2"
    )
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    add(metric, "name", 1, fdp.TYPE_STRING)
    add(metric, "alias", 2, fdp.TYPE_UINT64)
    add(metric, "timestamp", 3, fdp.TYPE_UINT64)
    add(metric, "datatype", 4, fdp.TYPE_UINT32)
    add(metric, "is_historical", 5, fdp.TYPE_BOOL)
    add(metric, "is_transient", 6, fdp.TYPE_BOOL)
    add(metric, "is_null", 7, fdp.TYPE_BOOL)
    # 8 metadata, 9 properties, 17 dataset, 18 template, 19 extension: kept as unknown fields; TIDM
    # does not turn them into samples (they are skipped and counted by datatype).
    for name, number, ftype in (
        ("int_value", 10, fdp.TYPE_UINT32),
        ("long_value", 11, fdp.TYPE_UINT64),
        ("float_value", 12, fdp.TYPE_FLOAT),
        ("double_value", 13, fdp.TYPE_DOUBLE),
        ("boolean_value", 14, fdp.TYPE_BOOL),
        ("string_value", 15, fdp.TYPE_STRING),
        ("bytes_value", 16, fdp.TYPE_BYTES),
    ):
        add(metric, name, number, ftype).oneof_index = 0
    add(payload, "timestamp", 1, fdp.TYPE_UINT64)
    add(payload, "metrics", 2, fdp.TYPE_MESSAGE, rep, ".org.eclipse.tahu.protobuf.Payload.Metric")
    add(payload, "seq", 3, fdp.TYPE_UINT64)
    add(payload, "uuid", 4, fdp.TYPE_STRING)
    add(payload, "body", 5, fdp.TYPE_BYTES)
    payload.extension_range.add(start=6, end=536_870_912)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


def payload_class() -> Any:
    """The Sparkplug B `Payload` protobuf message class (built once, on first use)."""
    global _PAYLOAD_CLASS  # noqa: PLW0603 - a lazily built, immutable singleton
    if _PAYLOAD_CLASS is None:
        _PAYLOAD_CLASS = _build_payload_class()
    return _PAYLOAD_CLASS


class SparkplugDecoderSettings(BaseModel):
    """How Sparkplug groups/nodes/devices and metric names map to assets and signals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sparkplug"] = "sparkplug"
    # Placeholders {group}, {node}, {device}: the asset of a device's metrics and of a node's own.
    asset_template: str = "{group}/{node}/{device}"
    node_asset_template: str = "{group}/{node}"
    # Metric name -> signal id; empty: every metric, under its own name. Unlisted metrics are skipped.
    metrics: dict[str, str] = Field(default_factory=dict)

    @field_validator("asset_template", "node_asset_template")
    @classmethod
    def _placeholders(cls, template: str) -> str:
        try:
            template.format(group="g", node="n", device="d")
        except (KeyError, IndexError, ValueError) as exc:
            msg = f"template {template!r} may use only {{group}}, {{node}} and {{device}} ({exc!r})"
            raise ValueError(msg) from None
        return template


@dataclass
class SparkplugStats:
    births: int = 0
    rebirths: int = 0
    deaths: int = 0
    stale_deaths: int = 0
    seq_gaps: int = 0
    skipped_metrics: int = 0
    ignored_messages: int = 0


@dataclass
class _Metric:
    name: str
    datatype: int


@dataclass
class _Endpoint:
    """The birth certificate of a node or a device: its metrics by alias and by name."""

    asset: str
    by_alias: dict[int, _Metric] = field(default_factory=dict)
    by_name: dict[str, _Metric] = field(default_factory=dict)
    online: bool = False


@dataclass
class _Node:
    endpoint: _Endpoint
    devices: dict[str, _Endpoint] = field(default_factory=dict)
    seq: int | None = None
    bdseq: int | None = None
    births: int = 0


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class SparkplugDecoder:
    """Decodes Sparkplug B messages; keeps the birth certificates and seq state per node."""

    def __init__(self, settings: SparkplugDecoderSettings | None = None) -> None:
        self.settings = settings or SparkplugDecoderSettings()
        self.stats = SparkplugStats()
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._payload = payload_class()
        from google.protobuf.message import DecodeError

        self._decode_error = DecodeError

    def redact(self, topic: str, payload: bytes, recv_us: int, policy: FieldPolicy) -> bytes | None:
        """None: a Sparkplug payload is not rewritten field by field (protobuf, aliases known only
        from the birth); the quarantine keeps its hash and the reasons."""
        return None

    def decode(self, topic: str, payload: bytes, recv_us: int) -> Decoded:
        """Samples of a Sparkplug message; births/deaths update the state kept for later messages."""
        parts = topic.split("/")
        if len(parts) >= 2 and parts[1] == "STATE" or parts[0] == "STATE":
            self.stats.ignored_messages += 1  # host application state, not equipment data
            return [], []
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or not all(parts):
            return [], [
                Reject("sparkplug.topic", f"topic {topic!r} is not spBv1.0/<group>/<type>/<node>[/<device>]")
            ]
        _, group, kind, node_id = parts[:4]
        device = parts[4] if len(parts) == 5 else None
        if kind in ("NCMD", "DCMD"):
            self.stats.ignored_messages += 1  # commands to the equipment, not readings
            return [], []
        if kind not in ("NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA"):
            return [], [Reject("sparkplug.topic", f"unknown message type {kind!r} in {topic!r}")]
        if (device is None) != kind.startswith("N"):
            return [], [
                Reject("sparkplug.topic", f"{kind} with{'out' if device is None else ''} a device id")
            ]
        msg = self._payload()
        try:
            msg.ParseFromString(payload)
        except (self._decode_error, UnicodeDecodeError, ValueError, RuntimeError) as exc:
            return [], [
                Reject("sparkplug.protobuf", f"{kind} payload is not a Sparkplug B Payload: {exc}"[:300])
            ]
        # proto2 strings are not UTF-8 checked by the parser (upb hands back bytes): check them here.
        for i, m in enumerate(msg.metrics):
            if type(m.name) is not str or (
                m.WhichOneof("value") == "string_value" and type(m.string_value) is not str
            ):
                return [], [Reject("sparkplug.protobuf", f"{kind} metric {i}: a string is not UTF-8")]
        ts_default = recv_us
        if msg.HasField("timestamp"):
            ts = self._ms_to_us(msg.timestamp)
            if ts is None:
                return [], [
                    Reject("sparkplug.timestamp", f"{kind} payload timestamp {msg.timestamp} out of range")
                ]
            ts_default = ts
        key = (group, node_id)
        if kind == "NBIRTH":
            return self._nbirth(key, group, node_id, msg, ts_default, recv_us)
        node = self._nodes.get(key)
        if kind == "NDEATH":
            return self._ndeath(key, node, msg, ts_default, recv_us)
        if node is None:
            return [], [Reject("sparkplug.no_birth", f"{kind} from {group}/{node_id} before its NBIRTH")]
        self._check_seq(node, msg, topic)
        if kind == "NDATA":
            return self._metrics(node.endpoint, msg, ts_default, recv_us, kind)
        assert device is not None  # noqa: S101 - checked against the message type above
        if kind == "DBIRTH":
            endpoint = _Endpoint(
                self.settings.asset_template.format(group=group, node=node_id, device=device)
            )
            self.stats.births += 1
            if device in node.devices:
                self.stats.rebirths += 1
            node.devices[device] = endpoint
            return self._birth(endpoint, msg, ts_default, recv_us, kind)
        endpoint_or_none = node.devices.get(device)
        if endpoint_or_none is None:
            return [], [
                Reject("sparkplug.no_birth", f"{kind} from {group}/{node_id}/{device} before its DBIRTH")
            ]
        if kind == "DDEATH":
            self.stats.deaths += 1
            endpoint_or_none.online = False
            return self._dead(endpoint_or_none, ts_default, recv_us), []
        return self._metrics(endpoint_or_none, msg, ts_default, recv_us, kind)

    @staticmethod
    def _ms_to_us(ms: int) -> int | None:
        us = ms * 1000
        return us if us <= _MAX_US else None

    def _check_seq(self, node: _Node, msg: Any, topic: str) -> None:
        if not msg.HasField("seq"):
            self.stats.seq_gaps += 1
            log.warning("sparkplug: %s carries no seq", topic)
            return
        seq = msg.seq
        expected = None if node.seq is None else (node.seq + 1) % 256
        if expected is not None and seq != expected:
            self.stats.seq_gaps += 1
            log.warning("sparkplug: seq gap on %s: expected %d, got %d (messages lost)", topic, expected, seq)
        node.seq = seq % 256

    def _nbirth(
        self, key: tuple[str, str], group: str, node_id: str, msg: Any, ts: int, recv_us: int
    ) -> Decoded:
        previous = self._nodes.get(key)
        node = _Node(_Endpoint(self.settings.node_asset_template.format(group=group, node=node_id)))
        node.births = 1 if previous is None else previous.births + 1
        if previous is not None:
            self.stats.rebirths += 1
        self.stats.births += 1
        node.seq = msg.seq % 256 if msg.HasField("seq") else None
        for m in msg.metrics:
            if m.name == "bdSeq" and m.WhichOneof("value") in ("long_value", "int_value"):
                node.bdseq = m.long_value if m.HasField("long_value") else m.int_value
        self._nodes[key] = node
        return self._birth(node.endpoint, msg, ts, recv_us, "NBIRTH")

    def _ndeath(self, key: tuple[str, str], node: _Node | None, msg: Any, ts: int, recv_us: int) -> Decoded:
        if node is None:
            self.stats.stale_deaths += 1  # a will message of a session we never saw born
            return [], []
        bdseq = None
        for m in msg.metrics:
            if m.name == "bdSeq":
                bdseq = m.long_value if m.HasField("long_value") else m.int_value
        if bdseq is not None and node.bdseq is not None and bdseq != node.bdseq:
            self.stats.stale_deaths += 1  # the will of an earlier session, delivered after the rebirth
            return [], []
        self.stats.deaths += 1
        samples = self._dead(node.endpoint, ts, recv_us)
        for device in node.devices.values():
            if device.online:
                samples.extend(self._dead(device, ts, recv_us))
            device.online = False
        node.endpoint.online = False
        node.seq = None
        return samples, []

    def _dead(self, endpoint: _Endpoint, ts: int, recv_us: int) -> list[RawSample]:
        endpoint.online = False
        out = []
        for metric in endpoint.by_name.values():
            signal = self._signal(metric.name)
            if signal is not None:
                out.append(
                    RawSample(endpoint.asset, signal, ts, recv_us, None, None, STATUS_BAD_NO_COMMUNICATION)
                )
        return out

    def _signal(self, name: str) -> str | None:
        if self.settings.metrics:
            return self.settings.metrics.get(name)
        if name.startswith(_SKIPPED_NAMES):
            return None
        return name

    def _birth(self, endpoint: _Endpoint, msg: Any, ts: int, recv_us: int, kind: str) -> Decoded:
        endpoint.online = True
        rejects: list[Reject] = []
        for i, m in enumerate(msg.metrics):
            if not m.name:
                rejects.append(Reject("sparkplug.birth", f"{kind} metric {i} has no name"))
                continue
            metric = _Metric(m.name, m.datatype)
            endpoint.by_name[m.name] = metric
            if m.HasField("alias"):
                endpoint.by_alias[m.alias] = metric
        samples, more = self._metrics(endpoint, msg, ts, recv_us, kind)
        return samples, rejects + more

    def _metrics(self, endpoint: _Endpoint, msg: Any, ts_default: int, recv_us: int, kind: str) -> Decoded:
        samples: list[RawSample] = []
        rejects: list[Reject] = []
        asset = endpoint.asset
        for i, m in enumerate(msg.metrics):
            if m.name:
                known = endpoint.by_name.get(m.name)
                name = m.name
            elif m.HasField("alias"):
                known = endpoint.by_alias.get(m.alias)
                if known is None:
                    rejects.append(
                        Reject("sparkplug.unknown_alias", f"{kind} metric {i}: alias {m.alias} not born")
                    )
                    continue
                name = known.name
            else:
                rejects.append(Reject("sparkplug.metric", f"{kind} metric {i} has neither name nor alias"))
                continue
            signal = self._signal(name)
            if signal is None:
                continue
            datatype = m.datatype if m.HasField("datatype") else known.datatype if known else DataType.UNKNOWN
            ts = ts_default
            if m.HasField("timestamp"):
                got = self._ms_to_us(m.timestamp)
                if got is None:
                    rejects.append(
                        Reject("sparkplug.timestamp", f"{kind} metric {name!r}: time out of range")
                    )
                    continue
                ts = got
            status = STATUS_GOOD_HISTORICAL if m.is_historical else STATUS_GOOD
            which = m.WhichOneof("value")
            if m.is_null:
                samples.append(RawSample(asset, signal, ts, recv_us, None, None, STATUS_BAD_NO_DATA))
                continue
            value: float | None = None
            text: str | None = None
            if which == "int_value" or which == "long_value":
                raw = m.int_value if which == "int_value" else m.long_value
                bits = _SIGNED_BITS.get(datatype)
                value = float(_signed(raw, bits) if bits else raw)
            elif which == "double_value" or which == "float_value":
                value = m.double_value if which == "double_value" else m.float_value
            elif which == "boolean_value":
                value = 1.0 if m.boolean_value else 0.0
            elif which == "string_value":
                text = m.string_value
            elif which == "bytes_value" or datatype not in _SCALAR:
                self.stats.skipped_metrics += 1  # arrays, datasets, templates, files: no scalar sample
                continue
            else:
                rejects.append(Reject("sparkplug.metric", f"{kind} metric {name!r} has no value"))
                continue
            samples.append(RawSample(asset, signal, ts, recv_us, value, text, status))
        return samples, rejects
