"""The `tidm` command: parse settings, build the parts, run them."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from tidm import __version__
from tidm.errors import TidmError

__all__ = ["main"]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _until_signalled(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@click.group()
@click.version_option(__version__, prog_name="tidm")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """TIDM: trusted industrial data, from the equipment to the lake, with evidence at every hop."""
    _setup_logging(verbose)


@cli.command()
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


def main() -> None:
    """Console entry point: TIDM errors become one clear line and exit code 2."""
    try:
        cli(standalone_mode=True)
    except TidmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
