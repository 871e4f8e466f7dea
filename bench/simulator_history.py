"""The simulator's write path with and without history, measured in the same run.

    python bench/simulator_history.py [--signals 5000] [--ticks 60] [--rounds 3]

Runs the in-process simulator (no client connected) for `--ticks` ticks with `history.enabled`
off, then on, `--rounds` times alternately, and prints the update loop's busy time per tick
(SimulatorStats.busy_s / ticks) and the ratio on/off. Recording history is two list appends per
sample, so the ratio should stay close to 1.0; the off path is the simulator as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from tidm.simulator import HistoryConfig, Simulator, SimulatorConfig


async def _busy_per_tick(signals: int, ticks: int, history: bool) -> float:
    per_asset = 500
    config = SimulatorConfig.fleet(
        max(1, signals // per_asset),
        min(signals, per_asset),
        period_ms=100,
        max_ticks=ticks,
        produced_limit=0,
        history=HistoryConfig(enabled=history),
    )
    async with Simulator(config) as sim:
        await sim.wait_ticks(ticks, timeout=ticks * 2.0 + 30)
        stats = sim.stats
    return stats.busy_s / stats.ticks


async def _main(args: argparse.Namespace) -> None:
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(await _busy_per_tick(args.signals, args.ticks, history=False))
        on.append(await _busy_per_tick(args.signals, args.ticks, history=True))
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"signals={args.signals} ticks={args.ticks} rounds={args.rounds}")
    print(f"history off: {m_off * 1000:.2f} ms busy per tick (median)")
    print(f"history on:  {m_on * 1000:.2f} ms busy per tick (median)")
    print(f"ratio on/off: {m_on / m_off:.3f}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=5000)
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
