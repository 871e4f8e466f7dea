"""MqttSource against the real Mosquitto: JSON + JSONPath, Sparkplug B, persistent QoS 1, quarantine."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from tests.fakes import MemoryProducer

from tidm.edge_agent import Agent, AgentSettings, BatchSettings
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders import (
    JsonDecoderSettings,
    JsonSignal,
    PlainDecoderSettings,
    SparkplugDecoderSettings,
)
from tidm.edge_agent.sources.decoders.base import (
    STATUS_BAD_NO_COMMUNICATION,
    STATUS_GOOD,
    STATUS_GOOD_HISTORICAL,
)
from tidm.edge_agent.sources.decoders.sparkplug import DataType, payload_class
from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity, TrustedAgents, open_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Publisher:
    """A plain paho publisher (its own network thread), closed by the fixture."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect(host, port, 30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_broker: tuple[str, int], unique_name: Callable[..., str]) -> Iterator[Publisher]:
    pub = Publisher(*mqtt_broker, unique_name("pub"))
    yield pub
    pub.close()


class Collector:
    """An `emit` that keeps what arrives."""

    def __init__(self) -> None:
        self.samples: list[RawSample] = []
        self.calls = 0

    def __call__(self, source: str, samples: Sequence[RawSample]) -> None:
        self.calls += 1
        self.samples.extend(samples)


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class Running:
    """An MqttSource running in a task, stopped (and awaited) on exit."""

    def __init__(self, source: MqttSource, emit: Any) -> None:
        self.source = source
        self.emit = emit
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.source.run(self.emit, self.stop))
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


def _settings(
    mqtt_broker: tuple[str, int], client_id: str, tmp_path: Path, subs: list[MqttSubscription], **kw: Any
) -> MqttSourceSettings:
    host, port = mqtt_broker
    return MqttSourceSettings(
        host=host,
        port=port,
        client_id=client_id,
        quarantine_dir=tmp_path / "quarantine",
        subscriptions=subs,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        **kw,
    )


