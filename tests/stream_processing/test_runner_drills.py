"""Drills on real Kafka and S3 with `tidm job run` as an OS process: SIGKILL at random points, a second
replica joining mid-run, and on the 3-node cluster three replicas in one group (with 2 partitions, one
stands by) with one killed and one added. The lake must equal an uninterrupted run's: same keys, same
bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tidm.ingest import AgentIdentity, Provenance, TrustedAgents, new_batch_id, seal
from tidm.ingest.transports import KafkaTransport
from tidm.ingest.transports.embedded import partition_for_key
from tidm.semantics import samples_table
from tidm.storage import Lake

TIDM = [sys.executable, "-m", "tidm.cli.main"]
DAY_US = 1_764_288_000_000_000
BATCHES = 240
ROWS = 400
PARTITIONS = 2


def _balanced_assets() -> list[str]:
    """Four asset ids whose keys land two on each partition (Kafka's murmur2 partitioner)."""
    found: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for i in range(1000):
        name = f"asset-{i}"
        part = partition_for_key(name.encode(), PARTITIONS)
        if len(found[part]) < 2:
            found[part].append(name)
    return [a for pair in zip(*found.values(), strict=True) for a in pair]


ASSETS = _balanced_assets()


def _batch(identity: AgentIdentity, i: int) -> Any:
    asset = ASSETS[i % len(ASSETS)]
    n = ROWS
    start = i * n
    table = samples_table(
        ts_us=[DAY_US + (start + k) * 1000 for k in range(n)],
        recv_ts_us=[DAY_US + (start + k) * 1000 + 7 for k in range(n)],
        asset_id=[asset] * n,
        signal=[f"s{k % 5}" for k in range(n)],
        value=[float((start + k) % 101) for k in range(n)],
        value_text=[None] * n,
        quality=[1 if (start + k) % 31 == 0 else 0 for k in range(n)],
        status_code=[0] * n,
        seq=list(range(start, start + n)),
    )
    prov = Provenance(
        agent_id=identity.agent_id,
        site="plant",
        asset_id=asset,
        batch_id=new_batch_id(),
        sources=("opc.tcp://drill",),
        seq_first=start,
        seq_last=start + n - 1,
        rows=n,
        created_us=DAY_US,
    )
    return seal(table, prov, identity)


async def _publish(bootstrap: str, topic: str, identity: AgentIdentity) -> dict[int, int]:
    transport = KafkaTransport(bootstrap, client_id="drill-pub")
    await transport.ensure_topics([topic], partitions=PARTITIONS)
    producer = transport.producer()
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for i in range(BATCHES):
            sealed = _batch(identity, i)
            d = await producer.send(topic, sealed.value, key=sealed.key, headers=sealed.headers())
            ends[d.partition] = d.offset + 1
            if i % 10 == 9:
                await asyncio.sleep(0.3)  # spread CreateTime over several unit windows
    finally:
        await producer.stop()
    return ends


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            c = await consumer.committed(TopicPartition(topic, p))
            out[p] = c if c is not None else 0
        return out
    finally:
        await consumer.stop()


class Drill:
    def __init__(self, tmp: Path, bootstrap: str, s3: dict[str, str], bucket: str, topic: str) -> None:
        self.tmp, self.bootstrap, self.s3, self.bucket, self.topic = tmp, bootstrap, s3, bucket, topic
        self.identity = AgentIdentity.generate("drill-agent")
        trust = tmp / "trusted.json"
        registry = TrustedAgents(path=trust)
        registry.add(self.identity.agent_id, self.identity.public_key)
        registry.save(trust)
        self.env = {
            **os.environ,
            "TIDM_LAKE__ACCESS_KEY": s3["access_key"],
            "TIDM_LAKE__SECRET_KEY": s3["secret_key"],
        }

    def files(self, name: str, group: str) -> list[str]:
        spec = self.tmp / f"{name}-job.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": "drill",
                    "topics": [self.topic],
                    "group_id": group,
                    "steps": ["drop_bad_samples", {"rolling": {"window_n": 8, "output": "features"}}],
                    "unit_s": 1.0,
                    "unit_messages": 6,
                    "idle_s": 1.0,
                    "max_records": 7,
                }
            )
        )
        config = self.tmp / f"{name}-process.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "transport": {"kind": "kafka", "bootstrap": self.bootstrap, "partitions": PARTITIONS},
                    "evidence": {"path": str(self.tmp / f"{name}-evidence.db")},
                    "lake": {
                        "url": f"s3://{self.bucket}/{name}",
                        "endpoint": self.s3["endpoint"],
                        "region": self.s3["region"],
                    },
                    "trusted_agents": str(self.tmp / "trusted.json"),
                    "quarantine": "folder",
                    "quarantine_path": str(self.tmp / f"{name}-quarantine"),
                }
            )
        )
        return ["job", "run", "--spec", str(spec), "--config", str(config)]

    def start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.tmp / log_name).open("ab") as out:
            return subprocess.Popen([*TIDM, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def lake(self, name: str) -> Lake:
        return Lake.s3(
            bucket=self.bucket,
            prefix=name,
            endpoint=self.s3["endpoint"],
            access_key=self.s3["access_key"],
            secret_key=self.s3["secret_key"],
            region=self.s3["region"],
        )

    def snapshot(self, name: str) -> dict[str, str]:
        lake = self.lake(name)
        return {
            k: hashlib.sha256(lake.read_bytes(k)).hexdigest()
            for k in lake.list_keys()
            if not k.startswith("_")
        }

    def wait_done(self, group: str, ends: dict[int, int], procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if asyncio.run(_committed(self.bootstrap, group, self.topic)) == ends:
                return
            assert all(p.poll() is None for p in procs), (self.tmp / "ref.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"group {group} did not commit to {ends} in time")


class SlowProxy:
    """A TCP proxy that holds every chunk for `delay_s`: a slow object store, so a run lasts long
    enough for a second replica to join in the middle of it."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target, self.delay_s = target, delay_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closing = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.closing.set()
        self.server.close()
        for sock in self.sockets:
            sock.close()
        for t in self.threads:
            t.join(timeout=5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _reference(d: Drill, args: list[str], group: str, ends: dict[int, int]) -> None:
    """The uninterrupted run, in this process (same code and files as `tidm job run`)."""
    from tidm.cli.processes import load_job, run_job

    settings, spec = load_job(Path(args[3]), Path(args[5]))
    stop = asyncio.Event()
    task = asyncio.create_task(run_job(settings, spec, stop=stop))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.5)
        if await _committed(d.bootstrap, group, d.topic) == ends:
            break
    stop.set()
    await task


@pytest.fixture
def drill(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Drill, dict[int, int], dict[str, str], Any]:
    return _prepared(kafka_bootstrap, s3_config, s3_bucket, unique_name, tmp_path, monkeypatch)


@pytest.fixture
def cluster_drill(
    kafka_cluster: Any,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Drill, dict[int, int], dict[str, str], Any]:
    """The drill on the 3-node cluster (topic RF 3, min.insync.replicas 2)."""
    bootstrap = str(kafka_cluster.bootstrap)
    return _prepared(bootstrap, s3_config, s3_bucket, unique_name, tmp_path, monkeypatch)


def _prepared(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Drill, dict[int, int], dict[str, str], Any]:
    """Batches published, and the lake of one uninterrupted replica, to compare a drill's lake with."""
    topic = unique_name("drill")
    d = Drill(tmp_path, kafka_bootstrap, s3_config, s3_bucket, topic)
    ends = asyncio.run(_publish(kafka_bootstrap, topic, d.identity))
    monkeypatch.setenv("TIDM_LAKE__ACCESS_KEY", s3_config["access_key"])
    monkeypatch.setenv("TIDM_LAKE__SECRET_KEY", s3_config["secret_key"])
    group = unique_name("ref")
    asyncio.run(_reference(d, d.files("ref", group), group, ends))
    assert asyncio.run(_committed(kafka_bootstrap, group, topic)) == ends
    expected = d.snapshot("ref")
    assert len(expected) > 20
    return d, ends, expected, unique_name


@pytest.mark.integration
def test_exactly_once_under_ten_sigkills(drill: tuple[Drill, dict[int, int], dict[str, str], Any]) -> None:
    d, ends, expected, unique_name = drill
    group = unique_name("kill")
    args = d.files("kill", group)
    rng = random.Random(6)  # noqa: S311 - reproducible kill points, not cryptography
    lake = d.lake("kill")
    progress = []
    for _ in range(10):
        before = len(lake.list_keys())
        proc = d.start(args, "kill.log")
        # Kill while it works: after it lands something new, at a random point of what follows
        # (mid-unit, between objects of a unit, between evidence and commit, ...).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lake.list_keys()) <= before and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        committed = asyncio.run(_committed(d.bootstrap, group, d.topic))
        progress.append(sum(committed.values()))
    mid_run = [p for p in progress if 0 < p < sum(ends.values())]
    assert len(mid_run) >= 7, f"too few kills fell inside the run: committed after each {progress}"
    final = d.start(args, "kill.log")
    try:
        d.wait_done(group, ends, [final])
    finally:
        _stop(final)
    assert d.snapshot("kill") == expected


@pytest.mark.integration
def test_a_second_replica_joining_mid_run_changes_nothing(
    drill: tuple[Drill, dict[int, int], dict[str, str], Any],
) -> None:
    d, ends, expected, unique_name = drill
    group = unique_name("pair")
    endpoint = urlsplit(d.s3["endpoint"])
    proxy = SlowProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80), delay_s=0.01)
    direct, d.s3 = d.s3, {**d.s3, "endpoint": f"http://127.0.0.1:{proxy.port}"}
    args = d.files("pair", group)
    lake = d.lake("pair")
    first = d.start(args, "pair-1.log")
    second = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lake.list_keys() and first.poll() is None:
            time.sleep(0.1)
        second = d.start(args, "pair-2.log")  # joins mid-run: the group rebalances
        d.wait_done(group, ends, [first, second])
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
        proxy.close()
        d.s3 = direct
    logs = [(d.tmp / f"pair-{i}.log").read_text() for i in (1, 2)]
    batches = [int(re.search(r"job stopped: (\d+) batches", text).group(1)) for text in logs]  # type: ignore[union-attr]
    assert batches[0] > 0 and batches[1] > 0, f"both replicas worked: {batches}"
    assert batches[0] < BATCHES, "the first replica gave partitions away"
    assert d.snapshot("pair") == expected


@pytest.mark.integration
def test_three_replicas_on_a_cluster_one_killed_one_added_land_the_single_replica_lake(
    cluster_drill: tuple[Drill, dict[int, int], dict[str, str], Any],
) -> None:
    d, ends, expected, unique_name = cluster_drill
    group = unique_name("trio")
    endpoint = urlsplit(d.s3["endpoint"])
    proxy = SlowProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80), delay_s=0.01)
    direct, d.s3 = d.s3, {**d.s3, "endpoint": f"http://127.0.0.1:{proxy.port}"}
    args = d.files("trio", group)
    lake = d.lake("trio")
    procs = [d.start(args, f"trio-{i}.log") for i in range(3)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(lake.list_keys()) < 3 and procs[0].poll() is None:
            time.sleep(0.1)
        procs[0].send_signal(signal.SIGKILL)  # one replica crashes under load ...
        procs[0].wait(timeout=30)
        at_kill = sum(asyncio.run(_committed(d.bootstrap, group, d.topic)).values())
        assert at_kill < sum(ends.values()), "the kill came after the run"
        procs.append(d.start(args, "trio-3.log"))  # ... and another joins: the group rebalances twice
        d.wait_done(group, ends, procs[1:])
    finally:
        for proc in procs[1:]:
            _stop(proc)
        proxy.close()
        d.s3 = direct
    assert 0 < sum(asyncio.run(_committed(d.bootstrap, group, d.topic)).values()) == sum(ends.values())
    assert d.snapshot("trio") == expected
