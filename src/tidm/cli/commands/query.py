"""`tidm query ...`, `tidm catalog`, `tidm recall` and `tidm lake expire`: the lake for maintenance
teams and data providers. Every read is checked against grants and logged as evidence."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import polars as pl
from tqdm import tqdm

if TYPE_CHECKING:
    import pyarrow as pa

    from tidm.storage.read import UnitStream

__all__ = ["catalog", "lake", "query", "recall"]

_SHOWN = 50

_CONFIG = click.option(
    "--config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Settings file (lake, evidence, read.grants, read.catalog); TIDM_* variables override it.",
)


def _settings(config: Path | None):  # type: ignore[no-untyped-def]
    from tidm.cli.settings import LakeAccessSettings, load_settings

    return load_settings(LakeAccessSettings, config)


def _time(ctx: click.Context, param: click.Parameter, value: str) -> dt.datetime:
    from tidm.cli.lake_access import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.group()
def query() -> None:
    """Read cleaned per-unit data from the lake (checked against your grants, logged)."""


@query.command("unit")
@click.argument("asset")
@click.option(
    "--from", "start", required=True, callback=_time, help="Start (inclusive), ISO 8601 UTC or a date."
)
@click.option("--to", "end", required=True, callback=_time, help="End (exclusive).")
@click.option("--signals", default=None, help="Comma-separated signal ids (default: all you may read).")
@click.option("--table", default="clean", show_default=True)
@click.option("--site", default=None)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "parquet", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write here, not stdout."
)
@click.option("--as", "principal", default=None, help="Principal to read as (default: read.principal).")
@click.option("--metadata/--no-metadata", default=False, help="Join unit and semantic id from the catalog.")
@_CONFIG
def query_unit(
    asset: str,
    start: dt.datetime,
    end: dt.datetime,
    signals: str | None,
    table: str,
    site: str | None,
    fmt: str,
    out: Path | None,
    principal: str | None,
    metadata: bool,
    config: Path | None,
) -> None:
    """Samples of one unit (asset) between --from and --to."""
    from tidm.cli.lake_access import open_read_side
    from tidm.storage.errors import LakeError, RequestTooLarge

    wanted = [s.strip() for s in signals.split(",") if s.strip()] if signals else None
    if fmt == "parquet" and out is None:
        msg = "parquet output is binary: use --out FILE"
        raise click.UsageError(msg)
    settings = _settings(config)
    with open_read_side(settings, reads_for="`tidm query` (grant read limits)") as side:
        try:
            stream = side.reader(principal, channel="cli").stream_unit(
                asset,
                start,
                end,
                wanted,
                table,
                site=site,
                with_metadata=metadata,
            )
        except (RequestTooLarge, LakeError) as exc:
            raise click.ClickException(str(exc)) from None
        try:
            if fmt == "table":
                _show(stream)
                return
            # Exports stream batch by batch (bounded memory) with a progress bar on stderr.
            rows = _export(stream, fmt, out)
        finally:
            stream.close()
        if out is not None:
            click.echo(f"wrote {rows} rows to {out}", err=True)


def _export(stream: UnitStream, fmt: str, out: Path | None) -> int:
    from tidm.storage.formats import encode

    rows = 0
    with tqdm(unit=" rows", file=sys.stderr, disable=None, desc="export") as bar:

        def counted() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            for batch in stream.batches:
                rows += batch.num_rows
                bar.update(batch.num_rows)
                yield batch

        chunks = encode(stream.schema, counted(), fmt)  # type: ignore[arg-type]
        if out is None:
            for chunk in chunks:
                click.echo(chunk, nl=False)
        else:
            with out.open("wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
    return rows


def _show(stream: UnitStream) -> None:
    """The first rows as a table and how many there are (the rest is counted, not held)."""
    head: list[pl.DataFrame] = []
    shown, total = 0, 0
    for batch in stream.batches:
        total += batch.num_rows
        if shown < _SHOWN:
            part = pl.from_arrow(batch.slice(0, _SHOWN - shown))
            assert isinstance(part, pl.DataFrame)  # noqa: S101 - from_arrow of a batch is a frame
            head.append(part)
            shown += part.height
    empty = pl.from_arrow(stream.schema.empty_table())
    assert isinstance(empty, pl.DataFrame)  # noqa: S101 - from_arrow of a table is a frame
    frame = pl.concat(head) if head else empty
    with pl.Config(tbl_rows=_SHOWN, tbl_cols=12):
        click.echo(frame)
    click.echo(
        f"{total} rows"
        + (f" (first {shown} shown; use --format csv/json/parquet for all)" if total > shown else "")
    )


@click.command()
@click.option("--table", "tables", multiple=True, default=("clean",), show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_CONFIG
def catalog(tables: tuple[str, ...], fmt: str, config: Path | None) -> None:
    """Sites, assets and signals in the lake with unit, semantic id, classification, coverage and rows."""
    from tidm.cli.lake_access import open_read_side
    from tidm.storage.catalog import inventory

    with open_read_side(_settings(config)) as side:
        frame = inventory(side.lake, tables, side.catalog)
    if fmt == "json":
        click.echo(frame.write_json())
    else:
        with pl.Config(tbl_rows=200, tbl_cols=12, fmt_str_lengths=60):
            click.echo(frame)


@click.command()
@click.option("--asset", required=True)
@click.option("--from", "start", required=True, callback=_time)
@click.option("--to", "end", required=True, callback=_time)
@click.option("--reason", required=True, help="Why the data is withdrawn (goes to the evidence log).")
@click.option("--site", default=None)
@click.option("--as", "actor", default="provider", show_default=True, help="Who recalls (evidence actor).")
@_CONFIG
def recall(
    asset: str,
    start: dt.datetime,
    end: dt.datetime,
    reason: str,
    site: str | None,
    actor: str,
    config: Path | None,
) -> None:
    """Withdraw an asset's data in a time range: delete it and record DROP entries as evidence."""
    from tidm.cli.lake_access import open_read_side
    from tidm.storage.recall import recall as do_recall

    with open_read_side(_settings(config)) as side:
        result = do_recall(
            side.lake,
            side.evidence,
            asset=asset,
            start=start,
            end=end,
            reason=reason,
            actor=f"provider:{actor}",
            site=site,
        )
    click.echo(
        f"recalled {result.rows_removed} rows: {len(result.deleted)} objects deleted, "
        f"{len(result.rewritten)} rewritten; DROP entries are in the evidence log"
    )


