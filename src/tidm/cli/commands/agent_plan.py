"""`tidm agent plan`: print the acquisition plan an AAS file gives, for review before running."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tidm.cli.commands.agent import agent

if TYPE_CHECKING:
    from tidm.semantics.plan import AcquisitionPlan, PlanRow

_COLUMNS = (
    "SIGNAL",
    "ADDRESS",
    "UNIT",
    "TYPE",
    "SAMPLING",
    "DEADBAND",
    "LEVEL",
    "CATEGORY",
    "SEMANTIC ID",
    "FROM",
)


@agent.command("plan")
@click.option(
    "--aas",
    "aas_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="AAS environment: .json, .xml or .aasx with an Asset Interfaces Description submodel.",
)
@click.option(
    "--mapping",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML mapping of AID properties to signals (used where the AAS has no AIMC, overrides it).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for tools (stable key order).",
)
@click.option(
    "--catalog",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the signal catalog (unit, semantic id, data type, level per signal) to this JSON file.",
)
def agent_plan(aas_file: Path, mapping: Path | None, fmt: str, catalog: Path | None) -> None:
    """Show what the agent would collect for the equipment described by an AAS file."""
    from tidm.semantics.catalog import SignalCatalog
    from tidm.semantics.errors import SemanticsError
    from tidm.semantics.plan import load_plan

    try:
        plan = load_plan(aas_file, mapping)
        if catalog is not None:
            SignalCatalog.from_plan(plan).save(catalog)
    except SemanticsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(plan.to_json(), nl=False)
    else:
        click.echo(render_table(plan))


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cells(row: PlanRow) -> list[str]:
    sampling = f"{row.sampling_interval_ms:g} ms" if row.sampling_interval_ms is not None else "-"
    deadband = _cell(row.deadband)
    if row.deadband is not None and row.deadband_type == "percent":
        deadband += " %"
    return [
        row.signal,
        row.address,
        _cell(row.unit),
        _cell(row.data_type),
        sampling,
        deadband,
        f"{row.level.gbt} (MIIT {row.level.miit})",
        _cell(row.category),
        _cell(row.semantic_id),
        row.mapped_by,
    ]


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "    " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def render_table(plan: AcquisitionPlan) -> str:
    """The plan as aligned text: one block per asset and interface, columns aligned across blocks."""
    table = [_cells(r) for r in plan.rows]
    widths = [max([len(h), *(len(t[i]) for t in table)]) for i, h in enumerate(_COLUMNS)]
    assets = list(dict.fromkeys(r.asset_id for r in plan.rows))
    lines = [f"{plan.source}: {len(plan.rows)} signals of {len(assets)} asset(s)"]
    for asset in assets:
        lines += ["", f"asset {asset}"]
        rows = [(r, c) for r, c in zip(plan.rows, table, strict=True) if r.asset_id == asset]
        blocks = list(dict.fromkeys((r.interface, r.protocol.value, r.endpoint, r.security) for r, _ in rows))
        for interface, protocol, endpoint, security in blocks:
            lines.append(f"  {interface}  {protocol}  {endpoint}  security: {', '.join(security)}")
            lines.append(_line(_COLUMNS, widths))
            for row, cells in rows:
                if (row.interface, row.protocol.value, row.endpoint, row.security) == (
                    interface,
                    protocol,
                    endpoint,
                    security,
                ):
                    lines.append(_line(cells, widths))
    for skip in plan.skipped:
        lines += ["", f"skipped {skip.asset_id} {skip.interface} ({skip.protocol}): {skip.reason}"]
    return "\n".join(lines)
