"""OPC UA edge path: samples/s per core and RSS, beside a baseline measured in the same run.

    python bench/edge_opcua.py [--signals 10000] [--processes 5] [--period-ms 1000] [--duration 20]
                               [--profile] [--tracemalloc N]

Starts `--processes` simulator processes sharing `--signals` variables, then runs, each in its own
process against the same servers:

- baseline: a minimal asyncua client (one subscription, handler mode) that only counts notifications;
- tidm: OpcUaSource -> RawSample lists -> Batcher (columns) -> Arrow tables every second, with the
  sources reporting to Prometheus metrics as `tidm agent run` wires them.

"Samples/s per core" is samples received divided by the CPU seconds the collecting process used
(user + system) over the measured window, so it does not depend on how fast the simulators produce
or on other load on the machine. RSS is read at three points: after the worker's imports (before
connecting), once every variable has delivered (subscribed), and after a full garbage collection at
the end; the end value is the one the target is about. On glibc the C heap is shown beside it
(bytes malloc holds, of which in use), and the end RSS once more after `malloc_trim(0)` (trimmed:
what is live), so memory freed but kept by the allocator is visible.
Targets: >= 50,000 samples/s per core on the tidm path; RSS <= 150 MB at 10,000 signals.
`--profile` prints the top of a cProfile of the tidm worker's measured window; `--tracemalloc N`
(a diagnostic: it slows the worker and adds its own memory) prints the N largest allocation sites
of Python objects alive at the end of each worker's measured window (still connected).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import gc
import io
import json
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

TARGET_RATE = 50_000
TARGET_RSS_MB = 150
_TRACE_TOP = [0]  # --tracemalloc N, in the worker


def _configs(signals: int, processes: int, period_ms: int) -> list[Any]:
    from tidm.simulator import SimulatorConfig

    per = signals // processes
    signals_per_asset = 100
    out = []
    for i in range(processes):
        cfg = SimulatorConfig.fleet(
            max(1, per // signals_per_asset),
            min(per, signals_per_asset),
            period_ms=period_ms,
            seed=i,
            namespace_uri=f"urn:bench:{i}",
            produced_limit=0,
        )
        out.append(cfg)
    return out


def _start_sims(configs: Sequence[Any], workdir: Path) -> list[tuple[subprocess.Popen[str], dict[str, Any]]]:
    procs = []
    for i, cfg in enumerate(configs):
        path = workdir / f"sim{i}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tidm.simulator", "--config", str(path)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    out = []
    for p in procs:
        assert p.stdout is not None
        out.append((p, json.loads(p.stdout.readline())))
    return out


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# -- workers (run in their own processes) ---------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - the ctypes layout of glibc's struct mallinfo2
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_mb() -> tuple[float, float] | None:
    """glibc malloc: (MB held from the system, MB of it in use), or None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.arena + info.hblkhd) / 2**20, (info.uordblks + info.hblkhd) / 2**20


def _release_free_memory() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _rss_by_mapping() -> dict[str, float]:
    """RSS (MB) by kind of mapping: the C heap, anonymous maps (Python's object arenas, jemalloc,
    large malloc blocks, thread stacks) and shared libraries by file; Linux only."""
    out: dict[str, float] = {}
    where = ""
    try:
        lines = Path("/proc/self/smaps").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        head = line.split()
        if not head:
            continue
        if not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else "[anon]"
            where = name if name.startswith("[") else Path(name).name
        elif head[0] == "Rss:":
            out[where] = out.get(where, 0.0) + int(head[1]) / 1024
    return out


def _mapping_summary(n: int) -> str:
    rss = _rss_by_mapping()
    heap, anon = rss.pop("[heap]", 0.0), rss.pop("[anon]", 0.0)
    stacks = sum(v for k, v in rss.items() if k.startswith("["))
    files = {k: v for k, v in rss.items() if not k.startswith("[")}
    top = sorted(files.items(), key=lambda kv: -kv[1])[:n]
    return (
        f"RSS by mapping: C heap {heap:.1f} MB, anonymous {anon:.1f} MB, other {stacks:.1f} MB, "
        f"files {sum(files.values()):.1f} MB (" + ", ".join(f"{k} {v:.1f}" for k, v in top) + ")"
    )


def _top_allocations(n: int) -> str:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    )
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"python objects traced at the end: {total / 2**20:.1f} MB; largest sites:"]
    for stat in snapshot.statistics("lineno")[:n]:
        frame = stat.traceback[0]
        lines.append(f"  {stat.size / 2**20:7.2f} MB {stat.count:>9} blocks  {frame.filename}:{frame.lineno}")
    return "\n".join(lines)


