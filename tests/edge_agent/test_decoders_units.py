"""Payload decoders, example by example: JSON + JSONPath, Sparkplug B wire format, plain values."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from pydantic import ValidationError

from tidm.edge_agent.sources.decoders import (
    JsonDecoder,
    JsonDecoderSettings,
    JsonSignal,
    PlainDecoder,
    PlainDecoderSettings,
    SparkplugDecoder,
    SparkplugDecoderSettings,
)
from tidm.edge_agent.sources.decoders.base import STATUS_BAD_NO_DATA, STATUS_GOOD, STATUS_GOOD_HISTORICAL
from tidm.edge_agent.sources.decoders.json_path import compile_path, to_us
from tidm.edge_agent.sources.decoders.sparkplug import DataType, payload_class

RECV = 1_800_000_000_000_000


def _json(**kw: Any) -> JsonDecoder:
    kw.setdefault("asset_id", "a")
    kw.setdefault("signals", [JsonSignal(signal="x", path="$.x")])
    return JsonDecoder(JsonDecoderSettings(**kw))


# ------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    ("raw", "unit", "expected"),
    [
        (1_700_000_000, "auto", 1_700_000_000_000_000),
        (1_700_000_000.5, "auto", 1_700_000_000_500_000),
        (1_700_000_000_123, "auto", 1_700_000_000_123_000),
        (1_700_000_000_123_456, "auto", 1_700_000_000_123_456),
        (1_700_000_000_123_456_789, "auto", 1_700_000_000_123_456),
        (5, "ms", 5_000),
        (5, "s", 5_000_000),
        ("2026-01-02T03:04:05Z", "auto", 1_767_323_045_000_000),
        ("2026-01-02T04:04:05.25+01:00", "iso", 1_767_323_045_250_000),
        ("2026-01-02T03:04:05", "auto", "ISO 8601 time without a UTC offset"),
        ("yesterday", "auto", "not an ISO 8601 time"),
        (float("nan"), "auto", "time is not finite"),
        (10**30, "s", "time out of range"),
        (1e300, "ms", "time out of range"),
        (True, "auto", "time is a bool"),
        ("2026-01-02T03:04:05Z", "ms", "expected an epoch number in ms, got text"),
        (17, "iso", "expected an ISO 8601 time, got a number"),
    ],
)
def test_timestamps(raw: Any, unit: Any, expected: int | str) -> None:
    assert to_us(raw, unit, naive_is_utc=False) == expected


def test_naive_iso_can_be_declared_utc() -> None:
    assert to_us("2026-01-02T03:04:05", "auto", naive_is_utc=True) == 1_767_323_045_000_000


def test_simple_and_general_jsonpaths_agree() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2, "d": "x"}]}, "k e y": True}
    assert compile_path("$.a.b[1].c")(doc) == 2
    assert compile_path("$['k e y']")(doc) is True
    assert compile_path("$.a.b[?@.d == 'x'].c")(doc) == 2  # a filter: python-jsonpath's evaluator
    assert compile_path("$..d")(doc) == "x"
    assert compile_path("$.a.b[-1].c")(doc) == 2
    assert compile_path("$.a.b[5].c")(doc) is compile_path("$.nope")(doc)  # the same 'missing' sentinel


def test_invalid_jsonpath_is_a_settings_error_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"invalid JSONPath '\$\.\['"):
        JsonSignal(signal="x", path="$.[")


def test_settings_need_one_asset_source_and_one_signal_form() -> None:
    with pytest.raises(ValidationError, match="exactly one of asset_id"):
        JsonDecoderSettings(signals=[JsonSignal(signal="x", path="$.x")])
    with pytest.raises(ValidationError, match="either signals"):
        JsonDecoderSettings(asset_id="a")
    with pytest.raises(ValidationError, match="go together"):
        JsonDecoderSettings(asset_id="a", signal_path="$.n")


def test_wide_record_values() -> None:
    d = _json(
        signals=[
            JsonSignal(signal="f", path="$.f"),
            JsonSignal(signal="i", path="$.i"),
            JsonSignal(signal="b", path="$.b"),
            JsonSignal(signal="t", path="$.t"),
            JsonSignal(signal="n", path="$.n"),
            JsonSignal(signal="o", path="$.o"),
            JsonSignal(signal="req", path="$.req", required=True),
        ]
    )
    samples, rejects = d.decode(
        "t", json.dumps({"f": 1.5, "i": 2, "b": False, "t": "on", "n": None, "o": {}}).encode(), RECV
    )
    assert [(s.signal, s.value, s.value_text, s.ts_us) for s in samples] == [
        ("f", 1.5, None, RECV),
        ("i", 2.0, None, RECV),
        ("b", 0.0, None, RECV),
        ("t", None, "on", RECV),
    ]
    assert sorted(r.reason for r in rejects) == ["json.missing", "json.value_type"]


def test_batched_top_level_array_and_records_path() -> None:
    d = _json(timestamp_path="$.ts")
    payload = json.dumps([{"ts": 1_700_000_000 + i, "x": i} for i in range(100)]).encode()
    samples, rejects = d.decode("t", payload, RECV)
    assert not rejects and [s.value for s in samples] == [float(i) for i in range(100)]
    assert samples[-1].ts_us == 1_700_000_099_000_000
    d = _json(records="$.data.rows[*]", asset_path="$.m", asset_id=None)
    samples, rejects = d.decode(
        "t", b'{"data": {"rows": [{"m": "p1", "x": 1}, {"x": 2}, {"m": "p2", "x": 3}]}}', RECV
    )
    assert [(s.asset_id, s.value) for s in samples] == [("p1", 1.0), ("p2", 3.0)]
    assert [r.reason for r in rejects] == ["json.asset"]


def test_long_records_and_asset_from_topic() -> None:
    d = _json(asset_id=None, asset_topic_level=-2, signals=[], signal_path="$.n", value_path="$.v")
    samples, rejects = d.decode(
        "site/pump-9/data", b'[{"n": "P", "v": 1}, {"n": "Q", "v": "x"}, {"v": 2}]', RECV
    )
    assert [(s.asset_id, s.signal, s.value, s.value_text) for s in samples] == [
        ("pump-9", "P", 1.0, None),
        ("pump-9", "Q", None, "x"),
    ]
    assert [r.reason for r in rejects] == ["json.signal"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "json.invalid"),
        (b"{", "json.invalid"),
        (b"\xff", "json.invalid"),
        (b"[" * 100_000 + b"]" * 100_000, "json.invalid"),
        (b"[]", "json.records"),
        (b'"text"', "json.no_signals"),
        (b'{"x": 1e400}', None),  # inf is a float: kept
        (
            b'{"x": 123456789012345678901234567890123456789012345678901234567890' + b"0" * 300 + b"}",
            "json.value_type",
        ),
    ],
)
def test_bad_json_is_rejected_not_raised(payload: bytes, reason: str | None) -> None:
    samples, rejects = _json().decode("t", payload, RECV)
    if reason is None:
        assert len(samples) == 1 and not rejects
    else:
        assert not samples and rejects[0].reason == reason


def test_rejects_per_payload_are_capped() -> None:
    payload = json.dumps([{"y": i} for i in range(1000)]).encode()
    samples, rejects = _json().decode("t", payload, RECV)
    assert not samples and len(rejects) == 21 and "further rejects" in rejects[-1].detail


# ------------------------------------------------------------------------------------- Sparkplug


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, body: bytes) -> bytes:
    return _varint(number << 3 | wire) + body


def _ld(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def test_runtime_schema_matches_the_sparkplug_wire_format_both_ways() -> None:
    """An independent hand encoder of the .proto field numbers, against the runtime-built classes."""
    metric = (
        _ld(1, b"Temp")
        + _field(2, 0, _varint(5))
        + _field(3, 0, _varint(1_700_000_000_001))
        + _field(4, 0, _varint(DataType.DOUBLE))
        + _field(5, 0, _varint(1))
        + _field(13, 1, struct.pack("<d", 21.25))
    )
    wire = _field(1, 0, _varint(1_700_000_000_000)) + _ld(2, metric) + _field(3, 0, _varint(0))
    msg = payload_class()()
    msg.ParseFromString(wire)
    m = msg.metrics[0]
    assert (msg.timestamp, msg.seq, m.name, m.alias, m.datatype, m.is_historical, m.double_value) == (
        1_700_000_000_000,
        0,
        "Temp",
        5,
        DataType.DOUBLE,
        True,
        21.25,
    )
    assert msg.SerializeToString() == wire
    samples, rejects = SparkplugDecoder().decode("spBv1.0/g/NBIRTH/n", wire, RECV)
    assert not rejects and len(samples) == 1
    s = samples[0]
    assert (s.asset_id, s.signal, s.value, s.ts_us, s.status_code) == (
        "g/n",
        "Temp",
        21.25,
        1_700_000_000_001_000,
        STATUS_GOOD_HISTORICAL,
    )


def _payload(seq: int | None, *metrics: dict[str, Any]) -> bytes:
    msg = payload_class()()
    if seq is not None:
        msg.seq = seq
    for m in metrics:
        msg.metrics.add(**m)
    return bytes(msg.SerializeToString())


@pytest.mark.parametrize(
    ("datatype", "field", "raw", "value", "text"),
    [
        (DataType.INT8, "int_value", 0xFF, -1.0, None),
        (DataType.INT16, "int_value", 0x8000, -32768.0, None),
        (DataType.INT32, "int_value", 0xFFFFFFFE, -2.0, None),
        (DataType.UINT32, "int_value", 0xFFFFFFFE, 4294967294.0, None),
        (DataType.INT64, "long_value", 2**64 - 5, -5.0, None),
        (DataType.UINT64, "long_value", 2**64 - 5, float(2**64 - 5), None),
        (DataType.FLOAT, "float_value", 0.5, 0.5, None),
        (DataType.BOOLEAN, "boolean_value", True, 1.0, None),
        (DataType.STRING, "string_value", "héllo", None, "héllo"),
        (DataType.DATETIME, "long_value", 1_700_000_000_000, 1.7e12, None),
    ],
)
def test_sparkplug_datatypes(
    datatype: int, field: str, raw: Any, value: float | None, text: str | None
) -> None:
    d = SparkplugDecoder()
    samples, rejects = d.decode(
        "spBv1.0/g/NBIRTH/n", _payload(0, {"name": "m", "datatype": datatype, field: raw}), RECV
    )
    assert not rejects
    assert (samples[0].value, samples[0].value_text) == (value, text)


def test_sparkplug_nulls_unsupported_types_mapping_and_commands() -> None:
    d = SparkplugDecoder(SparkplugDecoderSettings(metrics={"Temp": "Temperature", "Blob": "Blob"}))
    birth = _payload(
        0,
        {"name": "Temp", "alias": 1, "datatype": DataType.DOUBLE, "is_null": True},
        {"name": "Blob", "alias": 2, "datatype": DataType.BYTES, "bytes_value": b"\x00"},
        {"name": "Other", "alias": 3, "datatype": DataType.DOUBLE, "double_value": 1.0},
    )
    samples, rejects = d.decode("spBv1.0/g/NBIRTH/n", birth, RECV)
    assert not rejects
    assert [(s.signal, s.value, s.status_code) for s in samples] == [
        ("Temperature", None, STATUS_BAD_NO_DATA)
    ]
    assert d.stats.skipped_metrics == 1
    assert d.decode("spBv1.0/g/NCMD/n", b"\x00garbage", RECV) == ([], [])
    assert d.decode("spBv1.0/STATE/host", b'{"online": true}', RECV) == ([], [])
    assert d.stats.ignored_messages == 2


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("spBv1.0/g/NDATA", "sparkplug.topic"),
        ("spAv1.0/g/NDATA/n", "sparkplug.topic"),
        ("spBv1.0/g/XDATA/n", "sparkplug.topic"),
        ("spBv1.0/g/DDATA/n", "sparkplug.topic"),
        ("spBv1.0/g/NDATA/n/d", "sparkplug.topic"),
        ("spBv1.0//NDATA/n", "sparkplug.topic"),
        ("spBv1.0/g/NDATA/n", "sparkplug.no_birth"),
        ("spBv1.0/g/DDATA/n/d", "sparkplug.no_birth"),
    ],
)
def test_sparkplug_bad_topics_and_missing_births(topic: str, reason: str) -> None:
    samples, rejects = SparkplugDecoder().decode(topic, _payload(1, {"alias": 1, "double_value": 1.0}), RECV)
    assert not samples and [r.reason for r in rejects] == [reason]


def test_sparkplug_seq_wraps_and_gaps_are_counted() -> None:
    d = SparkplugDecoder()
    d.decode(
        "spBv1.0/g/NBIRTH/n",
        _payload(254, {"name": "m", "alias": 1, "datatype": DataType.DOUBLE, "double_value": 0.0}),
        RECV,
    )
    for seq in (255, 0, 1, 3):
        d.decode("spBv1.0/g/NDATA/n", _payload(seq, {"alias": 1, "double_value": 1.0}), RECV)
    d.decode("spBv1.0/g/NDATA/n", _payload(None, {"alias": 1, "double_value": 1.0}), RECV)
    assert d.stats.seq_gaps == 2  # 1 -> 3, and a message without seq


# ----------------------------------------------------------------------------------------- plain


@pytest.mark.parametrize(
    ("payload", "value", "text", "reason"),
    [
        (b" 21.5\n", 21.5, None, None),
        (b"-3", -3.0, None, None),
        (b"1e3", 1000.0, None, None),
        (b"TRUE", 1.0, None, None),
        (b"off", 0.0, None, None),
        (b"", None, None, "plain.empty"),
        (b"   ", None, None, "plain.empty"),
        (b"\xc3\x28", None, None, "plain.encoding"),
        (b"abc", None, None, "plain.not_a_number"),
    ],
)
def test_plain(payload: bytes, value: float | None, text: str | None, reason: str | None) -> None:
    d = PlainDecoder(PlainDecoderSettings(asset_id="a", signal="s"))
    samples, rejects = d.decode("x", payload, RECV)
    if reason:
        assert not samples and [r.reason for r in rejects] == [reason]
    else:
        assert not rejects and (samples[0].value, samples[0].value_text, samples[0].status_code) == (
            value,
            text,
            STATUS_GOOD,
        )


def test_plain_text_and_topic_levels() -> None:
    d = PlainDecoder(PlainDecoderSettings(asset_topic_level=1, signal_topic_level=2, text=True))
    samples, rejects = d.decode("plant/press-1/Mode", b"AUTO", RECV)
    assert not rejects and (samples[0].asset_id, samples[0].signal, samples[0].value_text) == (
        "press-1",
        "Mode",
        "AUTO",
    )
    assert d.decode("plant", b"1", RECV)[1][0].reason == "plain.topic"
    assert d.decode("plant/p/s", b"a\x00b", RECV)[1][0].reason == "plain.text"