async def test_json_single_and_batched_with_jsonpath(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    root = unique_name("plant")
    subs = [
        MqttSubscription(
            topic=f"{root}/+/state",
            decoder=JsonDecoderSettings(
                asset_topic_level=1,
                timestamp_path="$.ts",
                signals=[
                    JsonSignal(signal="Temperature", path="$.data.temp"),
                    JsonSignal(signal="Mode", path="$['data']['mode']"),
                    JsonSignal(signal="Vibration/X", path="$.vib[0]"),
                ],
            ),
        ),
        MqttSubscription(
            topic=f"{root}/batch",
            decoder=JsonDecoderSettings(
                asset_path="$.asset",
                records="$.samples[*]",
                signal_path="$.name",
                value_path="$.v",
                timestamp_path="$.t",
                timestamp_unit="ms",
            ),
        ),
    ]
    got = Collector()
    source = MqttSource(_settings(mqtt_broker, unique_name("src"), tmp_path, subs))
    async with Running(source, got):
        assert source.stats.protocol == "5"
        publisher.publish(
            f"{root}/pump-1/state",
            json.dumps(
                {"ts": "2026-01-02T03:04:05.123456Z", "data": {"temp": 61.5, "mode": "AUTO"}, "vib": [0.25]}
            ),
        )
        batch = {
            "samples": [
                {"asset": "press-7", "name": f"s{i % 4}", "v": i, "t": 1_767_000_000_000 + i}
                for i in range(100)
            ]
        }
        publisher.publish(f"{root}/batch", json.dumps(batch))
        await _until(lambda: len(got.samples) == 103)
    single = {s.signal: s for s in got.samples if s.asset_id == "pump-1"}
    assert single["Temperature"].value == 61.5 and single["Mode"].value_text == "AUTO"
    assert single["Vibration/X"].value == 0.25
    assert single["Temperature"].ts_us == 1_767_323_045_123_456
    batched = [s for s in got.samples if s.asset_id == "press-7"]
    assert [s.value for s in batched] == [float(i) for i in range(100)]
    assert [s.ts_us for s in batched] == [(1_767_000_000_000 + i) * 1000 for i in range(100)]
    assert all(s.status_code == STATUS_GOOD for s in got.samples)
    assert source.stats.acked == 2 and source.stats.quarantine.payloads == 0


def _spb(seq: int | None, metrics: list[dict[str, Any]], ts: int | None = 1_767_000_000_000) -> bytes:
    msg = payload_class()()
    if ts is not None:
        msg.timestamp = ts
    if seq is not None:
        msg.seq = seq
    for m in metrics:
        msg.metrics.add(**m)
    return bytes(msg.SerializeToString())


async def test_sparkplug_births_data_deaths_aliases_and_rebirth(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    group = unique_name("grp")
    ns = f"spBv1.0/{group}"
    subs = [MqttSubscription(topic=f"{ns}/#", decoder=SparkplugDecoderSettings())]
    got = Collector()
    source = MqttSource(_settings(mqtt_broker, unique_name("src"), tmp_path, subs))
    d, i32, f64, s = DataType, DataType.INT32, DataType.DOUBLE, DataType.STRING
    async with Running(source, got):
        publisher.publish(
            f"{ns}/NBIRTH/gw1",
            _spb(
                0,
                [
                    {"name": "bdSeq", "datatype": d.INT64, "long_value": 7},
                    {"name": "Uptime", "alias": 1, "datatype": d.INT64, "long_value": 10},
                ],
            ),
        )
        publisher.publish(
            f"{ns}/DBIRTH/gw1/pump",
            _spb(
                1,
                [
                    {"name": "Pressure", "alias": 10, "datatype": f64, "double_value": 2.5},
                    {"name": "Delta", "alias": 11, "datatype": i32, "int_value": (-3) & 0xFFFFFFFF},
                    {"name": "State", "alias": 12, "datatype": s, "string_value": "RUN"},
                ],
            ),
        )
        publisher.publish(
            f"{ns}/DDATA/gw1/pump",
            _spb(2, [{"alias": 10, "double_value": 2.75}, {"alias": 11, "int_value": 4}]),
        )
        publisher.publish(
            f"{ns}/DDATA/gw1/pump",
            _spb(
                3, [{"alias": 10, "double_value": 1.0, "is_historical": True, "timestamp": 1_766_000_000_000}]
            ),
        )
        publisher.publish(f"{ns}/NDATA/gw1", _spb(5, [{"alias": 1, "long_value": 11}]))  # seq 4 was lost
        publisher.publish(f"{ns}/DDEATH/gw1/pump", _spb(6, []))
        # Rebirth with new aliases: old alias 10 must now mean something else.
        publisher.publish(
            f"{ns}/NBIRTH/gw1", _spb(0, [{"name": "bdSeq", "datatype": d.INT64, "long_value": 8}])
        )
        publisher.publish(
            f"{ns}/DBIRTH/gw1/pump",
            _spb(
                1,
                [
                    {"name": "Pressure", "alias": 20, "datatype": f64, "double_value": 3.0},
                    {"name": "State", "alias": 10, "datatype": s, "string_value": "IDLE"},
                ],
            ),
        )
        publisher.publish(
            f"{ns}/DDATA/gw1/pump",
            _spb(2, [{"alias": 20, "double_value": 3.5}, {"alias": 10, "string_value": "RUN"}]),
        )
        publisher.publish(
            f"{ns}/NDEATH/gw1", _spb(None, [{"name": "bdSeq", "datatype": d.INT64, "long_value": 7}], ts=None)
        )
        publisher.publish(
            f"{ns}/NDEATH/gw1", _spb(None, [{"name": "bdSeq", "datatype": d.INT64, "long_value": 8}], ts=None)
        )
        publisher.publish(
            f"{ns}/DDATA/gw1/pump", _spb(3, [{"alias": 99, "double_value": 0.0}])
        )  # unknown alias
        await _until(lambda: source.stats.messages == 12)
    stats = source.sparkplug[0].stats
    assert stats.births == 4 and stats.rebirths == 1 and stats.seq_gaps == 1
    assert stats.deaths == 2 and stats.stale_deaths == 1  # the bdSeq=7 death belongs to the first session
    pump = f"{group}/gw1/pump"
    rows = [(s.asset_id, s.signal, s.value, s.value_text, s.status_code) for s in got.samples]
    assert rows[:3] == [
        (f"{group}/gw1", "Uptime", 10.0, None, STATUS_GOOD),
        (pump, "Pressure", 2.5, None, STATUS_GOOD),
        (pump, "Delta", -3.0, None, STATUS_GOOD),
    ]
    assert (pump, "Delta", 4.0, None, STATUS_GOOD) in rows
    historical = [s for s in got.samples if s.status_code == STATUS_GOOD_HISTORICAL]
    assert len(historical) == 1 and historical[0].ts_us == 1_766_000_000_000_000
    after_rebirth = rows[rows.index((pump, "Pressure", 3.0, None, STATUS_GOOD)) :]
    assert (pump, "Pressure", 3.5, None, STATUS_GOOD) in after_rebirth
    assert (pump, "State", None, "RUN", STATUS_GOOD) in after_rebirth
    dead = [(a, sig) for a, sig, v, t, st in rows if st == STATUS_BAD_NO_COMMUNICATION]
    # DDEATH: the pump's three metrics; NDEATH (bdSeq 8): the node's metrics and the re-born pump's two.
    assert dead == [(pump, "Pressure"), (pump, "Delta"), (pump, "State"), (pump, "Pressure"), (pump, "State")]
    assert source.stats.quarantine.rejects_by_reason == {"sparkplug.unknown_alias": 1}
    lines = source.quarantine.path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["topic"] == f"{ns}/DDATA/gw1/pump"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_qos1_persistent_session_gets_what_was_published_while_away(
    mqtt_broker: tuple[str, int],
    publisher: Publisher,
    unique_name: Callable[..., str],
    tmp_path: Path,
    protocol: str,
) -> None:
    topic = unique_name("line")
    decoder = PlainDecoderSettings(asset_id="line", signal_topic_level=-1)
    subs = [MqttSubscription(topic=f"{topic}/#", qos=1, decoder=decoder)]
    settings = _settings(mqtt_broker, unique_name("persist"), tmp_path, subs, protocol=protocol)
    got = Collector()
    async with Running(MqttSource(settings), got):
        publisher.publish(f"{topic}/before", "1", qos=1)
        await _until(lambda: len(got.samples) == 1)
    # The source is gone but its session is kept by the broker: these are queued for it.
    for i in range(50):
        publisher.publish(f"{topic}/away", str(i), qos=1)
    got_back = Collector()
    source = MqttSource(settings)
    async with Running(source, got_back):
        assert source.stats.session_present and source.stats.protocol == protocol
        await _until(lambda: len(got_back.samples) == 50)
    assert [s.value for s in got_back.samples] == [float(i) for i in range(50)]
    assert [s.signal for s in got_back.samples] == ["away"] * 50


async def test_bad_payloads_are_quarantined_counted_and_evidenced(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    root = unique_name("q")
    subs = [
        MqttSubscription(
            topic=f"{root}/json",
            decoder=JsonDecoderSettings(asset_id="a", signals=[JsonSignal(signal="x", path="$.x")]),
        ),
        MqttSubscription(topic=f"{root}/plain", decoder=PlainDecoderSettings(asset_id="a", signal="p")),
        MqttSubscription(topic=f"spBv1.0/{root}/#", decoder=SparkplugDecoderSettings()),
    ]
    got = Collector()
    evidence = MemoryEvidenceLog()
    source = MqttSource(_settings(mqtt_broker, unique_name("src"), tmp_path, subs), evidence=evidence)
    bad = [
        (f"{root}/json", b"{not json"),
        (f"{root}/json", b'{"y": 1}'),
        (f"{root}/plain", b"\xff\xfe"),
        (f"{root}/plain", b"twelve"),
        (f"spBv1.0/{root}/NDATA/n1", b"\x08\xff"),
        (f"spBv1.0/{root}/NDATA/n1", _spb(0, [{"alias": 1, "double_value": 1.0}])),
    ]
    async with Running(source, got):
        for topic, payload in bad:
            publisher.publish(topic, payload)
        publisher.publish(f"{root}/plain", b"42")
        await _until(lambda: source.stats.messages == len(bad) + 1)
    assert [s.value for s in got.samples] == [42.0]
    q = source.stats.quarantine
    assert q.payloads == len(bad)
    assert dict(q.rejects_by_reason) == {
        "json.invalid": 1,
        "json.no_signals": 1,
        "plain.encoding": 1,
        "plain.not_a_number": 1,
        "sparkplug.protobuf": 1,
        "sparkplug.no_birth": 1,
    }
    records = [json.loads(line) for line in source.quarantine.path.read_text().splitlines()]
    import base64

    assert [(r["topic"], base64.b64decode(r["payload_b64"])) for r in records] == bad
    routes = [e.entry for e in evidence.read() if e.entry.event == EventType.ROUTE]
    assert len(routes) == len(bad) and {r.subject for r in routes} == {r["sha256"] for r in records}
    assert source.stats.acked == len(bad) + 1, "quarantined messages are acknowledged once durable"


async def test_agent_end_to_end_every_sample_exactly_once(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    root = unique_name("e2e")
    subs = [
        MqttSubscription(
            topic=f"{root}/+/telemetry",
            decoder=JsonDecoderSettings(
                asset_topic_level=1,
                timestamp_path="$.ts",
                timestamp_unit="us",
                signals=[
                    JsonSignal(signal="Speed", path="$.speed"),
                    JsonSignal(signal="Load", path="$.load"),
                ],
            ),
        )
    ]
    source = MqttSource(_settings(mqtt_broker, unique_name("src"), tmp_path, subs))
    identity = AgentIdentity.generate("agent-m")
    producer = MemoryProducer()
    agent = Agent(
        AgentSettings(agent_id="agent-m", topic="t", batch=BatchSettings(max_rows=64, max_age_ms=50)),
        identity=identity,
        producer=producer,
        evidence=MemoryEvidenceLog(),
        sources=[source],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await _until(source.connected.is_set)
    n = 300
    for i in range(n):
        records = [{"ts": 1_767_000_000_000_000 + i * 10 + k, "speed": i, "load": k} for k in range(2)]
        publisher.publish(f"{root}/m{i % 3}/telemetry", json.dumps(records))
    await _until(lambda: agent.stats.samples_in == 4 * n)
    await _until(lambda: agent.stats.rows_published == 4 * n)
    stop.set()
    stats = await asyncio.wait_for(task, 30)
    trusted = TrustedAgents({"agent-m": identity.public_key})
    tables = [open_envelope(m, trusted).table for m in producer.messages["t"]]
    rows = [
        (a, sig, ts.value if hasattr(ts, "value") else ts)
        for t in tables
        for a, sig, ts in zip(
            t.column("asset_id").to_pylist(),
            t.column("signal").to_pylist(),
            t.column("ts").cast("int64").to_pylist(),
            strict=True,
        )
    ]
    expected = {
        (f"m{i % 3}", sig, 1_767_000_000_000_000 + i * 10 + k)
        for i in range(n)
        for k in range(2)
        for sig in ("Speed", "Load")
    }
    assert len(rows) == len(expected) == 4 * n == stats.rows_published
    assert set(rows) == expected, "every published sample arrives exactly once"


async def test_tidm_agent_run_wires_mqtt_sources_from_settings(
    mqtt_broker: tuple[str, int],
    publisher: Publisher,
    unique_name: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run_agent` (what `tidm agent run` calls) builds an MqttSource per `agent.mqtt` entry."""
    import tidm.cli.processes
    from tidm.cli.settings import AgentProcessSettings

    built: list[MqttSource] = []

    class Recorded(MqttSource):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(tidm.cli.processes, "MqttSource", Recorded)
    host, port = mqtt_broker
    root = unique_name("cli")
    key = tmp_path / "agent.key"
    AgentIdentity.generate("gw-m").save(key)
    settings = AgentProcessSettings.model_validate(
        {
            "agent": {
                "agent_id": "gw-m",
                "key_file": str(key),
                "batch": {"max_rows": 1_000_000, "max_age_ms": 600_000},  # only the final flush publishes
                "mqtt": [
                    {
                        "host": host,
                        "port": port,
                        "client_id": unique_name("cli-src"),
                        "quarantine_dir": str(tmp_path / "q"),
                        "subscriptions": [
                            {
                                "topic": f"{root}/+",
                                "decoder": {"kind": "plain", "asset_id": "m", "signal_topic_level": 1},
                            }
                        ],
                    }
                ],
            },
            "transport": {"kind": "embedded", "path": str(tmp_path / "log")},
            "evidence": {"path": str(tmp_path / "evidence.db")},
            "health": {"port": None},
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(tidm.cli.processes.run_agent(settings, stop=stop))
    await _until(lambda: len(built) == 1 and built[0].connected.is_set())
    for i in range(20):
        publisher.publish(f"{root}/s{i}", str(i))
    await _until(lambda: built[0].stats.samples == 20)
    stop.set()
    stats = await asyncio.wait_for(task, 30)
    assert stats.rows_published == 20


async def test_backpressure_waits_instead_of_dropping(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    """A slow consumer and a hand-off of 2: paho's thread waits (TCP pushes back), nothing is lost."""
    topic = unique_name("slow")
    subs = [MqttSubscription(topic=topic, qos=1, decoder=PlainDecoderSettings(asset_id="a", signal="s"))]
    got: list[float | None] = []

    def slow_emit(_name: str, samples: Sequence[RawSample]) -> None:
        time.sleep(0.002)  # an agent that cannot keep up (blocking on purpose)
        got.extend(s.value for s in samples)

    source = MqttSource(_settings(mqtt_broker, unique_name("src"), tmp_path, subs, queue_size=2))
    async with Running(source, slow_emit):
        for i in range(300):
            publisher.client.publish(topic, str(i), qos=1)
        await _until(lambda: len(got) == 300, timeout=60)
    assert got == [float(i) for i in range(300)]
    assert source.stats.backpressure_waits > 0 and source.stats.dropped_on_stop == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnBroker:
    """A Mosquitto of this test's own (plain TCP), which the test may kill and restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.argv = [exe, "-c", str(folder / "mosquitto.conf")]
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_queued_messages 0\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
        )

    def start(self) -> None:
        with (self.folder / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_reconnects_with_backoff_after_the_broker_dies(
    tmp_path: Path, unique_name: Callable[..., str]
) -> None:
    broker = OwnBroker(tmp_path)
    broker.start()
    try:
        subs = [
            MqttSubscription(topic="r/#", decoder=PlainDecoderSettings(asset_id="a", signal_topic_level=-1))
        ]
        source = MqttSource(_settings(("127.0.0.1", broker.port), unique_name("src"), tmp_path, subs))
        got = Collector()
        async with Running(source, got):
            for round_ in range(3):
                pub = Publisher("127.0.0.1", broker.port, unique_name("pub"))
                try:
                    await _until(source.connected.is_set)
                    pub.publish(f"r/round{round_}", str(round_))
                    await _until(lambda: len(got.samples) == round_ + 1)  # noqa: B023 - awaited here
                finally:
                    pub.close()
                broker.kill()
                await _until(lambda: not source.connected.is_set())
                failures = source.stats.connect_failures
                # At least one failed attempt against the dead port before the broker is back.
                await _until(lambda: source.stats.connect_failures > failures)  # noqa: B023 - awaited here
                broker.start()
            await _until(source.connected.is_set)
        assert [s.signal for s in got.samples] == ["round0", "round1", "round2"]
        assert source.stats.reconnects == 3 and source.stats.connect_failures >= 1
    finally:
        broker.kill()


async def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(
    mqtt_broker: tuple[str, int], publisher: Publisher, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    """A proxy in front of Mosquitto answers MQTT 5 CONNECTs like a 3.1.1-only broker (CONNACK 0x01)."""
    host, port = mqtt_broker
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        i = 1
        while first[i] & 0x80:  # remaining-length varint
            i += 1
        level = first[i + 1 + 6]  # after the length: 00 04 'MQTT' then the protocol level
        if level == 5:
            writer.write(b"\x20\x02\x00\x01")  # 3.1.1 CONNACK: unacceptable protocol version
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, port)
        up_writer.write(first)
        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    topic = unique_name("old")
    subs = [MqttSubscription(topic=topic, decoder=PlainDecoderSettings(asset_id="a", signal="s"))]
    source = MqttSource(_settings(("127.0.0.1", proxy_port), unique_name("src"), tmp_path, subs))
    got = Collector()
    try:
        async with Running(source, got):
            assert source.stats.protocol == "3.1.1"
            publisher.publish(topic, "7")
            await _until(lambda: len(got.samples) == 1)
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()
    assert got.samples[0].value == 7.0
