"""The agent side of the restart drill, in its own process so its RSS is the source's alone.

`python -m tests.edge_agent.opcua_restart_agent ENDPOINT PLAN.json` runs an OpcUaSource and prints
one JSON line per connection once every planned variable delivered on it:
{"connects": n, "namespace_index": i, "rss": bytes (after a full collection), "samples": total}.
Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
from collections.abc import Sequence

import psutil

from tidm.edge_agent.config import OpcUaSourceSettings
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.opcua import OpcUaSource, PlannedNode


async def main(endpoint: str, plan_path: str) -> None:
    with open(plan_path, encoding="utf-8") as f:
        plan = [PlannedNode(**row) for row in json.load(f)]
    settings = OpcUaSourceSettings(
        endpoint=endpoint, security="none", reconnect_initial_s=0.2, reconnect_max_s=2.0, timeout_s=5.0
    )
    source = OpcUaSource(settings, plan)
    keys = {(p.asset_id, p.signal) for p in plan}
    fresh: set[tuple[str, str]] = set()
    epoch = 0

    def emit(name: str, samples: Sequence[RawSample]) -> None:
        if source.stats.connects == epoch:
            fresh.update((s.asset_id, s.signal) for s in samples)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(source.run(emit, stop))
    process = psutil.Process()
    reported = 0
    while not stop.is_set() and not task.done():
        await asyncio.sleep(0.1)
        if source.stats.connects != epoch:
            epoch = source.stats.connects
            fresh.clear()
        if epoch > reported and fresh >= keys:
            reported = epoch
            gc.collect()
            line = {
                "connects": epoch,
                "namespace_index": source.stats.namespace_index,
                "rss": process.memory_info().rss,
                "samples": source.stats.samples,
            }
            print(json.dumps(line), flush=True)  # noqa: T201 - the protocol with the test
    stop.set()
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
