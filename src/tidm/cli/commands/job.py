"""`tidm job ...`: stream jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click


@click.group()
def job() -> None:
    """Stream jobs: verify, clean and land batches exactly once."""


@job.command("run")
@click.option(
    "--spec",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The job spec (what it does); may also hold the process settings, the spec then under `job:`.",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Process settings (transport, evidence, lake, trusted agents, quarantine); TIDM_* env overrides.",
)
def job_run(spec: Path, config: Path | None) -> None:
    """Run a stream job in its consumer group until SIGINT/SIGTERM."""
    from tidm.cli.processes import load_job, run_job

    settings, loaded = load_job(spec, config)
    stats = asyncio.run(run_job(settings, loaded))
    click.echo(
        f"job stopped: {stats.batches} batches, {stats.rows_landed} rows landed, "
        f"{stats.quarantined} quarantined"
    )


@job.command("validate")
@click.option("--spec", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
def job_validate(spec: Path) -> None:
    """Check a job spec: fields, step names and step parameters (errors name file, line and step)."""
    from tidm.stream_processing.spec import load_spec

    loaded = load_spec(spec)
    click.echo(f"ok: job '{loaded.name}' reads {', '.join(loaded.topics)} in group {loaded.group}")
    for i, s in enumerate(loaded.steps, 1):
        target = f" -> table {s.output}" if s.output else ""
        click.echo(f"  {i}. {s.name} {s.params or ''}{target}")
    click.echo(
        f"  lands in '{loaded.table}' (rejects in '{loaded.rejected_table}'), look-back "
        f"{loaded.effective_lookback_s:g} s"
    )


def _read_sample(path: Path):  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path)
    with pa.OSFile(str(path), "rb") as src:
        head = src.read(6)
    if head == b"ARROW1":
        return pa.ipc.open_file(str(path)).read_all()
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


@job.command("dry-run")
@click.option("--spec", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option(
    "--sample",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="A local samples file: Parquet or Arrow IPC (e.g. a landed object or an exported batch).",
)
@click.option("--rows", default=5, show_default=True, help="Rows to show after each step.")
def job_dry_run(spec: Path, sample: Path, rows: int) -> None:
    """Run the spec's steps on a local sample and print the table before and after each step."""
    import polars as pl
    import pyarrow as pa

    from tidm.stream_processing.spec import apply_steps, load_spec
    from tidm.stream_processing.steps import with_flags

    loaded = load_spec(spec)
    table = _read_sample(sample).replace_schema_metadata(None)
    if "flags" not in table.column_names:
        table = with_flags(table)
    table = table.filter(loaded.select.mask(table))
    show = pl.Config(tbl_rows=rows, tbl_cols=12)

    def frame(t: pa.Table) -> pl.DataFrame:
        out = pl.from_arrow(t)
        assert isinstance(out, pl.DataFrame)  # noqa: S101 - from_arrow of a table is a frame
        return out.head(rows)

    with show:
        click.echo(f"input after selection: {table.num_rows} rows")
        click.echo(frame(table))
        current = table
        for i, bound in enumerate(loaded.bind(), 1):
            outcome = apply_steps(current, [bound])
            rejected = sum(t.num_rows for t in outcome.rejected)
            click.echo(
                f"\nstep {i} '{bound.name}' {bound.params or ''}: counts {outcome.counts[f'1:{bound.name}']}"
            )
            if bound.output:
                out_rows = sum(t.num_rows for t in outcome.outputs[bound.output])
                click.echo(f"  -> {out_rows} rows to table '{bound.output}'; the flow goes on unchanged")
                click.echo(frame(pa.concat_tables(outcome.outputs[bound.output])))
                continue
            click.echo(f"  {current.num_rows} rows in, {outcome.kept.num_rows} kept, {rejected} rejected")
            click.echo(frame(outcome.kept))
            current = outcome.kept