async def _measure(count: list[int], expected: int, duration: float, profile: bool) -> dict[str, Any]:
    """Wait until every variable has delivered once, then measure CPU and samples over `duration`."""
    deadline = time.monotonic() + 300
    while count[0] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    gc.collect()
    rss_subscribed = _rss_mb()
    proc = psutil.Process()
    prof = cProfile.Profile() if profile else None
    t0, n0 = proc.cpu_times(), count[0]
    w0 = time.monotonic()
    if prof is not None:
        prof.enable()
    await asyncio.sleep(duration)
    if prof is not None:
        prof.disable()
    t1, n1 = proc.cpu_times(), count[0]
    cpu = (t1.user + t1.system) - (t0.user + t0.system)
    gc.collect()
    result: dict[str, Any] = {
        "samples": n1 - n0,
        "wall_s": round(time.monotonic() - w0, 2),
        "cpu_s": round(cpu, 2),
        "per_core": round((n1 - n0) / cpu) if cpu > 0 else 0,
        "rss_subscribed_mb": rss_subscribed,
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "threads": proc.num_threads(),
    }
    if tracemalloc.is_tracing():
        result["allocations"] = _top_allocations(_TRACE_TOP[0])
    result["mappings"] = _mapping_summary(6)
    result["pandas"] = "pandas" in sys.modules
    heap = _heap_mb()
    if heap is not None:
        result["heap_mb"], result["heap_used_mb"] = round(heap[0], 1), round(heap[1], 1)
    if _release_free_memory():
        # The end RSS if the C heap handed back all its free pages: the rest is live or not malloc's.
        result["rss_trimmed_mb"] = _rss_mb()
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
        result["profile"] = out.getvalue()
    return result


async def _baseline(sims: list[dict[str, Any]], configs: list[Any], duration: float) -> dict[str, Any]:
    from asyncua import Client, ua

    count = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            count[0] += 1

    clients = []
    for info, cfg in zip(sims, configs, strict=True):
        client = Client(info["endpoint"], timeout=30)
        await client.connect()
        clients.append(client)
        idx = info["namespace_index"]
        nodes = [client.get_node(ua.NodeId(f"{a.name}.{s.name}", idx)) for a in cfg.assets for s in a.signals]
        sub = await client.create_subscription(100, Handler())
        # Same monitoring as the tidm source (trigger StatusValueTimestamp, queue 100), so both
        # receive the same notifications.
        requests = []
        for handle, node in enumerate(nodes, start=1):
            rv = ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value)
            flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
            params = ua.MonitoringParameters(
                ClientHandle=handle, QueueSize=100, DiscardOldest=True, Filter=flt
            )
            requests.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=rv, MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params
                )
            )
        for start in range(0, len(requests), 1000):
            await sub.create_monitored_items(requests[start : start + 1000])
    try:
        return await _measure(count, sum(c.signal_count for c in configs), duration, profile=False)
    finally:
        for client in clients:
            await client.disconnect()


async def _tidm(
    sims: list[dict[str, Any]], configs: list[Any], duration: float, profile: bool
) -> dict[str, Any]:
    from tidm.edge_agent.batcher import Batcher
    from tidm.edge_agent.config import OpcUaSourceSettings
    from tidm.edge_agent.metrics import AgentMetrics
    from tidm.edge_agent.sources.base import RawSample
    from tidm.edge_agent.sources.opcua import OpcUaSource, PlannedNode
    from tidm.simulator import Simulator

    count = [0]
    batcher = Batcher(max_rows=10_000, max_age_ms=1000)
    tables = [0]

    def emit(name: str, samples: Sequence[RawSample]) -> None:
        batcher.add(name, samples)
        count[0] += len(samples)

    sources = []
    metrics = AgentMetrics()
    for info, cfg in zip(sims, configs, strict=True):
        plan = [PlannedNode(a, s, n) for (a, s), n in Simulator(cfg).node_ids().items()]
        settings = OpcUaSourceSettings(endpoint=info["endpoint"], security="none", timeout_s=30)
        sources.append(OpcUaSource(settings, plan, metrics=metrics.source(settings.endpoint)))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(emit, stop)) for s in sources]

    async def drain() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.25)
            for asset in batcher.due():
                if batcher.take(asset) is not None:
                    tables[0] += 1

    drainer = asyncio.create_task(drain())
    try:
        result = await _measure(count, sum(c.signal_count for c in configs), duration, profile)
    finally:
        stop.set()
        await asyncio.gather(*tasks, drainer)
    result["tables"] = tables[0]
    return result


