"""What the MQTT quarantine keeps of a rejected payload under a policy (decoders' `redact`), and its
retention, without a broker."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidm.edge_agent.sources.decoders import (
    DROPPED,
    FieldValue,
    JsonDecoder,
    JsonDecoderSettings,
    JsonSignal,
    PayloadQuarantine,
    PlainDecoder,
    PlainDecoderSettings,
    QuarantineRecord,
    QuarantineRetention,
    Reject,
    SparkplugDecoder,
    SparkplugDecoderSettings,
)
from tidm.edge_agent.sources.decoders.json_path import DROPPED_MARK, UNKNOWN_MARK


class _Policy:
    """Drops `secret`, upper-cases `name`, passes everything else; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[FieldValue] = []

    def rewrite(self, fields: Sequence[FieldValue]) -> list[Any]:
        self.asked.extend(fields)
        return [
            DROPPED if f.signal == "secret" else f.value.upper() if f.signal == "name" else f.value
            for f in fields
        ]


def test_json_long_records_under_a_records_path() -> None:
    decoder = JsonDecoder(
        JsonDecoderSettings(
            records="$.batch[*]",
            asset_path="$.asset",
            signal_path="$.sig",
            value_path="$.v",
            timestamp_path="$.t",
        )
    )
    doc = {
        "site": "hidden",
        "batch": [
            {"asset": "a1", "sig": "secret", "v": "pin-1234", "t": 5},
            {"asset": "a1", "sig": "name", "v": "bob", "t": 6, "extra": [1, 2]},
            {"asset": "a2", "sig": "speed", "v": {"bad": 1}, "t": 7},
            {"sig": "name", "v": "carol"},
        ],
    }
    policy = _Policy()
    kept = json.loads(decoder.redact("t", json.dumps(doc).encode(), 99, policy) or b"")
    assert kept == {
        "site": UNKNOWN_MARK,
        "batch": [
            {"asset": "a1", "sig": "secret", "v": DROPPED_MARK, "t": 5},
            {"asset": "a1", "sig": "name", "v": "BOB", "t": 6, "extra": [UNKNOWN_MARK, UNKNOWN_MARK]},
            {"asset": "a2", "sig": "speed", "v": {"bad": 1}, "t": 7},
            {"sig": "name", "v": UNKNOWN_MARK},  # no asset: no policy can be looked up for it
        ],
    }
    assert [(f.asset_id, f.signal) for f in policy.asked] == [
        ("a1", "secret"),
        ("a1", "name"),
        ("a2", "speed"),
    ]


def test_unparseable_or_unknown_payloads_give_no_kept_payload() -> None:
    json_decoder = JsonDecoder(
        JsonDecoderSettings(asset_id="a", signals=[JsonSignal(signal="x", path="$.x")])
    )
    assert json_decoder.redact("t", b"{not json", 0, _Policy()) is None
    plain = PlainDecoder(PlainDecoderSettings(asset_id="a", signal="secret"))
    assert plain.redact("t", b"hunter2", 0, _Policy()) is None, "the whole payload is a dropped field"
    assert (
        PlainDecoder(PlainDecoderSettings(asset_id="a", signal="name")).redact("t", b"bob", 0, _Policy())
        == b"BOB"
    )
    assert (
        SparkplugDecoder(SparkplugDecoderSettings()).redact("spBv1.0/g/NDATA/n", b"\x08\x01", 0, _Policy())
        is None
    )


def test_hash_only_record_keeps_no_payload(tmp_path: Path) -> None:
    quarantine = PayloadQuarantine(tmp_path, "mqtt-x")
    record = QuarantineRecord(
        "t",
        time.time_ns() // 1000,
        b"secret payload",
        (Reject("json.invalid", "not JSON"),),
        None,
        "hash-only",
    )
    quarantine.write([record])
    line = json.loads(quarantine.path.read_text())
    assert "payload_b64" not in line and line["redaction"] == "hash-only" and line["bytes"] == 14
    assert b"secret payload" not in quarantine.path.read_bytes()


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    now = [10_000_000_000]
    quarantine = PayloadQuarantine(
        tmp_path, "mqtt-r", QuarantineRetention(max_age_s=100, max_bytes=2048), clock_us=lambda: now[0]
    )
    reject = (Reject("plain.empty", "empty payload"),)
    assert quarantine.write([QuarantineRecord("t", now[0] - 200_000_000, b"old", reject)]) != []
    assert not quarantine.path.read_text(), "older than max_age as soon as written"
    fresh = [QuarantineRecord("t", now[0] + i, b"x" * 100, reject) for i in range(30)]
    expired = quarantine.write(fresh)
    assert {e.why for e in expired} == {"max_bytes"} and quarantine.path.stat().st_size <= 2048
    left = [json.loads(line)["recv_us"] for line in quarantine.path.read_text().splitlines()]
    assert left == [now[0] + i for i in range(30 - len(left), 30)], "the oldest go first"
    assert quarantine.stats.expired == 1 + len(expired) and quarantine.stats.payloads == 31
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"
