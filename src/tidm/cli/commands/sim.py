"""`tidm sim ...`: the OPC UA equipment simulator."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def sim() -> None:
    """The OPC UA equipment simulator."""


@sim.command("run")
@click.option("--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None)
def sim_run(config: Path | None) -> None:
    """Serve simulated equipment until SIGINT/SIGTERM; prints its endpoint as one JSON line."""
    import json

    from tidm.simulator import SimulatorConfig, load_config, run_forever

    sim_config = load_config(config) if config else SimulatorConfig()
    run_forever(sim_config, announce=lambda info: click.echo(json.dumps(dict(info))))