def _worker(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    configs = _configs(spec["signals"], spec["processes"], spec["period_ms"])
    # What each side imports before it connects (the coroutines import the same again, for free).
    if args.worker == "baseline":
        import asyncua  # noqa: F401
    else:
        import tidm.edge_agent.batcher
        import tidm.edge_agent.sources.opcua  # noqa: F401
    gc.collect()
    rss_import = _rss_mb()
    if spec["tracemalloc"]:
        tracemalloc.start()
        _TRACE_TOP[0] = spec["tracemalloc"]
    if args.worker == "baseline":
        result = asyncio.run(_baseline(spec["sims"], configs, spec["duration"]))
    else:
        result = asyncio.run(_tidm(spec["sims"], configs, spec["duration"], spec["profile"]))
    result["rss_import_mb"] = rss_import
    print(json.dumps(result), flush=True)  # noqa: T201 - the worker's report


def _run_worker(kind: str, spec_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N")
    parser.add_argument("--worker", choices=["baseline", "tidm"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    configs = _configs(args.signals, args.processes, args.period_ms)
    with tempfile.TemporaryDirectory(prefix="tidm-bench-opcua-") as tmp:
        workdir = Path(tmp)
        sims = _start_sims(configs, workdir)
        try:
            spec = {
                "signals": args.signals,
                "processes": args.processes,
                "period_ms": args.period_ms,
                "duration": args.duration,
                "profile": args.profile,
                "tracemalloc": args.tracemalloc,
                "sims": [info for _, info in sims],
            }
            spec_path = workdir / "spec.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            baseline = _run_worker("baseline", spec_path)
            tidm = _run_worker("tidm", spec_path)
        finally:
            for proc, _ in sims:
                _stop(proc)
    signals = sum(c.signal_count for c in configs)
    head = (
        f"OPC UA edge path: {signals} signals, {len(configs)} simulator processes, period {args.period_ms} ms"
    )
    print(head)  # noqa: T201
    print(  # noqa: T201
        f"{'':10} {'samples':>9} {'cpu s':>7} {'samples/s/core':>15} {'RSS MB: import':>15} "
        f"{'subscribed':>10} {'end':>6} {'(trimmed)':>9} {'C heap/in use':>14} {'threads':>7}"
    )
    for name, r in (("baseline", baseline), ("tidm", tidm)):
        heap = f"{r['heap_mb']}/{r['heap_used_mb']}" if "heap_mb" in r else "-"
        print(  # noqa: T201
            f"{name:10} {r['samples']:>9} {r['cpu_s']:>7} {r['per_core']:>15,} {r['rss_import_mb']:>15} "
            f"{r['rss_subscribed_mb']:>10} {r['rss_mb']:>6} {r.get('rss_trimmed_mb', '-'):>9} {heap:>14} "
            f"{r['threads']:>7}"
        )
    ratio = tidm["per_core"] / baseline["per_core"] if baseline["per_core"] else float("nan")
    print(f"tidm / baseline samples per core: {ratio:.2f}x")  # noqa: T201
    print(  # noqa: T201
        "RSS tidm - baseline: "
        + ", ".join(
            f"{label} {tidm[key] - baseline[key]:+.1f} MB"
            for label, key in (
                ("import", "rss_import_mb"),
                ("subscribed", "rss_subscribed_mb"),
                ("end", "rss_mb"),
            )
        )
    )
    rate_ok = tidm["per_core"] >= TARGET_RATE
    rss_ok = tidm["rss_mb"] <= TARGET_RSS_MB
    print(f"target >= {TARGET_RATE:,} samples/s per core: {'met' if rate_ok else 'NOT met'}")  # noqa: T201
    print(f"target RSS <= {TARGET_RSS_MB} MB at {signals} signals: {'met' if rss_ok else 'NOT met'}")  # noqa: T201
    if "profile" in tidm:
        print(tidm["profile"])  # noqa: T201
    for name, r in (("baseline", baseline), ("tidm", tidm)):
        pandas = "pandas imported (not in the runtime lock)" if r["pandas"] else "no pandas"
        print(f"{name}: {r['mappings']}; {pandas}")  # noqa: T201
    for name, r in (("baseline", baseline), ("tidm", tidm)):
        if "allocations" in r:
            print(f"{name}: {r['allocations']}")  # noqa: T201


if __name__ == "__main__":
    main()
