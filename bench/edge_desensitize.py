#!/usr/bin/env python3
"""Desensitization throughput at the edge, against sealing the same batches without it.

    .venv/bin/python bench/edge_desensitize.py [--quick]

Builds samples batches shaped like the agent's (one asset per batch, many signals, a quarter of
them text states), then in the same run measures, on the same batches:
  - baseline: seal (Arrow IPC + zstd + SHA-256 + Ed25519) only;
  - policy: desensitize (drop / mask / pseudonymize / generalize / pass) then seal;
  - desensitize alone.
Prints samples/s (median of the repeats, run alternately) and the ratio to the baseline, by wall
time and by CPU time of the process (the steadier measure on a shared, loaded machine).

`make_desensitizer()` and `make_batches()` are importable (bench/edge_spool.py uses them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.policy import KeyRing, Policy, PseudonymKey
from tidm.ingest import AgentIdentity, Provenance, new_batch_id, seal
from tidm.semantics import samples_table
from tidm.semantics.classification import ClassificationMap

STATES = ("IDLE", "RUNNING", "STOPPED", "SETUP", "ALARM")


def make_desensitizer() -> Desensitizer:
    """A policy touching every action: what a plant's egress policy typically looks like."""
    policy = Policy.model_validate(
        {
            "id": "bench",
            "version": "1",
            "rules": [
                {"match": {"min_level": "core"}, "action": "drop"},
                {"match": {"signal": "State0[0-4]*"}, "action": "pseudonymize", "key": "bench"},
                {"match": {"signal": "State0[5-9]*"}, "action": "mask", "keep_prefix": 1},
                {
                    "match": {"signal": "Signal0[0-2]*"},
                    "action": "generalize",
                    "step": 0.5,
                    "clamp": [-50, 50],
                },
                {"match": {"signal": "Signal03*"}, "action": "generalize", "time_step_ms": 1000},
            ],
        }
    )
    cmap = ClassificationMap.model_validate({"signals": [{"signal": "Signal04*", "level": "core"}]})
    keys = KeyRing({"bench@1": PseudonymKey("bench", 1, b"b" * 32)})
    return Desensitizer(policy, classification=cmap, keys=keys)


def make_batches(n_batches: int, rows: int, signals: int = 100, seed: int = 0) -> list[pa.Table]:
    """Batches of `rows` samples of one asset cycling over `signals` signals (every 4th a text state)."""
    rng = np.random.default_rng(seed)
    names = [f"State{j:03d}" if j % 4 == 3 else f"Signal{j:03d}" for j in range(signals)]
    out = []
    for b in range(n_batches):
        idx = np.arange(rows) % signals
        text_rows = idx % 4 == 3
        values = rng.normal(0, 20, rows)
        text = np.array([STATES[i % len(STATES)] for i in rng.integers(0, 50, rows)], dtype=object)
        ts = 1_764_288_000_000_000 + (b * rows + np.arange(rows, dtype=np.int64)) * 1000
        out.append(
            samples_table(
                ts_us=ts,
                recv_ts_us=ts + 100,
                asset_id=[f"urn:tidm:asset:a{b % 8}"] * rows,
                signal=[names[i] for i in idx],
                value=[None if tr else v for v, tr in zip(values.tolist(), text_rows, strict=True)],
                value_text=[t if tr else None for t, tr in zip(text, text_rows, strict=True)],
                quality=np.zeros(rows, dtype=np.uint8),
                status_code=np.zeros(rows, dtype=np.uint32),
                seq=np.arange(b * rows, (b + 1) * rows, dtype=np.uint64),
            )
        )
    return out


def _provenance(identity: AgentIdentity, table: pa.Table, extra: dict[str, object]) -> Provenance:
    return Provenance(
        agent_id=identity.agent_id,
        site="bench",
        asset_id="a",
        batch_id=new_batch_id(),
        sources=("opc.tcp://bench",),
        seq_first=0,
        seq_last=table.num_rows - 1,
        rows=table.num_rows,
        created_us=time.time_ns() // 1000,
        **extra,  # type: ignore[arg-type]
    )


def _rates(
    works: dict[str, Callable[[], None]], samples: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median samples/s (wall, CPU) of each piece of work; the pieces alternate so machine noise
    hits all alike."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start, cpu = time.perf_counter(), time.process_time()
            work()
            wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            runs[name].append((samples / wall_s, samples / max(cpu_s, 1e-9)))
    return {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in runs.items()
    }


def measure(n_batches: int = 40, rows: int = 10_000, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """samples/s of seal only, desensitize+seal and desensitize alone, on the same batches."""
    batches = make_batches(n_batches, rows)
    desensitizer = make_desensitizer()
    identity = AgentIdentity.generate("bench")
    samples = n_batches * rows

    def seal_only() -> None:
        for t in batches:
            seal(t, _provenance(identity, t, {}), identity)

    def with_policy() -> None:
        for t in batches:
            r = desensitizer.apply(t)
            seal(r.table, _provenance(identity, r.table, r.provenance_fields()), identity)

    def desensitize_only() -> None:
        for t in batches:
            desensitizer.apply(t)

    desensitize_only()  # warm the per-signal plan cache, as a running agent has
    seal_only()
    works = {"seal": seal_only, "desensitize+seal": with_policy, "desensitize": desensitize_only}
    return _rates(works, samples, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats")
    args = parser.parse_args()
    result = measure(8, 5_000, 3) if args.quick else measure()
    for measure_name, pick in (("wall", 0), ("CPU", 1)):
        base = result["seal"][pick]
        for name, rates in result.items():
            rate = rates[pick]
            print(
                f"{measure_name:>4} {name:>18}: {rate:>12,.0f} samples/s  ({rate / base:5.2f}x of seal only)"
            )
        overhead = base / result["desensitize+seal"][pick] - 1
        print(
            f"{measure_name:>4} desensitization adds {overhead:.1%} to the time of sealing the same batches"
        )


if __name__ == "__main__":
    main()
