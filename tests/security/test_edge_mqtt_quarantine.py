"""Attacks on the edge MQTT quarantine through the real Mosquitto: a rejected payload must not keep
in clear what the desensitization policy drops (or would rewrite), an unparseable one keeps only its
hash and the reasons, and retention removes old entries (counted, EXPIRE evidence entries)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.policy import KeyRing, Policy, PseudonymKey
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders import (
    FieldValue,
    JsonDecoderSettings,
    JsonSignal,
    PlainDecoderSettings,
    QuarantineRetention,
)
from tidm.edge_agent.sources.decoders.json_path import DROPPED_MARK, UNKNOWN_MARK
from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OPERATOR = "Jane Q. Operator"
SERIAL = "SN-77-4410"
POLICY = Policy.model_validate(
    {
        "id": "plant-policy",
        "version": "3",
        "rules": [
            {"match": {"signal": "operator"}, "action": "drop"},
            {"match": {"signal": "serial"}, "action": "pseudonymize", "key": "ids"},
            {"match": {"signal": "badge"}, "action": "mask", "fixed_length": 4},
        ],
    }
)


@pytest.fixture
def desensitizer() -> Desensitizer:
    return Desensitizer(POLICY, keys=KeyRing({"ids@0": PseudonymKey("ids", 0, b"s" * 32)}))


@pytest.fixture
def publish(mqtt_broker: tuple[str, int], unique_name: Callable[..., str]) -> Iterator[Callable[..., None]]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_name("pub"))
    client.connect(*mqtt_broker, 30)
    client.loop_start()

    def send(topic: str, payload: bytes | str) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(10)

    yield send
    client.disconnect()
    client.loop_stop()


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class _Running:
    def __init__(self, source: MqttSource) -> None:
        self.source = source
        self.samples: list[RawSample] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _emit(self, _name: str, samples: Sequence[RawSample]) -> None:
        self.samples.extend(samples)

    async def __aenter__(self) -> _Running:
        self.task = asyncio.create_task(self.source.run(self._emit, self.stop))
        async with asyncio.timeout(15):
            while not self.source.connected.is_set():
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


def _source(
    mqtt_broker: tuple[str, int],
    client_id: str,
    folder: Path,
    subs: list[MqttSubscription],
    *,
    evidence: MemoryEvidenceLog,
    policy: Desensitizer,
    retention: QuarantineRetention | None = None,
) -> MqttSource:
    host, port = mqtt_broker
    settings = MqttSourceSettings(
        host=host,
        port=port,
        client_id=client_id,
        quarantine_dir=folder,
        quarantine_retention=retention or QuarantineRetention(),
        subscriptions=subs,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
    )
    return MqttSource(settings, evidence=evidence, actor="agent:gw-test", field_policy=policy)


def _lines(source: MqttSource) -> list[dict[str, Any]]:
    return [json.loads(line) for line in source.quarantine.path.read_text().splitlines()]


async def test_quarantine_applies_the_policy_to_what_it_keeps(
    mqtt_broker: tuple[str, int],
    publish: Callable[..., None],
    unique_name: Callable[..., str],
    tmp_path: Path,
    desensitizer: Desensitizer,
) -> None:
    root = unique_name("qpolicy")
    decoder = JsonDecoderSettings(
        asset_id="press-1",
        timestamp_path="$.ts",
        signals=[
            JsonSignal(signal="temperature", path="$.temperature"),
            JsonSignal(signal="pressure", path="$.pressure"),
            JsonSignal(signal="operator", path="$.operator"),
            JsonSignal(signal="serial", path="$.serial"),
            JsonSignal(signal="badge", path="$.badge"),
        ],
    )
    subs = [
        MqttSubscription(topic=f"{root}/json", qos=1, decoder=decoder),
        MqttSubscription(
            topic=f"{root}/plain", qos=1, decoder=PlainDecoderSettings(asset_id="press-1", signal="operator")
        ),
    ]
    evidence = MemoryEvidenceLog()
    source = _source(mqtt_broker, unique_name("src"), tmp_path, subs, evidence=evidence, policy=desensitizer)
    # One bad value (pressure is an object) rejects the record; the dropped operator, the serial and
    # badge (rewritten by policy) and an unconfigured free-text note ride along in the payload.
    one_bad = json.dumps(
        {
            "ts": 1_700_000_000_000,
            "temperature": 21.5,
            "pressure": {"raw": "0x7fff"},
            "operator": OPERATOR,
            "serial": SERIAL,
            "badge": "B-10442",
            "note": f"shift lead {OPERATOR}",
        }
    ).encode()
    unparseable = b'{"operator": "' + OPERATOR.encode() + b'", "temperature": '
    dropped_plain = OPERATOR.encode()  # text where a number is expected
    async with _Running(source) as run:
        publish(f"{root}/json", one_bad)
        publish(f"{root}/json", unparseable)
        publish(f"{root}/plain", dropped_plain)
        await _until(lambda: source.stats.quarantine.payloads == 3)
    assert {s.signal for s in run.samples} == {"temperature", "operator", "serial", "badge"}

    raw_file = source.quarantine.path.read_bytes()
    assert (
        OPERATOR.encode() not in raw_file and SERIAL.encode() not in raw_file and b"B-10442" not in raw_file
    )
    first, second, third = _lines(source)
    kept = json.loads(base64.b64decode(first["payload_b64"]))
    assert OPERATOR.encode() not in base64.b64decode(first["payload_b64"])
    assert SERIAL.encode() not in base64.b64decode(first["payload_b64"])
    (pseudonym, masked) = desensitizer.rewrite(
        [FieldValue("press-1", "serial", SERIAL, 0), FieldValue("press-1", "badge", "B-10442", 0)]
    )
    assert kept == {
        "ts": 1_700_000_000_000,
        "temperature": 21.5,
        "pressure": {"raw": "0x7fff"},  # a passing signal is kept as received: it is why it was rejected
        "operator": DROPPED_MARK,
        "serial": pseudonym,
        "badge": masked,
        "note": UNKNOWN_MARK,
    }
    assert pseudonym.startswith("ps:") and masked == "****"
    assert first["redaction"] == "policy" and first["reasons"] == ["json.value_type"]
    assert first["sha256"] == hashlib.sha256(one_bad).hexdigest() and first["bytes"] == len(one_bad)
    # Unparseable: nothing of it is kept but its hash, size and reasons.
    assert second["redaction"] == "hash-only" and "payload_b64" not in second
    assert second["sha256"] == hashlib.sha256(unparseable).hexdigest() and second["reasons"] == [
        "json.invalid"
    ]
    # A plain payload is one field; its signal is dropped by the policy: hash only.
    assert third["redaction"] == "hash-only" and "payload_b64" not in third
    assert third["reasons"] == ["plain.not_a_number"]
    assert dict(source.stats.quarantine.redactions) == {"policy": 1, "hash-only": 2}
    routes = [e.entry for e in evidence.read() if e.entry.event == EventType.ROUTE]
    assert [(r.subject, r.attributes["kept"]) for r in routes] == [
        (first["sha256"], "policy"),
        (second["sha256"], "hash-only"),
        (third["sha256"], "hash-only"),
    ]
    assert all(OPERATOR not in json.dumps(r.attributes) for r in routes)


async def test_retention_removes_old_and_excess_entries_with_evidence(
    mqtt_broker: tuple[str, int],
    publish: Callable[..., None],
    unique_name: Callable[..., str],
    tmp_path: Path,
    desensitizer: Desensitizer,
) -> None:
    root = unique_name("qretain")
    subs = [
        MqttSubscription(topic=f"{root}/plain", qos=1, decoder=PlainDecoderSettings(asset_id="a", signal="p"))
    ]
    evidence = MemoryEvidenceLog()
    retention = QuarantineRetention(max_age_s=86_400, max_bytes=4096)
    source = _source(
        mqtt_broker,
        unique_name("src"),
        tmp_path,
        subs,
        evidence=evidence,
        policy=desensitizer,
        retention=retention,
    )
    # What an earlier run left: one entry 30 days old.
    old = {
        "topic": f"{root}/plain",
        "recv_us": 1_600_000_000_000_000,
        "sha256": "ab" * 32,
        "bytes": 5,
        "reasons": ["plain.not_a_number"],
        "redaction": "hash-only",
    }
    source.quarantine.path.parent.mkdir(parents=True, exist_ok=True)
    source.quarantine.path.write_text(json.dumps(old) + "\n")
    async with _Running(source):
        publish(f"{root}/plain", b"not-a-number-0")
        await _until(lambda: source.stats.quarantine.payloads == 1)
        assert source.stats.quarantine.expired == 1
        assert [line["sha256"] for line in _lines(source)] == [hashlib.sha256(b"not-a-number-0").hexdigest()]
        for i in range(1, 40):
            publish(f"{root}/plain", f"not-a-number-{i}".encode())
        await _until(lambda: source.stats.quarantine.payloads == 40)
    size = source.quarantine.path.stat().st_size
    assert size <= 4096
    lines = _lines(source)
    assert lines[-1]["sha256"] == hashlib.sha256(b"not-a-number-39").hexdigest()
    q = source.stats.quarantine
    assert q.expired == 1 + (40 - len(lines)) and q.expired > 1
    expires = [e.entry for e in evidence.read() if e.entry.event == EventType.EXPIRE]
    assert len(expires) == q.expired
    assert expires[0].subject == "ab" * 32 and expires[0].attributes["reason"] == "retention.max_age"
    assert {e.attributes["reason"] for e in expires[1:]} == {"retention.max_bytes"}
    kept = {line["sha256"] for line in lines}
    assert not kept & {e.subject for e in expires}, "every removed entry is evidenced, none kept"
    assert len(kept) + len(expires) == 41
