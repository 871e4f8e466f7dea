"""The spec-driven runner on the embedded log and a local lake: selection, steps, tables, output
topic, deterministic landing units across crashes, look-back replay, backpressure, schema drift."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.ingest import AgentIdentity, FolderQuarantine, Provenance, TrustedAgents, new_batch_id, seal
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport, Transport
from tidm.semantics import samples_table
from tidm.storage import Lake
from tidm.storage.errors import LakeUnavailable
from tidm.stream_processing import JobRunner
from tidm.stream_processing.runner import HEADER_INPUTS, HEADER_JOB, HEADER_OUTPUT_SHA256
from tidm.stream_processing.spec import JobSpec, Selection, StepsOutcome, StepSpec, apply_steps, step
from tidm.stream_processing.steps import StepResult

DAY_US = 1_764_288_000_000_000  # 2025-11-28T00:00:00Z
TOPIC = "tidm.samples"


def _table(asset: str, signals: list[str], n: int, start: int, *, text: bool = False) -> pa.Table:
    rows = n * len(signals)
    return samples_table(
        ts_us=[DAY_US + (start + i // len(signals)) * 100_000 for i in range(rows)],
        recv_ts_us=[DAY_US + (start + i // len(signals)) * 100_000 + 5 for i in range(rows)],
        asset_id=[asset] * rows,
        signal=[signals[i % len(signals)] for i in range(rows)],
        value=[float("nan") if text else float((start + i) % 17) for i in range(rows)],
        value_text=[f"state-{i % 3}" if text else None for i in range(rows)],
        quality=[2 if (start + i) % 13 == 0 else 0 for i in range(rows)],
        status_code=[0] * rows,
        seq=list(range(start * 10, start * 10 + rows)),
    )


async def _publish(
    transport: Transport, identity: AgentIdentity, batches: list[pa.Table], topic: str = TOPIC
) -> None:
    await transport.ensure_topics([topic], partitions=2)
    producer = transport.producer()
    await producer.start()
    try:
        for table in batches:
            asset = table.column("asset_id")[0].as_py()
            seq = table.column("seq").to_pylist()
            prov = Provenance(
                agent_id=identity.agent_id,
                site="plant",
                asset_id=asset,
                batch_id=new_batch_id(),
                sources=("opc.tcp://x",),
                seq_first=seq[0],
                seq_last=seq[-1],
                rows=table.num_rows,
                created_us=DAY_US,
            )
            sealed = seal(table, prov, identity)
            await producer.send(topic, sealed.value, key=sealed.key, headers=sealed.headers())
    finally:
        await producer.stop()


def _fixed_input() -> list[pa.Table]:
    out = []
    for i in range(24):
        asset = f"pump-{i % 3}"
        out.append(_table(asset, ["p", "t"], 20, i * 20))
    return out


class _Rig:
    def __init__(
        self,
        tmp_path: Path,
        name: str,
        identity: AgentIdentity,
        transport: Transport | None = None,
        lake: Lake | None = None,
    ) -> None:
        self.transport = transport or EmbeddedTransport(tmp_path / "log", partitions=2)
        self.lake = lake or Lake.local(tmp_path / f"lake-{name}")
        self.evidence = SqliteEvidenceLog(tmp_path / f"evidence-{name}.db")
        self.quarantine = FolderQuarantine(tmp_path / f"q-{name}", self.evidence, actor="job:t")
        self.trusted = TrustedAgents({identity.agent_id: identity.public_key})

    def runner(self, spec: JobSpec, **kw: Any) -> JobRunner:
        return JobRunner(
            spec,
            transport=self.transport,
            lake=self.lake,
            evidence=self.evidence,
            trusted=self.trusted,
            quarantine=self.quarantine,
            poll_timeout_ms=50,
            **kw,
        )

    def snapshot(self) -> dict[str, str]:
        """Every object of the lake (landing intents aside) by key, as the SHA-256 of its bytes."""
        return {
            k: hashlib.sha256(self.lake.read_bytes(k)).hexdigest()
            for k in self.lake.list_keys()
            if not k.startswith("_")
        }


async def _run_until_drained(runner: JobRunner, messages: int, timeout_s: float = 60.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not task.done():
        if runner.stats.messages >= messages and runner.open_messages == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task


def _spec(group: str, **kw: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "t",
        "topics": (TOPIC,),
        "group_id": group,
        "steps": (StepSpec(name="drop_bad_samples"),),
        "unit_s": 3600.0,
        "unit_messages": 5,
        "idle_s": 0.3,
        "max_records": 3,
    }
    return JobSpec(**{**base, **kw})


async def test_spec_selection_steps_tables_and_output_topic(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-s")
    rig = _Rig(tmp_path, "a", identity)
    await _publish(rig.transport, identity, _fixed_input())
    spec = _spec(
        "g-a",
        select=Selection(assets=("pump-0", "pump-1"), signals=("p",)),
        steps=(
            StepSpec(name="drop_bad_samples"),
            StepSpec(name="rolling", params={"window_n": 4}, output="features"),
        ),
        output_topic="tidm.clean",
    )
    runner = rig.runner(spec)
    await _run_until_drained(runner, 24)
    st = runner.stats
    clean, rejected, features = (rig.lake.read_table(t) for t in ("clean", "rejected", "features"))
    assert set(pc.unique(clean.column("asset_id").cast(pa.string())).to_pylist()) == {"pump-0", "pump-1"}
    assert set(clean.column("signal").cast(pa.string()).to_pylist()) == {"p"}
    assert st.rows_unselected == st.rows_in - (clean.num_rows + rejected.num_rows)
    assert st.rows_unselected == 24 * 40 - 16 * 20, "unselected rows are counted and never landed"
    assert rejected.num_rows and set(rejected.column("quality").to_pylist()) == {2}
    assert all(f & 1 for f in rejected.column("flags").to_pylist()), "rejects carry their flags"
    assert features.num_rows == clean.num_rows and "mean" in features.column_names
    for key in rig.lake.list_keys("features"):
        assert key.startswith("features/site=plant/asset=pump-")
        assert key.rsplit("/", 1)[1].startswith(f"{TOPIC}-")
    # Evidence: every object's step entry names its input batches.
    for table in ("clean", "rejected", "features"):
        for key in rig.lake.list_keys(table):
            digest = hashlib.sha256(rig.lake.read_bytes(key)).hexdigest()
            (send,) = [e.entry for e in rig.evidence.find(digest) if e.entry.event == EventType.SEND]
            steps = [
                e.entry
                for e in rig.evidence.find(send.inputs[0])
                if e.entry.event == EventType.CONTENT_MODIFIED
            ]
            assert steps and steps[0].inputs and steps[0].attributes["output"] == table
    # The output topic: plain Arrow IPC, headers naming the job and the inputs, evidenced.
    consumer = rig.transport.consumer(["tidm.clean"], group_id="reader")
    await consumer.start()
    got = []
    try:
        for _ in range(20):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    assert len(got) == st.published > 0
    rows = 0
    for m in got:
        assert m.header(HEADER_JOB) == b"t"
        assert m.header(HEADER_OUTPUT_SHA256) == hashlib.sha256(m.value).hexdigest().encode()
        assert m.header(HEADER_INPUTS)
        rows += pa.ipc.open_stream(m.value).read_all().num_rows
        sends = [e.entry for e in rig.evidence.find(hashlib.sha256(m.value).hexdigest())]
        assert [e for e in sends if e.event == EventType.SEND and e.attributes["topic"] == "tidm.clean"]
    assert rows == clean.num_rows
    rig.evidence.close()


class _Crash(RuntimeError):
    pass


async def test_landing_units_are_the_same_after_crashes_and_other_fetch_sizes(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-s")
    ref = _Rig(tmp_path, "ref", identity)
    await _publish(ref.transport, identity, _fixed_input())
    await _run_until_drained(ref.runner(_spec("g-ref", max_records=7)), 24)
    expected = ref.snapshot()
    assert len({k.rsplit("/", 1)[1] for k in expected}) > 4, "several units per partition"

    rig = _Rig(tmp_path, "crash", identity)
    calls = {"n": 0}
    real = rig.lake.write_parquet

    def crashing(key: str, table: pa.Table, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] % 5 == 0:  # dies between two objects of one unit: the intent is in place
            raise _Crash(key)
        return real(key, table, **kw)

    rig.lake.write_parquet = crashing  # type: ignore[method-assign]
    crashes = 0
    for _ in range(40):
        runner = rig.runner(_spec("g-crash", max_records=2))
        try:
            await _run_until_drained(runner, 24, timeout_s=10)
        except _Crash:
            crashes += 1
            continue
        break
    assert crashes >= 3
    assert rig.snapshot() == expected
    ref.evidence.close()
    rig.evidence.close()


@step("seen_before", lookback_s=10.0)
def _seen_before(table: pa.Table) -> StepResult:
    """A stateful step: each row's value becomes how many rows of its signal came in the last 10 s."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    sig = table.column("signal").cast(pa.string()).to_numpy(zero_copy_only=False)
    out = np.zeros(len(ts))
    for s in set(sig):
        idx = np.flatnonzero(sig == s)
        order = idx[np.argsort(ts[idx], kind="stable")]
        t = ts[order]
        out[order] = np.arange(len(t)) - np.searchsorted(t, t - 10_000_000) + 1
    kept = table.set_column(table.column_names.index("value"), "value", pa.array(out))
    return StepResult(kept, table.slice(0, 0), {"rows": table.num_rows})


