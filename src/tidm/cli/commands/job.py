"""`tidm job ...`: stream jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click


@click.group()
def job() -> None:
    """Stream jobs: verify, clean and land batches exactly once."""


@job.command("run")
@click.option("--spec", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None)
def job_run(spec: Path | None) -> None:
    """Run a stream job in its consumer group until SIGINT/SIGTERM."""
    from tidm.cli.processes import run_job
    from tidm.cli.settings import JobProcessSettings, load_settings

    settings = load_settings(JobProcessSettings, spec)
    stats = asyncio.run(run_job(settings))
    click.echo(
        f"job stopped: {stats.batches} batches, {stats.rows_landed} rows landed, "
        f"{stats.quarantined} quarantined"
    )
