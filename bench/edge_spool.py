"""What the durable spool (and desensitization) cost the agent: throughput, same batch stream, same run.

Runs the real `Agent` on one synthetic stream of samples (a source that emits as fast as the agent
takes them), publishing to an in-memory producer, in three configurations:

    memory      the in-memory spool (no durability): the baseline
    disk        the disk spool: every batch written, fsynced and renamed before it is sent
    disk+policy the disk spool plus a desensitization policy (generalize, mask, pseudonymize)

The input stream is built once and frozen out of the garbage collector (it is the harness's, not the
agent's), and every run starts after a full collection, so that one run's garbage is not charged to
the next. Each configuration runs `--rounds` times, interleaved (the order alternating between
rounds). Reported per configuration: the median throughput, and the median of its ratios to the
baseline run of the same round (paired, so drifting machine load cancels), with their quartiles to
show the noise; twice: by wall time, and by the CPU time of the process (all its threads). On a
shared, loaded machine the CPU time is the steadier measure of what the spool and the policy cost;
the wall time also counts the fsync waits. The target is: disk+policy at most 10% slower than memory.

    .venv/bin/python bench/edge_spool.py [--samples 200000] [--rows 1000] [--rounds 15]
    .venv/bin/python bench/edge_spool.py --profile disk+policy [--rows 100]   # where the CPU goes

`--profile KIND` runs that configuration once under cProfile instead, in every thread (the agent
seals in a worker thread, the disk spool writes in another), timed by each thread's CPU time, and
prints the functions that cost the most (own time, all threads together).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tidm.edge_agent import Agent, AgentSettings, BatchSettings
from tidm.edge_agent.config import PseudonymKeySettings
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.spool import DiskSpool
from tidm.evidence import MemoryEvidenceLog
from tidm.ingest import AgentIdentity
from tidm.ingest.transports import Delivery

POLICY = """
id: bench
version: 1
default: pass
rules:
  - {match: {signal: "S001"}, action: generalize, step: 0.5}
  - {match: {signal: "S002"}, action: pseudonymize, key: bench}
  - {match: {signal: "S003"}, action: mask, fixed_length: 4}