@click.group()
def lake() -> None:
    """Lake housekeeping."""


@lake.command("expire")
@_CONFIG
def lake_expire(config: Path | None) -> None:
    """Delete whole days older than each table's retention (read.retention_days), with EXPIRE evidence."""
    from tidm.cli.lake_access import open_read_side
    from tidm.storage.recall import expire

    settings = _settings(config)
    retention = {t: dt.timedelta(days=d) for t, d in settings.read.retention_days.items()}
    with open_read_side(settings) as side:
        expired = expire(side.lake, side.evidence, retention=retention, actor="retention")
    click.echo(f"expired {len(expired)} objects")


@lake.command("init")
@click.option("--object-lock/--no-object-lock", default=False, help="Create the bucket with object lock.")
@_CONFIG
def lake_init(object_lock: bool, config: Path | None) -> None:
    """Create the lake's S3 bucket (versioning on; object lock if asked) and report what the server grants."""
    from tidm.storage.buckets import ensure_bucket

    state = ensure_bucket(_settings(config).lake, object_lock=object_lock)
    click.echo(
        f"bucket {state.bucket}: {'created' if state.created else 'exists'}, "
        f"versioning {'on' if state.versioning else 'OFF'}, "
        f"object lock {'on' if state.object_lock else 'off'}"
    )
