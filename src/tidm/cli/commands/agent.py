"""`tidm agent ...`: keys and the collecting process of an edge agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click


@click.group()
def agent() -> None:
    """Edge agent: keys, and the collecting process."""


@agent.command("keygen")
@click.option("--agent-id", required=True, help="The agent's id, as named in its settings.")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Private key file (written 0600)."
)
@click.option(
    "--trust-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Also add the public key to this trusted-agents file (read by ingest).",
)
def agent_keygen(agent_id: str, out: Path, trust_file: Path | None) -> None:
    """Create an Ed25519 identity for an agent and print its public key."""
    from tidm.cli.processes import keygen

    click.echo(keygen(agent_id, out, trust_file))


@agent.command("run")
@click.option("--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None)
def agent_run(config: Path | None) -> None:
    """Collect from the configured sources and publish signed batches until SIGINT/SIGTERM.

    Settings errors name the file, line and field. While running, `health.port` (default 9464 on
    127.0.0.1) serves /healthz, /readyz and /metrics. SIGTERM flushes every open batch first.
    """
    from tidm.cli.processes import run_agent
    from tidm.cli.settings import AgentProcessSettings, load_settings

    settings = load_settings(AgentProcessSettings, config)
    stats = asyncio.run(run_agent(settings))
    click.echo(
        f"agent stopped: {stats.samples_in} samples in, {stats.batches_published} batches published, "
        f"{stats.rows_published} rows published"
    )
