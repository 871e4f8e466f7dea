"""No desensitized value leaves the plant in clear: the real pipeline with a policy, then a scan of
everything downstream (transport log bytes and decoded batches, the lake, evidence, captured logs)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from tests.lineage import landed_rows

from tidm.cli.pipeline import PipelineResult, run_pipeline
from tidm.edge_agent import AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.edge_agent.config import PseudonymKeySettings
from tidm.edge_agent.policy import load_policy
from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity, FolderQuarantine, Provenance
from tidm.ingest.envelope import PROVENANCE_KEY
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport, Transport
from tidm.ingest.transports.base import Message
from tidm.simulator import AssetConfig, SignalConfig, SimulatorConfig
from tidm.storage import Lake
from tidm.stream_processing import JobSettings

OPERATORS = ("BADGE-7731-ALICE", "BADGE-4410-BOBBY")
BATCHES = ("LOT-ZX81-QQ", "LOT-YY42-PP")
RECIPE = 8675309.125  # dropped by level (the classification map makes Recipe* core)
SERIAL = 4815162342.0  # pseudonymized as a number
KEY = b"pseudonym-key-epoch-2-0123456789abcdef"
OLD_KEY = b"pseudonym-key-epoch-1-0123456789abcdef"
ASSETS = ("urn:tidm:asset:press-01", "urn:tidm:asset:press-02")
TICKS = 30

POLICY = """
id: plant-1-egress
version: 2
default: pass
rules:
  - {match: {min_level: core}, action: drop}
  - {match: {signal: "OperatorBadge"}, action: pseudonymize, key: operators}
  - {match: {signal: "SerialNo"}, action: pseudonymize, key: operators, length: 20}
  - {match: {signal: "BatchCode"}, action: mask, fixed_length: 6}
  - {match: {signal: "Pressure"}, action: generalize, step: 10}
"""

CLASSIFICATION = """
signals:
  - {signal: "Recipe*", level: core}
  - {signal: "OperatorBadge", level: important}