"""


class NullProducer:
    """Acknowledges at once: the bench measures the agent, not a broker."""

    def __init__(self) -> None:
        self.sent = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Delivery:
        self.sent += 1
        return Delivery(topic, 0, self.sent - 1)


class StreamSource:
    def __init__(self, samples: list[RawSample], chunk: int = 500) -> None:
        self._samples = samples
        self._chunk = chunk
        self.done = asyncio.Event()

    @property
    def name(self) -> str:
        return "opc.tcp://bench:4840"

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        for i in range(0, len(self._samples), self._chunk):
            emit(self.name, self._samples[i : i + self._chunk])
            await asyncio.sleep(0)
        self.done.set()
        await stop.wait()


def _stream(n: int, assets: int = 20, signals: int = 5) -> list[RawSample]:
    out = []
    for i in range(n):
        sig = i % signals
        text = f"OP-{i % 7}" if sig in (2, 3) else None
        value = None if text is not None else float(i % 1000) / 7
        out.append(
            RawSample(
                f"urn:asset:{(i // signals) % assets:03d}",
                f"S{sig:03d}",
                1_000 + i,
                2_000 + i,
                value,
                text,
                0,
            )
        )
    return out


async def _run(kind: str, samples: list[RawSample], rows: int, work: Path) -> tuple[float, float]:
    """samples/s of one run, by wall time and by CPU time of the process."""
    identity = AgentIdentity.generate("bench")
    evidence = MemoryEvidenceLog()
    settings = AgentSettings(
        agent_id="bench", batch=BatchSettings(max_rows=rows, max_age_ms=50, max_pending=64)
    )
    if kind == "disk+policy":
        (work / "policy.yaml").write_text(POLICY, encoding="utf-8")
        secrets = work / "keys"
        secrets.mkdir(exist_ok=True)
        (secrets / "bench@1").write_bytes(b"bench-key-0123456789abcdef")
        settings = settings.model_copy(
            update={"policy": work / "policy.yaml", "pseudonym_keys": PseudonymKeySettings(folder=secrets)}
        )
    spool = None
    if kind.startswith("disk"):
        spool = DiskSpool(
            work / f"spool-{kind}-{time.monotonic_ns()}", max_bytes=1 << 30, evidence=evidence
        ).open()
    producer = NullProducer()
    source = StreamSource(samples)
    agent = Agent(
        settings, identity=identity, producer=producer, evidence=evidence, sources=[source], spool=spool
    )
    stop = asyncio.Event()
    gc.collect()  # every run starts from the same heap: no garbage of the previous run to collect
    began, cpu_began = time.perf_counter(), time.process_time()
    task = asyncio.create_task(agent.run(stop))
    await source.done.wait()
    stop.set()
    stats = await task
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    if spool is not None:
        spool.close()
    assert stats.samples_in == len(samples)
    assert stats.batches_left_unsent == 0
    return len(samples) / elapsed, len(samples) / cpu


def _profile(kind: str, samples: list[RawSample], rows: int, work: Path, top: int = 30) -> None:
    """One run of `kind` under cProfile in every thread, by per-thread CPU time."""
    profiles: list[cProfile.Profile] = []

    def profile_this_thread(*_: object) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(profile_this_thread)  # threads started from now on (the to_thread workers)
    main.enable()
    try:
        asyncio.run(_run(kind, samples, rows, work))
    finally:
        main.disable()
        threading.setprofile(None)
    stats = pstats.Stats(main)
    for profile in profiles:  # their threads have ended with the run's executor
        stats.add(profile)
    print(f"{kind}: {len(samples)} samples, batches of {rows} rows; CPU time of all threads")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000, help="batch.max_rows")
    parser.add_argument("--rounds", type=int, default=15)
    kinds = ("memory", "disk", "disk+policy")
    parser.add_argument("--profile", choices=kinds, help="profile one run of this configuration instead")
    args = parser.parse_args()
    samples = _stream(args.samples)
    # The input list is the harness's, not the agent's (a source hands samples over and forgets them):
    # frozen, its 200,000 objects are not rescanned by every full collection during the runs.
    gc.freeze()
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="tidm-bench-spool-") as tmp:
            asyncio.run(_run("memory", samples[:20_000], args.rows, Path(tmp)))  # warm-up
            _profile(args.profile, samples, args.rows, Path(tmp))
        return
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="tidm-bench-spool-") as tmp:
        asyncio.run(_run("memory", samples[:20_000], args.rows, Path(tmp)))  # warm-up (imports, caches)
        for round_ in range(args.rounds):
            # Alternate the order, so drifting machine load does not favour one configuration.
            for kind in kinds if round_ % 2 == 0 else tuple(reversed(kinds)):
                results[kind].append(asyncio.run(_run(kind, samples, args.rows, Path(tmp))))
    batches = args.samples // args.rows
    print(f"{args.samples} samples, ~{batches} batches of {args.rows} rows, median of {args.rounds} rounds")
    verdicts = []
    for measure, pick in (("wall", 0), ("CPU", 1)):
        for kind in kinds:
            med = statistics.median(r[pick] for r in results[kind])
            # Each round's configurations ran back to back: their ratio is free of the machine's drift
            # over the whole bench; the median of these paired ratios is the figure reported.
            ratios = sorted(r[pick] / m[pick] for r, m in zip(results[kind], results["memory"], strict=True))
            ratio = statistics.median(ratios)
            print(
                f"  {measure:4s} {kind:12s} {med:12,.0f} samples/s  ratio {ratio:5.3f}  "
                f"(slowdown {100 * (1 - ratio):5.1f}%; quartiles {ratios[len(ratios) // 4]:.3f}.."
                f"{ratios[(3 * len(ratios)) // 4]:.3f})"
            )
            if kind == "disk+policy":
                verdicts.append(f"{measure} {ratio:.3f}: {'MET' if ratio >= 0.9 else 'NOT met'}")
    print(f"Target: disk+policy at most 10% slower than memory (ratio >= 0.90): {'; '.join(verdicts)}")


if __name__ == "__main__":
    main()
