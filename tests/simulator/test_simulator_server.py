"""The simulator against a real asyncua client on localhost (self-contained: no external services)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from tidm.simulator import (
    AssetConfig,
    ProducedSample,
    SignalConfig,
    Simulator,
    SimulatorConfig,
    SimulatorStartError,
    SimulatorStateError,
    SimulatorTimeoutError,
    read_produced,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BAD_NO_COMMUNICATION = ua.StatusCodes.BadNoCommunication

Observed = tuple[int, Any, int]  # (source ts µs, value or text, status code)


def _us(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _resolve(expanded: str, index: int) -> ua.NodeId:
    parsed = ua.NodeId.from_string(expanded)
    return ua.NodeId(parsed.Identifier, index)


def _expected(produced: list[ProducedSample]) -> dict[tuple[str, str], list[Observed]]:
    out: dict[tuple[str, str], list[Observed]] = defaultdict(list)
    for s in produced:
        out[(s.asset_id, s.signal)].append(
            (s.ts_us, s.value if s.value_text is None else s.value_text, s.status_code)
        )
    return out


class _Recorder:
    """Subscription handler keeping every notification per node, in arrival order."""

    def __init__(self, keys: dict[ua.NodeId, tuple[str, str]]) -> None:
        self.keys = keys
        self.seen: dict[tuple[str, str], list[Observed]] = defaultdict(list)

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        self.seen[self.keys[node.nodeid]].append((_us(dv.SourceTimestamp), val, dv.StatusCode.value))

    def count(self) -> int:
        return sum(len(v) for v in self.seen.values())


async def _subscribe_all(client: Client, sim: Simulator, queue_size: int = 10_000) -> _Recorder:
    """Monitor every simulated variable with trigger StatusValueTimestamp, so repeats are reported."""
    index = await client.get_namespace_index(sim.namespace_uri)
    keys = {_resolve(expanded, index): key for key, expanded in sim.node_ids().items()}
    recorder = _Recorder(keys)
    sub = await client.create_subscription(20, recorder)
    trigger = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
    requests = [
        ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=handle,
                SamplingInterval=0,
                QueueSize=queue_size,
                DiscardOldest=True,
                Filter=trigger,
            ),
        )
        for handle, node_id in enumerate(keys, start=1)
    ]
    results = await sub.create_monitored_items(requests)
    assert all(isinstance(r, int) for r in results), results
    return recorder


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _faulty_config(**fields: Any) -> SimulatorConfig:
    pump = AssetConfig(
        asset_id="urn:tidm:asset:pump-001",
        name="Pump001",
        signals=(
            SignalConfig(
                name="DischargePressure",
                unit="bar",
                offset=6,
                noise_std=0.1,
                spike_probability=0.05,
                spike_magnitude=5,
                update_period_ms=20,
            ),
            SignalConfig(
                name="Stuck", unit="degC", stuck_probability=0.3, stuck_length=3, update_period_ms=20
            ),
            SignalConfig(
                name="GapBad", gap_probability=0.2, gap_length=2, gap_mode="bad_status", update_period_ms=40
            ),
            SignalConfig(name="GapSkip", gap_probability=0.2, gap_length=3, update_period_ms=20),
            SignalConfig(name="Parts", kind="counter", period_s=0.1, update_period_ms=20),
            SignalConfig(
                name="Mode", kind="text-state", period_s=0.2, stuck_probability=0.2, update_period_ms=40
            ),
        ),
    )
    fan = AssetConfig(
        asset_id="urn:tidm:asset:fan-001",
        name="Fan001",
        signals=(SignalConfig(name="Speed", unit="rpm", kind="ramp", amplitude=1500, update_period_ms=20),),
    )
    return SimulatorConfig(assets=(pump, fan), seed=42, **fields)


async def test_client_receives_exactly_the_produced_samples(tmp_path: Path) -> None:
    ticks = 60
    record = tmp_path / "produced.jsonl"
    config = _faulty_config(max_ticks=ticks, start_paused=True, record_path=record)
    async with Simulator(config) as sim, Client(sim.endpoint) as client:
        recorder = await _subscribe_all(client, sim)
        # A plain subscribe_data_change (no filter) for contrast: asyncua's server then applies
        # DataChangeTrigger.StatusValue and drops a stuck sample, whose value repeats.
        index = await client.get_namespace_index(sim.namespace_uri)
        stuck_node = client.get_node(_resolve(sim.node_ids()[("urn:tidm:asset:pump-001", "Stuck")], index))
        plain = _Recorder({stuck_node.nodeid: ("urn:tidm:asset:pump-001", "Stuck")})
        plain_sub = await client.create_subscription(20, plain)
        await plain_sub.subscribe_data_change(stuck_node, queuesize=10_000)
        # The first tick was written by start(): its values are what the new monitored items report.
        await _until(lambda: recorder.count() == config.signal_count and plain.count() == 1)
        sim.resume()
        await sim.wait_ticks(ticks, timeout=10)
        expected = _expected(sim.produced)
        total = sum(len(v) for v in expected.values())
        await _until(lambda: recorder.count() >= total)
        await asyncio.sleep(0.1)  # a few publishing intervals: any duplicate would show up now

        assert sim.finished
        assert dict(recorder.seen) == dict(expected)
        assert read_produced(record) == sim.produced

        # The run exercised every fault (values depend only on the seed, so this is deterministic).
        pump = "urn:tidm:asset:pump-001"
        stuck = expected[(pump, "Stuck")]
        assert any(a[1] == b[1] and a[0] < b[0] for a, b in zip(stuck, stuck[1:], strict=False))
        assert any(
            status == _BAD_NO_COMMUNICATION and value is None
            for _, value, status in expected[(pump, "GapBad")]
        )
        assert len(expected[(pump, "GapSkip")]) < ticks
        unchanged = sum(a[1] == b[1] for a, b in zip(stuck, stuck[1:], strict=False))
        assert len(plain.seen[(pump, "Stuck")]) == len(stuck) - unchanged
        assert len(expected[(pump, "GapBad")]) == ticks // 2
        assert {value for _, value, _ in expected[(pump, "Mode")]} <= {"IDLE", "RUNNING", "STOPPED"}


async def test_address_space_properties_and_limits() -> None:
    config = _faulty_config(limits={"max_nodes_per_read": 250, "max_monitored_item_queue_size": 64})
    async with Simulator(config) as sim, Client(sim.endpoint) as client:
        index = await client.get_namespace_index(sim.namespace_uri)
        assert index == sim.namespace_index == 2
        assets = {}
        for child in await client.nodes.objects.get_children():
            name = await child.read_browse_name()
            if name.NamespaceIndex == index:
                assets[name.Name] = child
        assert set(assets) == {"Pump001", "Fan001"}
        asset_id = await (await assets["Pump001"].get_child(f"{index}:AssetId")).read_value()
        assert asset_id == "urn:tidm:asset:pump-001"

        pressure = client.get_node(_resolve(sim.node_ids()[(asset_id, "DischargePressure")], index))
        assert pressure.nodeid == ua.NodeId("Pump001.DischargePressure", index)
        assert await (await pressure.get_child(f"{index}:Unit")).read_value() == "bar"
        assert await (await pressure.get_child(f"{index}:SignalId")).read_value() == "DischargePressure"
        assert await pressure.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        mode = client.get_node(_resolve(sim.node_ids()[(asset_id, "Mode")], index))
        assert await mode.read_data_type() == ua.NodeId(ua.ObjectIds.String)

        dv = await pressure.read_data_value()
        last = [s for s in sim.produced if s.signal == "DischargePressure"][-1]
        # The read may land between two ticks: the value is one of the produced samples.
        produced = {(s.ts_us, s.value) for s in sim.produced if s.signal == "DischargePressure"}
        assert (_us(dv.SourceTimestamp), dv.Value.Value) in produced
        assert last.ts_us >= _us(dv.SourceTimestamp)

        limit = client.get_node(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        assert await limit.read_value() == 250
        # The queue-size cap is enforced: asyncua revises a larger request down to it.
        sub = await client.create_subscription(100, None)
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=pressure.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Disabled,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=1, QueueSize=1_000),
        )
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub.subscription_id, ItemsToCreate=[request]
        )
        (result,) = await client.uaclient.create_monitored_items(params)
        assert result.StatusCode.is_good()
        assert result.RevisedQueueSize == 64


async def test_namespace_index_follows_extra_namespaces() -> None:
    config = SimulatorConfig(extra_namespaces_before=("urn:other:a", "urn:other:b"), max_ticks=1)
    async with Simulator(config) as sim, Client(sim.endpoint) as client:
        assert sim.namespace_index == 4
        index = await client.get_namespace_index("urn:tidm:simulator")
        assert index == 4
        ((key, expanded),) = sim.node_ids().items()
        assert expanded == "nsu=urn:tidm:simulator;s=Asset001.Value"
        dv = await client.get_node(_resolve(expanded, index)).read_data_value()
        assert (key[0], key[1], _us(dv.SourceTimestamp), dv.Value.Value) == sim.produced[0][:4]


async def test_pause_resume_max_ticks_and_timestamps() -> None:
    config = SimulatorConfig.fleet(3, 4, period_ms=10, max_ticks=30)
    async with Simulator(config) as sim:
        await sim.wait_ticks(5)
        sim.pause()
        await sim.wait_idle()
        paused_at = sim.ticks
        await asyncio.sleep(0.1)
        assert sim.ticks == paused_at
        with pytest.raises(SimulatorTimeoutError, match="paused=True"):
            await sim.wait_ticks(paused_at + 1, timeout=0.1)
        sim.resume()
        assert await sim.wait_ticks(30) == 30
        assert sim.finished
        await asyncio.sleep(0.05)
        assert sim.ticks == 30
        with pytest.raises(SimulatorStateError, match="max_ticks=30"):
            await sim.wait_ticks(31)
        assert len(sim.produced) == sim.stats.samples == 30 * 12
        last: dict[tuple[str, str], int] = {}
        for s in sim.produced:
            assert s.ts_us > last.get((s.asset_id, s.signal), 0)
            last[(s.asset_id, s.signal)] = s.ts_us


async def test_restart_keeps_port_log_and_increasing_timestamps() -> None:
    sim = Simulator(SimulatorConfig.fleet(1, 2, period_ms=10))
    with pytest.raises(SimulatorStateError):
        _ = sim.endpoint
    assert len(sim.node_ids()) == 2  # known before start: they do not depend on the index
    await sim.start()
    try:
        endpoint = sim.endpoint
        assert sim.namespace_index == 2
        await sim.wait_ticks(3)
        with pytest.raises(SimulatorStateError, match="already started"):
            await sim.start()
        squatter = Simulator(SimulatorConfig(port=int(endpoint.rsplit(":", 1)[1])))
        with pytest.raises(SimulatorStartError, match="cannot listen"):
            await squatter.start()

        first_run = sim.ticks
        await sim.restart(extra_namespaces_before=["urn:other"], downtime_s=0.05)
        assert sim.endpoint == endpoint
        assert sim.namespace_index == 3
        await sim.wait_ticks(first_run + 3)
        async with Client(sim.endpoint) as client:
            assert await client.get_namespace_index(sim.namespace_uri) == 3
            key, expanded = next(iter(sim.node_ids().items()))
            dv = await client.get_node(_resolve(expanded, 3)).read_data_value()
            assert _us(dv.SourceTimestamp) in {s.ts_us for s in sim.produced if (s.asset_id, s.signal) == key}
    finally:
        await sim.stop()
    per_signal: dict[str, list[int]] = defaultdict(list)
    for s in sim.produced:
        per_signal[s.signal].append(s.ts_us)
    assert all(ts == sorted(set(ts)) for ts in per_signal.values())


def test_runs_as_its_own_process(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("assets:\n  - {name: Pump001, asset_id: 'urn:tidm:asset:pump-001'}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidm.simulator", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["endpoint"].startswith("opc.tcp://127.0.0.1:")
        assert info["namespace_index"] == 2
        assert info["variables"] == 1

        async def read() -> Any:
            async with Client(info["endpoint"]) as client:
                node = client.get_node(ua.NodeId("Pump001.Value", info["namespace_index"]))
                return await node.read_value()

        assert isinstance(asyncio.run(read()), float)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_bad_config_file_exits_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("port: -1\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tidm.simulator", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "port" in proc.stderr
    assert "greater than or equal to 0" in proc.stderr


def _self_signed(directory: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    cert = generate_self_signed_app_certificate(key, uri, {}, names, extended=[usage])
    key_path, cert_path = directory / f"{name}.pem", directory / f"{name}.der"
    key_path.write_bytes(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


async def test_basic256sha256_endpoint(tmp_path: Path) -> None:
    server_cert, server_key = _self_signed(
        tmp_path, "server", "urn:tidm:simulator:server", ExtendedKeyUsageOID.SERVER_AUTH
    )
    client_cert, client_key = _self_signed(
        tmp_path, "client", "urn:tidm:test:client", ExtendedKeyUsageOID.CLIENT_AUTH
    )
    security = {"mode": "basic256sha256", "certificate": server_cert, "private_key": server_key}
    async with Simulator(SimulatorConfig(security=security, max_ticks=1)) as sim:
        client = Client(sim.endpoint)
        client.application_uri = "urn:tidm:test:client"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(client_cert),
            private_key=str(client_key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        async with client:
            node = client.get_node(ua.NodeId("Asset001.Value", sim.namespace_index))
            assert await node.read_value() == sim.produced[0].value
        # No unsecured endpoint is offered.
        with pytest.raises(ua.UaError, match="No matching endpoints"):
            async with Client(sim.endpoint):
                pass