"""


def _sim() -> SimulatorConfig:
    def sig(name: str, **kw: object) -> SignalConfig:
        return SignalConfig.model_validate({"name": name, "update_period_ms": 100, **kw})

    signals = (
        sig("OperatorBadge", kind="text-state", states=OPERATORS, period_s=0.7),
        sig("BatchCode", kind="text-state", states=BATCHES, period_s=1.1),
        sig("RecipeSetting", kind="sine", amplitude=0.0, offset=RECIPE),
        sig("SerialNo", kind="counter", amplitude=0.0, offset=SERIAL),
        sig("Pressure", kind="sine", amplitude=37.0, offset=1000.0, period_s=2.0),
        sig("Temperature", kind="ramp", amplitude=10.0, offset=20.0),
    )
    assets = tuple(
        AssetConfig(asset_id=a, name=f"Press{i:02d}", signals=signals) for i, a in enumerate(ASSETS, 1)
    )
    return SimulatorConfig(assets=assets, seed=4, max_ticks=TICKS)


def _files(tmp_path: Path) -> AgentSettings:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "classification.yaml").write_text(CLASSIFICATION, encoding="utf-8")
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "operators@1").write_bytes(OLD_KEY)
    (secrets / "operators@2").write_bytes(KEY + b"\n")
    return AgentSettings(
        agent_id="agent-ds",
        site="plant-1",
        batch=BatchSettings(max_rows=200, max_age_ms=300),
        opcua=[OpcUaSourceSettings(endpoint="opc.tcp://set-by-pipeline", security="none")],
        policy=tmp_path / "policy.yaml",
        classification=tmp_path / "classification.yaml",
        pseudonym_keys=PseudonymKeySettings(folder=secrets),
    )


def _pseudonym(key: bytes, clear: str, length: int = 16) -> str:
    return "ps:" + hmac.new(key, clear.encode(), hashlib.sha256).hexdigest()[:length]


def _needles(clear_text: set[str], clear_numbers: set[float]) -> list[bytes]:
    """Byte patterns that would betray a clear value: UTF-8 text, float64 LE/BE, and decimal text."""
    out = [t.encode() for t in clear_text]
    for v in clear_numbers:
        out += [struct.pack("<d", v), struct.pack(">d", v), repr(v).encode(), f"{v:g}".encode()]
    return out


def _scan(where: str, data: bytes, needles: list[bytes]) -> None:
    found = [n for n in needles if n in data]
    assert not found, f"clear value(s) {found!r} found in {where}"


def _uncompressed_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=None)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


async def _read_all(transport: Transport, topic: str, group: str, expect: int) -> list[Message]:
    consumer = transport.consumer([topic], group_id=group)
    await consumer.start()
    got: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


async def _check_no_clear_values(
    result: PipelineResult,
    *,
    transport: Transport,
    topic: str,
    audit_group: str,
    lake: Lake,
    evidence: SqliteEvidenceLog,
    logs: str,
    raw_files: list[Path],
    policy_path: Path,
) -> None:
    produced = result.produced
    assert len(produced) == len(ASSETS) * 6 * TICKS
    sensitive = {"OperatorBadge", "BatchCode", "RecipeSetting", "SerialNo"}
    clear_text = {p.value_text for p in produced if p.signal in sensitive and p.value_text}
    clear_numbers = {p.value for p in produced if p.signal in sensitive and p.value is not None}
    # The simulator really produced the clear values the scan looks for.
    assert clear_text == set(OPERATORS) | set(BATCHES)
    assert clear_numbers == {RECIPE, SERIAL}
    needles = _needles(clear_text, clear_numbers)

    # 1. The transport: raw log bytes, and every batch decoded (zstd IPC decompressed) and re-encoded plain.
    for path in raw_files:
        _scan(str(path), path.read_bytes(), needles)
    messages = await _read_all(transport, topic, audit_group, result.agent.batches_published)
    assert len(messages) == result.agent.batches_published > 0
    policy = load_policy(policy_path)
    provenances = []
    for m in messages:
        _scan(f"message {m.where()} bytes", m.value, needles)
        table = pa.ipc.open_stream(pa.py_buffer(m.value)).read_all()
        _scan(f"decoded batch {m.where()}", _uncompressed_ipc(table), needles)
        prov = Provenance.from_json(table.schema.metadata[PROVENANCE_KEY], where=m.where())
        provenances.append(prov)
        for col in ("value_text", "signal", "asset_id"):
            assert not clear_text & set(map(str, table.column(col).to_pylist())), m.where()
        assert not clear_numbers & set(table.column("value").to_pylist()), m.where()
    # Every batch is stamped with the policy (id, version, canonical SHA-256), the key id and its level.
    assert {(p.policy_id, p.policy_version, p.policy_hash) for p in provenances} == {
        ("plant-1-egress", "2", policy.sha256)
    }
    assert {p.key_ids for p in provenances} == {("operators@2",)}
    assert {p.classification for p in provenances} == {"important"}

    # 2. The lake: raw Parquet bytes and the decoded rows.
    keys = lake.list_keys("clean") + lake.list_keys("rejected")
    assert keys
    for key in keys:
        _scan(f"lake object {key}", lake.read_bytes(key), needles)
    rows = landed_rows(lake)
    landed = lake.read_table("clean")
    for table in (landed, lake.read_table("rejected")):
        if table.num_rows:
            _scan("lake rows", _uncompressed_ipc(table), needles)

    # 3. Evidence: every entry's canonical bytes.
    for logged in evidence.read():
        _scan(f"evidence entry {logged.index}", logged.canonical, needles)
    # 4. Logs of every TIDM component downstream of the plant.
    _scan("captured logs", logs.encode(), needles)

    # What did arrive is right: pseudonyms stable per key (the epoch in force), masks, generalization,
    # dropped samples counted exactly and absent, the rest landed once.
    by_signal: dict[str, list[tuple[float | None, str | None]]] = {}
    for s, v, t in zip(
        landed.column("signal").to_pylist(),
        landed.column("value").to_pylist(),
        landed.column("value_text").to_pylist(),
        strict=True,
    ):
        by_signal.setdefault(s, []).append((v, t))
    produced_by = Counter(p.signal for p in produced)
    assert "RecipeSetting" not in set(rows.column("signal").to_pylist())
    assert {t for _v, t in by_signal["OperatorBadge"]} == {_pseudonym(KEY, o) for o in OPERATORS}
    assert {t for _v, t in by_signal["OperatorBadge"]}.isdisjoint({_pseudonym(OLD_KEY, o) for o in OPERATORS})
    assert {t for _v, t in by_signal["SerialNo"]} == {_pseudonym(KEY, repr(SERIAL), 20)}
    assert {v for v, _t in by_signal["SerialNo"]} == {None}
    assert {t for _v, t in by_signal["BatchCode"]} == {"******"}
    assert all(v is not None and v % 10 == 0 for v, _t in by_signal["Pressure"])
    assert len(by_signal["Temperature"]) == produced_by["Temperature"]
    creates = [e.entry for e in evidence.read() if e.entry.event == EventType.CREATE]
    dropped = sum(c.attributes["desensitized"]["drop"] for c in creates)
    assert dropped == produced_by["RecipeSetting"]
    assert sum(c.attributes["desensitized"]["pseudonymize"] for c in creates) == (
        produced_by["OperatorBadge"] + produced_by["SerialNo"]
    )
    assert {c.attributes["policy_hash"] for c in creates} == {policy.sha256}
    assert rows.num_rows == len(produced) - dropped


async def test_no_clear_value_downstream_on_embedded_transport(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidm")
    topic = "tidm.samples"
    settings = _files(tmp_path).model_copy(update={"topic": topic})
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    lake = Lake.local(tmp_path / "lake")
    transport = EmbeddedTransport(tmp_path / "log", partitions=2)
    result = await run_pipeline(
        sim_config=_sim(),
        agent_settings=settings,
        identity=AgentIdentity.generate("agent-ds"),
        transport=transport,
        lake=lake,
        evidence=evidence,
        quarantine=lambda _p: FolderQuarantine(tmp_path / "quarantine", evidence, actor="job:ds"),
        job_settings=JobSettings(name="ds", topics=(topic,), group_id="ds"),
    )
    assert result.job.quarantined == 0 and result.job.chain_flags == 0
    logs = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records if not r.name.startswith("tidm.simulator")
    )
    await _check_no_clear_values(
        result,
        transport=transport,
        topic=topic,
        audit_group="audit",
        lake=lake,
        evidence=evidence,
        logs=logs,
        raw_files=[p for p in (tmp_path / "log").rglob("*") if p.is_file()],
        policy_path=tmp_path / "policy.yaml",
    )
    evidence.close()


@pytest.mark.integration
async def test_no_clear_value_downstream_on_kafka(
    kafka_bootstrap: str,
    unique_name,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidm")
    topic = unique_name("ds-samples")
    settings = _files(tmp_path).model_copy(update={"topic": topic})
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    lake = Lake.local(tmp_path / "lake")
    transport = KafkaTransport(kafka_bootstrap, client_id="ds")
    result = await run_pipeline(
        sim_config=_sim(),
        agent_settings=settings,
        identity=AgentIdentity.generate("agent-ds"),
        transport=transport,
        lake=lake,
        evidence=evidence,
        quarantine=lambda _p: FolderQuarantine(tmp_path / "quarantine", evidence, actor="job:ds"),
        job_settings=JobSettings(name="ds", topics=(topic,), group_id=unique_name("group")),
        partitions=3,
    )
    assert result.job.quarantined == 0 and result.job.chain_flags == 0
    logs = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records if not r.name.startswith("tidm.simulator")
    )
    await _check_no_clear_values(
        result,
        transport=transport,
        topic=topic,
        audit_group=unique_name("audit"),
        lake=lake,
        evidence=evidence,
        logs=logs,
        raw_files=[],
        policy_path=tmp_path / "policy.yaml",
    )
    evidence.close()


def test_the_scan_sees_clear_values_when_they_are_there() -> None:
    """Negative control: the same scan finds the values in a batch that was not desensitized."""
    table = pa.table({"value": [1.0, SERIAL], "value_text": [None, OPERATORS[0]]})
    needles = _needles({OPERATORS[0]}, {SERIAL})
    with pytest.raises(AssertionError, match="clear value"):
        _scan("plain", _uncompressed_ipc(table), [needles[0]])
    with pytest.raises(AssertionError, match="clear value"):
        _scan("plain", _uncompressed_ipc(table), needles[1:2])
