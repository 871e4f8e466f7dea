"""The Plans view's work: an uploaded AAS file in, the acquisition plan out as table rows, with what
is wrong marked (the load error, interfaces that were skipped, rows missing what the agent needs)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tidm.semantics.errors import SemanticsError
from tidm.semantics.plan import AcquisitionPlan, PlanRow, load_plan

__all__ = ["PlanView", "plan_from_upload"]

_SUFFIXES = (".json", ".xml", ".aasx")
MAX_UPLOAD = 32 * 1024 * 1024


@dataclass
class PlanView:
    """What the Plans page shows."""

    filename: str
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    assets: int = 0

    @property
    def problems(self) -> int:
        return (1 if self.error else 0) + len(self.skipped) + sum(1 for r in self.rows if r["problems"])


def _row_problems(row: PlanRow) -> list[str]:
    problems = []
    if row.sampling_interval_ms is None and row.protocol.value == "opcua":
        problems.append("no sampling interval (the server's default applies)")
    if not row.unit:
        problems.append("no unit")
    if not row.semantic_id:
        problems.append("no semantic id")
    return problems


def _rows(plan: AcquisitionPlan) -> list[dict[str, Any]]:
    out = []
    for row in plan.rows:
        out.append(
            {
                "asset": row.asset_id,
                "interface": row.interface,
                "protocol": row.protocol.value,
                "endpoint": row.endpoint,
                "signal": row.signal,
                "address": row.address,
                "unit": row.unit or "",
                "data_type": row.data_type or "",
                "sampling": f"{row.sampling_interval_ms:g} ms"
                if row.sampling_interval_ms is not None
                else "",
                "level": f"{row.level.gbt} (MIIT {row.level.miit})",
                "category": str(row.category or ""),
                "semantic_id": row.semantic_id or "",
                "mapped_by": row.mapped_by,
                "problems": _row_problems(row),
            }
        )
    return out


def _suffix(name: str) -> str | None:
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    return suffix if suffix in _SUFFIXES else None


def plan_from_upload(filename: str, data: bytes, mapping: bytes | None = None) -> PlanView:
    """Build the plan of an uploaded AAS environment (.json, .xml or .aasx); nothing is deployed."""
    shown = PurePosixPath(filename.replace("\\", "/")).name[:200] or "(unnamed)"
    suffix = _suffix(filename)
    if suffix is None:
        return PlanView(shown, error=f"{shown}: an AAS file must end in .json, .xml or .aasx")
    if not data:
        return PlanView(shown, error=f"{shown}: the file is empty")
    if len(data) > MAX_UPLOAD:
        return PlanView(shown, error=f"{shown}: larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
    with tempfile.TemporaryDirectory(prefix="tidm-console-plan-") as folder:
        aas = Path(folder) / f"environment{suffix}"
        aas.write_bytes(data)
        mapping_path = None
        if mapping:
            mapping_path = Path(folder) / "mapping.yaml"
            mapping_path.write_bytes(mapping)
        try:
            plan = load_plan(aas, mapping_path)
        except SemanticsError as exc:
            # The message names the temporary copy; the user knows the file by its own name.
            text = str(exc).replace(str(aas), shown).replace(str(mapping_path), "mapping file")
            return PlanView(shown, error=text.replace(folder, ""))
    view = PlanView(shown, rows=_rows(plan), assets=len({r.asset_id for r in plan.rows}))
    view.skipped = [
        {"asset": s.asset_id, "interface": s.interface, "protocol": s.protocol, "reason": s.reason}
        for s in plan.skipped
    ]
    return view
