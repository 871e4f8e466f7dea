"""`tidm demo`: the whole flow in one process on embedded defaults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True)
@click.option("--duration", type=float, default=15.0, show_default=True, help="Seconds of collection.")
@click.option("--assets", type=int, default=4, show_default=True)
@click.option("--signals", type=int, default=8, show_default=True, help="Signals per asset.")
@click.option("--period-ms", type=int, default=100, show_default=True, help="Simulator update period.")
def demo(workdir: Path, duration: float, assets: int, signals: int, period_ms: int) -> None:
    """Run the whole flow in one process on embedded defaults, then verify its evidence."""
    from tidm.cli.demo import print_summary, run_demo

    click.echo(
        f"TIDM demo: {assets} simulated assets x {signals} signals every {period_ms} ms, "
        f"{duration:.0f} s of collection ..."
    )
    result = asyncio.run(
        run_demo(workdir, duration_s=duration, assets=assets, signals=signals, period_ms=period_ms)
    )
    print_summary(result)
