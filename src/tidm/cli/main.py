"""The `tidm` command: parse settings, build the parts, run them."""

from __future__ import annotations

import asyncio
import logging
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


@cli.group()
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
    """Collect from the configured sources and publish signed batches until SIGINT/SIGTERM."""
    from tidm.cli.processes import run_agent
    from tidm.cli.settings import AgentProcessSettings, load_settings

    settings = load_settings(AgentProcessSettings, config)
    stats = asyncio.run(run_agent(settings))
    click.echo(f"agent stopped: {stats.samples_in} samples in, {stats.batches_published} batches published")


@cli.group()
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


@cli.group()
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


@cli.group()
def evidence() -> None:
    """The evidence log: checkpoints and verification."""


@evidence.command("checkpoint")
@click.option(
    "--log", "log_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def evidence_checkpoint(log_path: Path, key_path: Path, out: Path) -> None:
    """Sign a C2SP checkpoint of the log's current tree with the notary key."""
    from tidm.evidence import SqliteEvidenceLog, load_signer

    log = SqliteEvidenceLog(log_path)
    try:
        note = log.checkpoint(load_signer(key_path))
    finally:
        log.close()
    out.write_text(note, encoding="utf-8")
    click.echo(note, nl=False)


@evidence.command("verify")
@click.option(
    "--log", "log_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option("--vkey", "vkeys", multiple=True, required=True, help="Verifier key text (repeatable).")
def evidence_verify(log_path: Path, checkpoint: Path, vkeys: tuple[str, ...]) -> None:
    """Recompute every leaf and the root; check them against a signed checkpoint."""
    from tidm.evidence import SqliteEvidenceLog, verify_log

    log = SqliteEvidenceLog(log_path)
    try:
        report = verify_log(log, list(vkeys), checkpoint.read_text(encoding="utf-8"))
    finally:
        log.close()
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAILED: {problem}", err=True)
        sys.exit(1)
    size = report.checkpoint.size if report.checkpoint else 0
    click.echo(f"ok: {size} entries match the signed checkpoint ({report.unsigned_entries} appended since)")


def main() -> None:
    """Console entry point: TIDM errors become one clear line and exit code 2."""
    try:
        cli(standalone_mode=True)
    except TidmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
