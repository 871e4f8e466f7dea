"""The services of deploy/dev/services.py speak the real protocols, and `up` is idempotent."""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from minio import Minio
from minio.commonconfig import ENABLED
from minio.error import S3Error
from minio.versioningconfig import VersioningConfig
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
SERVICES_PY = ROOT / "deploy" / "dev" / "services.py"
STATE_FILE = ROOT / ".dev-services" / "state.json"


def _services_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVICES_PY), *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_unique_name_is_a_valid_topic_and_bucket(unique_name: Callable[..., str]) -> None:
    names = {unique_name("Some Prefix_with.Stuff"), unique_name(), unique_name("x" * 100), unique_name("--")}
    assert len(names) == 4
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{2,62}", name), name


@pytest.mark.integration
async def test_kafka_produce_consume_round_trip(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("roundtrip")
    async with asyncio.timeout(90):
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"payload", key=b"key", headers=[("h", b"v")])
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=unique_name("group"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            record = await consumer.getone()
            await consumer.commit()
        finally:
            await consumer.stop()

    assert (record.topic, record.partition, record.offset) == (topic, sent.partition, sent.offset)
    assert (record.key, record.value, list(record.headers)) == (b"key", b"payload", [("h", b"v")])


@pytest.mark.integration
def test_s3_put_get(s3_client: Minio, s3_bucket: str) -> None:
    data = os.urandom(4096)
    s3_client.put_object(s3_bucket, "raw/part-0.bin", io.BytesIO(data), len(data))
    response = s3_client.get_object(s3_bucket, "raw/part-0.bin")
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    assert body == data
    assert [obj.object_name for obj in s3_client.list_objects(s3_bucket, recursive=True)] == [
        "raw/part-0.bin"
    ]


@pytest.mark.integration
def test_s3_versioning_and_object_lock(
    s3_client: Minio, s3_bucket: str, unique_name: Callable[..., str]
) -> None:
    s3_client.set_bucket_versioning(s3_bucket, VersioningConfig(ENABLED))
    first = s3_client.put_object(s3_bucket, "k", io.BytesIO(b"1"), 1)
    second = s3_client.put_object(s3_bucket, "k", io.BytesIO(b"2"), 1)
    versions = {obj.version_id for obj in s3_client.list_objects(s3_bucket, include_version=True)}
    assert versions == {first.version_id, second.version_id}

    locked = unique_name("locked")
    s3_client.make_bucket(locked, object_lock=True)
    try:
        held = s3_client.put_object(locked, "evidence", io.BytesIO(b"e"), 1, legal_hold=True)
        with pytest.raises(S3Error) as refused:
            s3_client.remove_object(locked, "evidence", version_id=held.version_id)
        assert refused.value.code == "AccessDenied"
        s3_client.disable_object_legal_hold(locked, "evidence", version_id=held.version_id)
        s3_client.remove_object(locked, "evidence", version_id=held.version_id)
    finally:
        s3_client.remove_bucket(locked)


@pytest.mark.integration
def test_mqtt_qos1_publish_subscribe(mqtt_broker: tuple[str, int], unique_name: Callable[..., str]) -> None:
    host, port = mqtt_broker
    topic = f"tidm/test/{unique_name('qos1')}"
    connected, subscribed = threading.Event(), threading.Event()
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        connected.set()

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received.put(message)

    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_name("sub"))
    subscriber.on_connect, subscriber.on_subscribe, subscriber.on_message = (
        on_connect,
        on_subscribe,
        on_message,
    )
    subscriber.connect(host, port, keepalive=10)
    subscriber.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
        subscriber.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"

        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_name("pub"))
        publisher.connect(host, port, keepalive=10)
        publisher.loop_start()
        try:
            info = publisher.publish(topic, b"reading", qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published(), "no PUBACK"
        finally:
            publisher.disconnect()
            publisher.loop_stop()

        message = received.get(timeout=10)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()

    assert (message.topic, message.payload, message.qos) == (topic, b"reading", 1)


@pytest.mark.integration
def test_up_twice_keeps_the_same_processes(dev_services: dict[str, dict[str, Any]]) -> None:
    pids = {name: entry["pid"] for name, entry in dev_services.items()}
    assert set(pids) == {"kafka", "s3", "mqtt"}
    for _ in range(2):
        done = _services_cli("up")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("already running") == 3, done.stdout
        state = json.loads(STATE_FILE.read_text(encoding="utf-8"))
        assert {name: entry["pid"] for name, entry in state.items()} == pids


@pytest.mark.integration
def test_status_and_env(dev_services: dict[str, dict[str, Any]]) -> None:
    status = _services_cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    env = _services_cli("env")
    assert env.returncode == 0, env.stderr
    assert f"export TIDM_KAFKA__BOOTSTRAP={dev_services['kafka']['bootstrap']}" in env.stdout.splitlines()
    assert f"export TIDM_MQTT__PORT={dev_services['mqtt']['port']}" in env.stdout.splitlines()


def test_a_service_started_through_a_linked_run_directory_is_recognised(tmp_path: Path) -> None:
    """Worktrees share the run directory through a `.dev-services` symlink; a service whose command line
    names the other checkout's path is the same service, not a stranger to restart."""
    from tests.conftest import load_services_module

    services = load_services_module()
    real = tmp_path / "main" / ".dev-services"
    (real / "s3").mkdir(parents=True)
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".dev-services").symlink_to(real)
    linked = tmp_path / "wt" / ".dev-services" / "s3"
    cmdline = f"weed\0-logdir={real}/s3/logs\0mini\0-dir={real}/s3/data\0".encode()
    assert services._names_dir(cmdline, str(linked))
    assert services._names_dir(cmdline, str(real / "s3"))
    assert not services._names_dir(cmdline, str(tmp_path / "wt" / ".dev-services" / "kafka"))
    other = tmp_path / "other" / ".dev-services"
    (other / "s3").mkdir(parents=True)
    assert not services._names_dir(cmdline, str(other / "s3"))


