#!/usr/bin/env python3
"""The edge agent's benchmarks in one run (issues 3 and 4), each with its own in-run baseline:

    .venv/bin/python bench/edge.py [--quick]

  - bench/edge_opcua.py       OPC UA: samples/s per core and RSS vs a bare asyncua receiver (10k signals)
  - bench/edge_mqtt.py        MQTT single-sample and batched JSON vs a bare paho receiver
  - bench/edge_spool.py       the durable spool and desensitization vs the in-memory path
  - bench/edge_desensitize.py desensitization vs sealing alone

Each runs in its own process (clean RSS), one after the other so they don't share the CPUs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "edge_opcua.py": ([], ["--signals", "4000", "--processes", "2", "--duration", "8"]),
    "edge_mqtt.py": ([], ["--single", "10000", "--batches", "1000"]),
    "edge_spool.py": ([], ["--samples", "60000", "--rounds", "2"]),
    "edge_desensitize.py": ([], ["--quick"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs of each bench")
    args = parser.parse_args()
    status = 0
    for script, (full, quick) in RUNS.items():
        print(f"\n===== {script} =====", flush=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(HERE / script), *(quick if args.quick else full)], check=False
        )
        print(f"----- {script}: exit {done.returncode}, {time.monotonic() - started:.0f} s", flush=True)
        status = status or done.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
