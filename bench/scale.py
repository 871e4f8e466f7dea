#!/usr/bin/env python3
"""How far one machine goes on a replicated cluster: landed samples/s and evidence entries/s against the
topic's partitions and the clean job's replicas, and the time to recover from a killed broker.

    .venv/bin/python bench/scale.py [--batches N]

In one run: a 3-node KRaft cluster of its own (deploy/dev/services.py `KafkaCluster`, in a temp folder,
RF 3, min.insync.replicas 2) and the dev S3. Batches of 10k samples over 12 assets are sealed once and
published to a topic of 1, 4 and 12 partitions; JobRunner replicas in one consumer group (in this process,
so they share one interpreter) land them in Parquet with SQLite evidence. samples/s = samples landed /
(last landed - start), each row's ratio against the first (1 partition, 1 replica) of the same run. Then a
producer sends 64 KiB records without pause while the leader of its partition is killed (-9): recovery =
the longest gap between two acknowledgements, against the longest gap of the same run without a kill.
The notary's append rate is bench/evidence.py's. The machine has 2 cores shared by three brokers, S3 and
the job replicas: the figures are this machine's, and they say where a bigger one scales, not its speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402  (bench/pipeline.py: sealed batches and the job rig)
import services  # noqa: E402  (deploy/dev is not a package)
from tidm.evidence import SqliteEvidenceLog  # noqa: E402
from tidm.ingest import FolderQuarantine, TrustedAgents  # noqa: E402
from tidm.stream_processing import JobRunner  # noqa: E402
from tidm.stream_processing.spec import JobSpec, StepSpec  # noqa: E402

pipeline.ASSETS = 12  # one asset (the record key) per partition at 12 partitions


def _replica(rig: pipeline.Rig, topic: str, group: str, name: str, unit: int) -> JobRunner:
    evidence = SqliteEvidenceLog(rig.tmp / f"{name}-evidence.db", durability="process")
    spec = JobSpec(
        name=name,
        topics=(topic,),
        group_id=group,
        steps=(StepSpec(name="drop_bad_samples"),),
        unit_s=3600.0,
        unit_messages=unit,
        idle_s=0.2,
        max_records=unit,
    )
    return JobRunner(
        spec,
        transport=rig.transport,
        lake=rig.lake(group),
        evidence=evidence,
        trusted=TrustedAgents({rig.identity.agent_id: rig.identity.public_key}),
        quarantine=FolderQuarantine(rig.tmp / f"{name}-q", evidence, actor=f"job:{name}"),
        poll_timeout_ms=50,
    )


async def landed_rate(
    rig: pipeline.Rig, batches: list[Any], partitions: int, replicas: int
) -> tuple[float, float]:
    """(samples/s, evidence entries/s) of `replicas` job replicas landing `batches` from a fresh topic."""
    topic = f"bench-scale-p{partitions}-{uuid.uuid4().hex[:6]}"
    await rig.transport.ensure_topics([topic], partitions=partitions)
    await pipeline.publish_all(rig, topic, batches)
    total = len(batches) * pipeline.BATCH
    group = f"scale-{partitions}-{replicas}-{uuid.uuid4().hex[:6]}"
    runners = [_replica(rig, topic, group, f"{group}-r{i}", unit=4) for i in range(replicas)]
    stop = asyncio.Event()
    start = time.monotonic()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]

    def landed() -> int:
        return sum(r.stats.rows_landed + r.stats.rows_rejected for r in runners)

    deadline = start + 600
    while landed() < total and time.monotonic() < deadline and not any(t.done() for t in tasks):
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - start
    stop.set()
    await asyncio.gather(*tasks)
    if landed() < total:
        raise SystemExit(f"p={partitions} r={replicas}: {landed()} of {total} samples landed")
    entries = 0
    for i in range(replicas):
        log = SqliteEvidenceLog(rig.tmp / f"{group}-r{i}-evidence.db", durability="process")
        entries += sum(1 for _ in log.read())
        log.close()
    return total / elapsed, entries / elapsed


async def longest_ack_gap(cluster: Any, rig: pipeline.Rig, kill: bool, seconds: float = 15.0) -> float:
    """Seconds of the longest wait between two acknowledged sends; with `kill`, the partition's leader is
    killed (-9) a third of the way in and restarted after the run."""
    from aiokafka.admin import AIOKafkaAdminClient

    topic = f"bench-recover-{uuid.uuid4().hex[:6]}"
    await rig.transport.ensure_topics([topic], partitions=1)
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leader = int(meta["partitions"][0]["leader"])
    producer = rig.transport.producer()
    await producer.start()
    value = b"x" * 65536
    gap, last = 0.0, time.monotonic()
    start, killed = last, False
    try:
        while time.monotonic() - start < seconds:
            if kill and not killed and time.monotonic() - start > seconds / 3:
                cluster.kill(leader)
                killed = True
            await producer.send(topic, value, key=b"k")
            now = time.monotonic()
            gap, last = max(gap, now - last), now
    finally:
        await producer.stop()
        if killed:
            await asyncio.to_thread(cluster.start_node, leader)
    return gap


async def main_async(batches_n: int) -> None:
    state = services.load_state() or {}
    if "s3" not in state or not services.healthy(state).get("s3"):
        raise SystemExit("the dev S3 is not running (deploy/dev/services.py up --only s3)")
    with tempfile.TemporaryDirectory(prefix="tidm-bench-scale-") as tmp:
        cluster = services.KafkaCluster(Path(tmp) / "cluster", 3)
        t = time.monotonic()
        cluster.start()
        print(f"3-node KRaft cluster up in {time.monotonic() - t:.1f} s")
        try:
            rig = pipeline.Rig(cluster.bootstrap, state["s3"], Path(tmp))
            base_us = time.time_ns() // 1000 - 3_600_000_000
            batches = [
                pipeline.sealed_batch(rig.identity, i, base_us + i * 500_000) for i in range(batches_n)
            ]
            print(f"{batches_n} batches x {pipeline.BATCH:,} samples, 12 assets; job units of 4 messages")
            print(f"{'partitions':>10} {'replicas':>8} {'samples/s':>12} {'ratio':>6} {'evidence/s':>11}")
            baseline = 0.0
            for partitions, replicas in ((1, 1), (4, 1), (12, 1), (12, 2), (12, 3)):
                rate, entries = await landed_rate(rig, batches, partitions, replicas)
                baseline = baseline or rate
                print(
                    f"{partitions:>10} {replicas:>8} {rate:>12,.0f} {rate / baseline:>6.2f} {entries:>11,.1f}"
                )
            calm = await longest_ack_gap(cluster, rig, kill=False)
            crash = await longest_ack_gap(cluster, rig, kill=True)
            print(
                f"leader kill -9: longest wait for an ack {crash:.2f} s "
                f"(without a kill, same run: {calm:.2f} s; ratio {crash / max(calm, 1e-3):.0f}x)"
            )
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=48, help="10k-sample batches per measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # aiokafka logs every refused connection to a killed node
    asyncio.run(main_async(args.batches))


if __name__ == "__main__":
    main()
