"""The `tidm` command: parse settings, build the parts, run them.

Subcommands live in `tidm.cli.commands`, one module per area, and are found by scanning that
package, so areas are added without touching this file.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from tidm import __version__
from tidm.cli import commands
from tidm.errors import TidmError

__all__ = ["cli", "main"]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group()
@click.version_option(__version__, prog_name="tidm")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """TIDM: trusted industrial data, from the equipment to the lake, with evidence at every hop."""
    _setup_logging(verbose)


def _register() -> None:
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        found += [
            v for k, v in vars(module).items() if isinstance(v, click.Command) and not k.startswith("_")
        ]
    # Subcommands of a group are reached through it; only the roots become `tidm` subcommands.
    nested = {id(c) for g in found if isinstance(g, click.Group) for c in g.commands.values()}
    for command in found:
        if id(command) not in nested and command.name and command.name not in cli.commands:
            cli.add_command(command)


_register()


def main() -> None:
    """Console entry point: TIDM errors become one clear line and exit code 2."""
    try:
        cli(standalone_mode=True)
    except TidmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
