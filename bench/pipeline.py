#!/usr/bin/env python3
"""End-to-end stream job throughput and latency on the real Kafka and S3, against raw baselines.

    .venv/bin/python bench/pipeline.py [--quick] [--profile] [--repeat N]

In one run, on the dev Kafka and SeaweedFS S3 (started if needed):
  1. throughput: agent output replayed at full speed. Batches of 10k samples are sealed (signed)
     beforehand and published; then the job (JobRunner: verify, chain checks, drop_bad_samples,
     Parquet per unit and asset on S3, evidence in SQLite, commits) consumes them all. samples/s =
     samples landed / (last commit - first fetch).
     Baseline: aiokafka consumer + pyarrow decode + Parquet write to the same S3, units of the same
     size, no verification, no evidence, no commits.
  2. latency: a producer publishes at a fixed rate (100,000 samples/s in 10k-sample batches) while
     the job runs; per batch, source-to-landed = commit of its unit - its send. p50/p99, with the
     same baseline.
Targets (issue 6): >= 1,000,000 samples/s; p99 <= 2 s at 100,000 samples/s. The machine has 2 cores
shared by the broker, the object store and the job, which the figures include. On a busy machine
single runs scatter widely: `--repeat N` alternates baseline and job N times and reports medians.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))

import services  # noqa: E402  (deploy/dev is not a package)
from tidm.evidence import SqliteEvidenceLog  # noqa: E402
from tidm.ingest import (  # noqa: E402
    AgentIdentity,
    FolderQuarantine,
    Provenance,
    TrustedAgents,
    new_batch_id,
    seal,
)
from tidm.ingest.transports import KafkaTransport  # noqa: E402
from tidm.semantics import samples_table  # noqa: E402
from tidm.storage import Lake  # noqa: E402
from tidm.stream_processing import JobRunner  # noqa: E402
from tidm.stream_processing.spec import JobSpec, StepSpec  # noqa: E402

BATCH = 10_000
ASSETS = 4
SIGNALS = 20
PARTITIONS = 2


def sealed_batch(identity: AgentIdentity, i: int, created_us: int) -> Any:
    asset = f"urn:tidm:asset:unit-{i % ASSETS}"
    per = BATCH // SIGNALS
    t0 = created_us - per * 1000
    ts = t0 + np.repeat(np.arange(per, dtype=np.int64) * 1000, SIGNALS)
    rng = np.random.default_rng(i)
    table = samples_table(
        ts_us=ts,
        recv_ts_us=ts + 50,
        asset_id=[asset] * BATCH,
        signal=[f"Signal{j:02d}" for j in range(SIGNALS)] * per,
        value=rng.normal(size=BATCH),
        value_text=[None] * BATCH,
        quality=(rng.random(BATCH) < 0.01).astype(np.uint8) * 2,
        status_code=[0] * BATCH,
        seq=np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.uint64),
    )
    prov = Provenance(
        agent_id=identity.agent_id,
        site="plant",
        asset_id=asset,
        batch_id=new_batch_id(),
        sources=("opc.tcp://bench",),
        seq_first=i * BATCH,
        seq_last=(i + 1) * BATCH - 1,
        rows=BATCH,
        created_us=created_us,
    )
    return seal(table, prov, identity)


class Rig:
    def __init__(self, bootstrap: str, s3: dict[str, Any], tmp: Path) -> None:
        from minio import Minio

        self.bootstrap, self.s3, self.tmp = bootstrap, s3, tmp
        self.bucket = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
        endpoint = s3["endpoint"].removeprefix("http://")
        Minio(endpoint, access_key=s3["access_key"], secret_key=s3["secret_key"], secure=False).make_bucket(
            self.bucket
        )
        self.identity = AgentIdentity.generate("bench-agent")
        self.transport = KafkaTransport(bootstrap, client_id="bench")

    def lake(self, prefix: str) -> Lake:
        return Lake.s3(
            bucket=self.bucket,
            prefix=prefix,
            endpoint=self.s3["endpoint"],
            access_key=self.s3["access_key"],
            secret_key=self.s3["secret_key"],
            region=self.s3["region"],
        )

    def runner(
        self, topic: str, name: str, unit_messages: int, unit_s: float, idle_s: float, evidence: Any = None
    ) -> JobRunner:
        if evidence is None:
            # As `tidm job run` opens it: group commit, synced before each offset commit.
            evidence = SqliteEvidenceLog(self.tmp / f"{name}-evidence.db", durability="process")
        spec = JobSpec(
            name=name,
            topics=(topic,),
            group_id=f"{name}-{uuid.uuid4().hex[:6]}",
            steps=(StepSpec(name="drop_bad_samples"),),
            unit_s=unit_s,
            unit_messages=unit_messages,
            idle_s=idle_s,
            max_records=unit_messages,
        )
        return JobRunner(
            spec,
            transport=self.transport,
            lake=self.lake(name),
            evidence=evidence,
            trusted=TrustedAgents({self.identity.agent_id: self.identity.public_key}),
            quarantine=FolderQuarantine(self.tmp / f"{name}-q", evidence, actor=f"job:{name}"),
            poll_timeout_ms=50,
        )


def _watch_units(runner: JobRunner, landed: dict[tuple[int, int], float]) -> None:
    """Record, per (partition, offset), when its unit was committed."""
    original = runner._write  # noqa: SLF001 - the bench observes commits from the outside

    async def write(consumer: Any, unit: Any) -> None:
        await original(consumer, unit)
        now = time.time()
        for offset in range(unit.first, unit.last + 1):
            landed[(unit.tp.partition, offset)] = now

    runner._write = write  # type: ignore[method-assign] # noqa: SLF001


async def _run_job_until(runner: JobRunner, done: Callable[[], bool], timeout_s: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not task.done() and not done():
        await asyncio.sleep(0.02)
    stop.set()
    await task


async def job_throughput(
    rig: Rig, topic: str, n: int, unit: int, evidence: Any = None, name: str = "job-tp"
) -> tuple[float, float]:
    runner = rig.runner(topic, name, unit_messages=unit, unit_s=3600.0, idle_s=0.2, evidence=evidence)
    landed: dict[tuple[int, int], float] = {}
    _watch_units(runner, landed)
    first: list[float] = []
    original_verify = runner._verify  # noqa: SLF001

    async def verify(records: Any) -> Any:
        if not first:
            first.append(time.time())
        return await original_verify(records)

    runner._verify = verify  # type: ignore[method-assign] # noqa: SLF001
    await _run_job_until(runner, lambda: len(landed) >= n, timeout_s=600)
    elapsed = max(landed.values()) - first[0]
    return runner.stats.rows_landed + runner.stats.rows_rejected, elapsed


async def raw_throughput(rig: Rig, topic: str, n: int, unit: int) -> tuple[float, float]:
    """aiokafka + pyarrow only: decode each message, concatenate a unit, write Parquet to S3."""
    from aiokafka import AIOKafkaConsumer

    lake = rig.lake("raw")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=rig.bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    rows = seen = 0
    first = 0.0
    buffers: dict[int, list[pa.Table]] = {}
    try:
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=200, max_records=unit)
            for tp, records in fetched.items():
                if not first:
                    first = time.time()
                for r in records:
                    table = pa.ipc.open_stream(r.value).read_all()
                    buffers.setdefault(tp.partition, []).append(table)
                    seen += 1
                    if len(buffers[tp.partition]) >= unit or seen >= n:
                        part = pa.concat_tables(buffers.pop(tp.partition))
                        key = f"raw/p{tp.partition}-{r.offset}.parquet"

                        def write(key: str = key, part: pa.Table = part) -> None:
                            sink = pa.BufferOutputStream()
                            pq.write_table(part, sink, compression="zstd")
                            lake.write_bytes(key, sink.getvalue().to_pybytes())

                        await asyncio.to_thread(write)
                        rows += part.num_rows
        for partition, tables in buffers.items():
            part = pa.concat_tables(tables)
            sink = pa.BufferOutputStream()
            pq.write_table(part, sink, compression="zstd")
            lake.write_bytes(f"raw/p{partition}-tail.parquet", sink.getvalue().to_pybytes())
            rows += part.num_rows
    finally:
        await consumer.stop()
    return rows, time.time() - first


async def publish_all(rig: Rig, topic: str, batches: list[Any]) -> None:
    producer = rig.transport.producer()
    await producer.start()
    try:
        sends = [producer.send(topic, b.value, key=b.key, headers=b.headers()) for b in batches]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def publish_at_rate(
    rig: Rig, topic: str, rate: int, seconds: float, sent: dict[tuple[int, int], float]
) -> None:
    producer = rig.transport.producer()
    await producer.start()
    try:
        interval = BATCH / rate
        start = time.monotonic()
        pending = []
        count = int(seconds * rate / BATCH)
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.time()
            batch = sealed_batch(rig.identity, 100_000 + i, int(t * 1_000_000))

            async def send(batch: Any = batch, t: float = t) -> None:
                d = await producer.send(topic, batch.value, key=batch.key, headers=batch.headers())
                sent[(d.partition, d.offset)] = t

            pending.append(asyncio.create_task(send()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49], q[98]


async def job_latency(rig: Rig, topic: str, rate: int, seconds: float) -> tuple[float, float]:
    runner = rig.runner(topic, "job-lat", unit_messages=50, unit_s=0.5, idle_s=0.2)
    landed: dict[tuple[int, int], float] = {}
    _watch_units(runner, landed)
    sent: dict[tuple[int, int], float] = {}
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(3.0)  # joined the group before the clock starts
    await publish_at_rate(rig, topic, rate, seconds, sent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not sent.keys() <= landed.keys():
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return _percentiles([landed[k] - t for k, t in sent.items() if k in landed])


async def raw_latency(rig: Rig, topic: str, rate: int, seconds: float) -> tuple[float, float]:
    from aiokafka import AIOKafkaConsumer

    lake = rig.lake("raw-lat")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=rig.bootstrap,
        group_id=f"rawlat-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    sent: dict[tuple[int, int], float] = {}
    landed: dict[tuple[int, int], float] = {}
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set():
            fetched = await consumer.getmany(timeout_ms=100)
            for tp, records in fetched.items():
                part = pa.concat_tables([pa.ipc.open_stream(r.value).read_all() for r in records])

                def write(
                    part: pa.Table = part, key: str = f"raw/p{tp.partition}-{records[-1].offset}"
                ) -> None:
                    sink = pa.BufferOutputStream()
                    pq.write_table(part, sink, compression="zstd")
                    lake.write_bytes(key + ".parquet", sink.getvalue().to_pybytes())

                await asyncio.to_thread(write)
                now = time.time()
                for r in records:
                    landed[(tp.partition, r.offset)] = now

    task = asyncio.create_task(consume())
    await asyncio.sleep(3.0)
    await publish_at_rate(rig, topic, rate, seconds, sent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not sent.keys() <= landed.keys():
        await asyncio.sleep(0.05)
    done.set()
    await task
    await consumer.stop()
    return _percentiles([landed[k] - t for k, t in sent.items() if k in landed])


async def _profiled(coro: Awaitable[Any], enabled: bool) -> Any:
    if not enabled:
        return await coro
    prof = cProfile.Profile()
    prof.enable()
    try:
        return await coro
    finally:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
        print("profile of the job run (main thread; by own time):")
        print("\n".join(out.getvalue().splitlines()[6:24]))


async def main_async(quick: bool, profile: bool, repeat: int = 1) -> None:
    state = services.ensure_up(["kafka", "s3"])
    bootstrap = state["kafka"]["bootstrap"]
    batches_n = 40 if quick else 200
    rate, seconds = 100_000, (5.0 if quick else 20.0)
    unit = 20
    with tempfile.TemporaryDirectory(prefix="tidm-bench-pipeline-") as tmp:
        rig = Rig(bootstrap, state["s3"], Path(tmp))
        topic = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
        await rig.transport.ensure_topics([topic], partitions=PARTITIONS)
        t = time.perf_counter()
        base_us = time.time_ns() // 1000 - 3_600_000_000
        batches = [sealed_batch(rig.identity, i, base_us + i * 500_000) for i in range(batches_n)]
        print(f"sealed {batches_n} batches x {BATCH:,} samples in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        await publish_all(rig, topic, batches)
        print(
            f"published in {time.perf_counter() - t:.1f} s "
            f"({sum(len(b.value) for b in batches) / 1e6:.0f} MB)"
        )
        total = batches_n * BATCH

        raw_rates, job_rates = [], []
        for i in range(repeat):
            rows, secs = await raw_throughput(rig, topic, batches_n, unit)
            raw_rates.append(rows / secs)
            print(
                f"baseline aiokafka+pyarrow -> S3:  {raw_rates[-1]:>12,.0f} samples/s"
                f"  ({rows:,} in {secs:.2f} s)"
            )
            rows, secs = await _profiled(job_throughput(rig, topic, batches_n, unit), profile and i == 0)
            job_rates.append(rows / secs)
            assert rows == total, f"landed {rows} of {total}"
            print(
                f"tidm job (verify+evidence+commit):  {job_rates[-1]:>12,.0f} samples/s"
                f"  ({rows:,} in {secs:.2f} s)"
            )
        raw_rate, job_rate = statistics.median(raw_rates), statistics.median(job_rates)
        print(
            f"throughput{f' (medians of {repeat} runs)' if repeat > 1 else ''}: "
            f"tidm job {job_rate:,.0f} samples/s = {job_rate / raw_rate:.2f}x baseline ({raw_rate:,.0f}); "
            f"target 1,000,000: "
            f"{'met' if job_rate >= 1_000_000 else 'NOT met'}"
        )

        lat_topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
        await rig.transport.ensure_topics([lat_topic], partitions=PARTITIONS)
        rp50, rp99 = await raw_latency(rig, lat_topic, rate, seconds)
        print(f"baseline latency at {rate:,} samples/s: p50 {rp50 * 1000:7.0f} ms  p99 {rp99 * 1000:7.0f} ms")
        lat_topic2 = f"bench-latency-{uuid.uuid4().hex[:8]}"
        await rig.transport.ensure_topics([lat_topic2], partitions=PARTITIONS)
        p50, p99 = await job_latency(rig, lat_topic2, rate, seconds)
        print(
            f"tidm job latency at {rate:,} samples/s: p50 {p50 * 1000:7.0f} ms  p99 {p99 * 1000:7.0f} ms"
            f"  (units: 0.5 s windows, 0.2 s idle close); "
            f"target p99 <= 2 s: {'met' if p99 <= 2 else 'NOT met'}"
        )
        from minio import Minio

        s3 = state["s3"]
        client = Minio(
            s3["endpoint"].removeprefix("http://"),
            access_key=s3["access_key"],
            secret_key=s3["secret_key"],
            secure=False,
        )
        for obj in client.list_objects(rig.bucket, recursive=True):
            client.remove_object(rig.bucket, obj.object_name or "")
        client.remove_bucket(rig.bucket)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer batches and a shorter latency run")
    parser.add_argument("--profile", action="store_true", help="cProfile the job's throughput run")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs to take the median of")
    args = parser.parse_args()
    asyncio.run(main_async(args.quick, args.profile, max(1, args.repeat)))


if __name__ == "__main__":
    main()