async def test_lookback_replay_gives_the_uninterrupted_output(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-s")
    ref = _Rig(tmp_path, "ref", identity)
    await _publish(ref.transport, identity, _fixed_input())
    spec = _spec("g-lb-ref", steps=(StepSpec(name="seen_before"),), unit_messages=3)
    assert spec.effective_lookback_s == 10.0
    await _run_until_drained(ref.runner(spec), 24)
    expected = ref.snapshot()
    # Without context each unit would count only its own rows: the look-back made a difference.
    clean = ref.lake.read_table("clean")
    assert max(clean.column("value").to_pylist()) > 20

    rig = _Rig(tmp_path, "lb", identity)
    spec = _spec("g-lb", steps=(StepSpec(name="seen_before"),), unit_messages=3)
    first = rig.runner(spec)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    while first.stats.units < 4 and not task.done():
        await asyncio.sleep(0.01)
    stop.set()
    await task
    second = rig.runner(spec)
    await _run_until_drained(second, 24 - (first.stats.messages - first.open_messages))
    assert second.stats.replayed > 0, "the second member rewound and replayed context"
    assert rig.snapshot() == expected
    ref.evidence.close()
    rig.evidence.close()


async def test_a_slow_sink_pauses_the_partition_and_retries(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-s")
    rig = _Rig(tmp_path, "bp", identity)
    await _publish(rig.transport, identity, _fixed_input())
    real = rig.lake.write_parquet
    failures = {"left": 4}
    paused_seen: list[int] = []

    def flaky(key: str, table: pa.Table, **kw: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise LakeUnavailable(f"s3 said 503 for {key}")
        return real(key, table, **kw)

    rig.lake.write_parquet = flaky  # type: ignore[method-assign]
    runner = rig.runner(_spec("g-bp"))
    original = runner._land  # noqa: SLF001 - observe the pause from the consumer's side

    async def watched(consumer: Any, part: Any, unit: Any) -> None:
        await original(consumer, part, unit)
        paused_seen.append(len(consumer.paused()))

    runner._land = watched  # type: ignore[method-assign] # noqa: SLF001
    await _run_until_drained(runner, 24)
    assert runner.stats.backpressure == 4
    assert max(paused_seen) >= 1, "the partition was paused while the lake refused"
    assert sum(paused_seen[-1:]) == 0, "and resumed after"
    total = rig.lake.read_table("clean").num_rows + rig.lake.read_table("rejected").num_rows
    assert total == 24 * 40, "nothing lost, nothing twice"
    rig.evidence.close()


async def test_schema_drift_new_signals_assets_and_text_are_carried(tmp_path: Path) -> None:
    identity = AgentIdentity.generate("agent-s")
    rig = _Rig(tmp_path, "drift", identity)
    batches = [_table("pump-0", ["p"], 10, 0), _table("pump-0", ["p"], 10, 10)]
    batches.append(_table("pump-0", ["p", "vib"], 10, 20))  # a new signal
    batches.append(_table("press-9", ["force"], 10, 30))  # a new asset
    batches.append(_table("pump-0", ["mode"], 10, 40, text=True))  # a text-valued signal
    batches.append(_table("pump-0", ["p", "vib"], 10, 50))
    await _publish(rig.transport, identity, batches)
    runner = rig.runner(_spec("g-drift", unit_messages=2))
    await _run_until_drained(runner, len(batches))
    clean = rig.lake.read_table("clean")
    rejected = rig.lake.read_table("rejected")
    assert clean.num_rows + rejected.num_rows == sum(b.num_rows for b in batches)
    signals = set(clean.column("signal").cast(pa.string()).to_pylist())
    assert {"p", "vib", "force", "mode"} <= signals
    text = clean.filter(pc.equal(clean.column("signal").cast(pa.string()), "mode"))
    assert text.num_rows == 10 and set(text.column("value_text").to_pylist()) == {
        "state-0",
        "state-1",
        "state-2",
    }
    assert any("asset=press-9" in k for k in rig.lake.list_keys("clean"))
    rig.evidence.close()


def test_apply_steps_outcome_shape() -> None:
    """The runner relies on apply_steps' outcome: flow result, rejects and branch outputs."""
    table = _table("a", ["x"], 5, 0)
    from tidm.stream_processing.steps import with_flags

    bound = _spec("x", steps=(StepSpec(name="drop_bad_samples"),)).bind()
    outcome = apply_steps(with_flags(table), bound)
    assert isinstance(outcome, StepsOutcome)
    assert outcome.kept.num_rows + sum(t.num_rows for t in outcome.rejected) == table.num_rows


def test_context_rows_are_dropped_but_late_unit_rows_are_kept() -> None:
    from tidm.stream_processing.runner import _after_context
    from tidm.stream_processing.steps import with_flags

    context = with_flags(_table("a", ["x"], 5, 0))  # ts 0..400 ms, seq 0..4
    unit = with_flags(_table("a", ["x"], 3, 5))  # ts 500..700 ms, seq 50..52
    late = with_flags(_table("a", ["x"], 1, 1))
    seq = late.column_names.index("seq")
    # An old timestamp, but a sample the context never had.
    late = late.set_column(seq, late.schema.field("seq"), pa.array([999], type=pa.uint64()))
    flow = pa.concat_tables([context, unit, late])
    out = _after_context(flow, context)
    assert out.column("seq").to_pylist() == [50, 51, 52, 999]
    features = flow.select(["ts", "asset_id", "signal", "value"])
    assert _after_context(features, context).num_rows == 3, "without seq: later than the context"


@pytest.mark.integration
async def test_lookback_and_backpressure_on_kafka_and_s3(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Any,
    tmp_path: Path,
) -> None:
    """The same look-back replay on real Kafka (offsets_for_times, seek) and S3, with the lake
    refusing a few writes on the way (pause, resume)."""
    identity = AgentIdentity.generate("agent-s")
    topic = unique_name("lb")
    transport = KafkaTransport(kafka_bootstrap, client_id="lb")

    def lake(prefix: str) -> Lake:
        return Lake.s3(
            bucket=s3_bucket,
            prefix=prefix,
            endpoint=s3_config["endpoint"],
            access_key=s3_config["access_key"],
            secret_key=s3_config["secret_key"],
            region=s3_config["region"],
        )

    await _publish(transport, identity, _fixed_input(), topic=topic)
    spec = _spec(unique_name("ref"), topics=(topic,), steps=(StepSpec(name="seen_before"),), unit_messages=3)
    ref = _Rig(tmp_path, "ref", identity, transport, lake("ref"))
    await _run_until_drained(ref.runner(spec), 24)
    expected = ref.snapshot()
    assert expected

    rig = _Rig(tmp_path, "lb", identity, transport, lake("lb"))
    spec = spec.model_copy(update={"group_id": unique_name("lb")})
    first = rig.runner(spec)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    while first.stats.units < 4 and not task.done():
        await asyncio.sleep(0.01)
    stop.set()
    await task
    real = rig.lake.write_parquet
    failures = {"left": 3}

    def flaky(key: str, table: pa.Table, **kw: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise LakeUnavailable(f"s3 said 503 for {key}")
        return real(key, table, **kw)

    rig.lake.write_parquet = flaky  # type: ignore[method-assign]
    second = rig.runner(spec)
    await _run_until_drained(second, 24 - (first.stats.messages - first.open_messages))
    assert second.stats.replayed > 0 and second.stats.backpressure == 3
    assert rig.snapshot() == expected
    ref.evidence.close()
    rig.evidence.close()