@pytest.mark.integration
async def test_a_three_node_cluster_replicates_and_survives_a_killed_leader(
    kafka_cluster: Any, unique_name: Callable[..., str]
) -> None:
    """Topics TIDM creates on the cluster get RF 3 and min.insync.replicas 2; with the leader killed (-9), an
    acks=all idempotent producer still lands every record exactly once, and the node rejoins the ISR."""
    from tidm.ingest.transports import KafkaTransport

    topic = unique_name("cluster")
    transport = KafkaTransport(kafka_cluster.bootstrap, client_id="cluster-test", request_timeout_ms=10_000)
    async with asyncio.timeout(150):
        await transport.ensure_topics([topic], partitions=1)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
        await admin.start()
        try:
            (meta,) = await admin.describe_topics([topic])
            (part,) = meta["partitions"]
            assert sorted(part["replicas"]) == [1, 2, 3]
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            values = {name: value for name, value, *_ in configs[0].resources[0][4]}
            assert values["min.insync.replicas"] == "2"
            leader = int(part["leader"])

            producer = transport.producer()
            await producer.start()
            try:
                for i in range(200):
                    await producer.send(topic, f"v{i}".encode(), key=b"k")
                    if i == 100:
                        kafka_cluster.kill(leader)
            finally:
                await producer.stop()
            await asyncio.to_thread(kafka_cluster.start_node, leader)
            for _ in range(600):  # bounded: until the restarted node is back in the ISR
                (meta,) = await admin.describe_topics([topic])
                if leader in meta["partitions"][0]["isr"]:
                    break
                await asyncio.sleep(0.1)
            assert leader in meta["partitions"][0]["isr"]
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_cluster.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            values_read: list[bytes] = []
            while len(values_read) < 200:
                batch = await consumer.getmany(timeout_ms=1000)
                values_read += [r.value for rs in batch.values() for r in rs if r.value is not None]
        finally:
            await consumer.stop()
    assert values_read == [f"v{i}".encode() for i in range(200)]


@pytest.mark.integration
def test_cluster_cli_starts_and_stops_a_cluster_in_its_run_dir(tmp_path: Path) -> None:
    pytest.importorskip("aiokafka")
    if not (ROOT / ".cache" / "kafka" / "lib").is_dir():
        pytest.skip("no Kafka jars in .cache/kafka yet")
    run_dir = tmp_path / "cluster"
    try:
        up = _services_cli("up", "--kafka-brokers", "3", "--only", "kafka", "--run-dir", str(run_dir))
        assert up.returncode == 0, up.stderr + up.stdout
        recorded = json.loads((run_dir / "cluster.json").read_text())
        assert len(recorded["nodes"]) == 3
        assert f"TIDM_KAFKA__BOOTSTRAP={recorded['bootstrap']}" in up.stdout
    finally:
        down = _services_cli("down", "--kafka-brokers", "3", "--only", "kafka", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert not (run_dir / "cluster.json").exists()
    for node in recorded["nodes"].values():
        assert (
            not Path(f"/proc/{node['pid']}").exists() or "Z" in Path(f"/proc/{node['pid']}/stat").read_text()
        )
