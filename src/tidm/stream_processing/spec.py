"""Job specs: what data engineers write (YAML, or Python with `@step`), validated before anything runs.

A spec names its source topics and consumer group, a signal selection (asset / signal globs and
semantic ids), ordered steps with parameters, the tables the results land in, and the look-back
its stateful steps need. Steps are looked up by name in the kernels' `STEPS`, in functions
registered with `@step`, and in plugin packages through the `tidm.steps` entry-point group.
Errors name the file, the line and the step.

A step transforms the flow (what it keeps goes on; what it rejects lands in the rejected table with
its flags), unless it has `output: <table>`: then it is a branch whose result lands in that table
(features, user tables) and the flow goes on unchanged.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidm.stream_processing.errors import JobSpecError
from tidm.stream_processing.steps import StepResult

__all__ = [
    "BoundStep",
    "JobSpec",
    "Selection",
    "StepFn",
    "StepSpec",
    "apply_steps",
    "load_spec",
    "registry",
    "step",
]

StepFn = Callable[..., StepResult]
_USER_STEPS: dict[str, StepFn] = {}
_LOOKBACK: dict[str, float] = {}
ENTRY_POINT_GROUP = "tidm.steps"


def step(name: str | None = None, *, lookback_s: float = 0.0) -> Callable[[StepFn], StepFn]:
    """Register `fn(table, **params) -> StepResult` as a step usable from job specs.

    `lookback_s` declares how much history the step needs per signal (the runner replays it).
    """

    def register(fn: StepFn) -> StepFn:
        key = name or fn.__name__
        _USER_STEPS[key] = fn
        _LOOKBACK[key] = lookback_s
        return fn

    return register


def registry() -> dict[str, StepFn]:
    """Every step known by name: built-in kernels, plugin entry points, then `@step` functions."""
    from tidm.stream_processing.kernels import STEPS

    found: dict[str, StepFn] = dict(STEPS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    found.update(_USER_STEPS)
    return found


class Selection(BaseModel):
    """Which samples the job takes: all globs and ids must match (empty = everything)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    assets: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()
    semantic_ids: tuple[str, ...] = ()

    def mask(self, table: pa.Table, semantic_ids: Mapping[tuple[str, str], str] | None = None) -> pa.Array:
        """A boolean mask of the rows of a samples table that the selection takes.

        Globs and ids are matched once per distinct value (the dictionary), then spread to the rows
        by their codes: no per-row Python. A null value matches as the empty string.
        """
        keep = np.ones(table.num_rows, dtype=bool)
        coded: dict[str, tuple[np.ndarray, list[str | None]]] = {}
        for column, patterns in (("asset_id", self.assets), ("signal", self.signals)):
            if patterns:
                codes, values = coded.setdefault(column, _codes(table.column(column)))
                hit = np.array([any(fnmatch.fnmatchcase(v or "", p) for p in patterns) for v in values])
                keep &= hit[codes]
        if self.semantic_ids:
            ids = semantic_ids or {}
            a_codes, assets = coded.get("asset_id") or _codes(table.column("asset_id"))
            s_codes, signals = coded.get("signal") or _codes(table.column("signal"))
            pairs, inverse = np.unique(a_codes * len(signals) + s_codes, return_inverse=True)
            hit = np.array(
                [
                    ids.get((assets[p // len(signals)], signals[p % len(signals)])) in self.semantic_ids
                    for p in pairs.tolist()
                ],
                dtype=bool,
            )
            keep &= hit[inverse.reshape(-1)]
        return pa.array(keep, type=pa.bool_())


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str | None]]:
    """Row codes into a list of distinct string values (the last entry, None, stands for null)."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(pc.cast(column, pa.string()))
    elif not pa.types.is_string(column.type.value_type):
        column = pc.dictionary_encode(pc.cast(column, pa.string()))
    chunks = column.unify_dictionaries().chunks
    values: list[str | None] = chunks[0].dictionary.to_pylist() if chunks else []
    null = len(values)
    parts = [c.indices.fill_null(null).to_numpy(zero_copy_only=False) for c in chunks]
    codes = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return codes, [*values, None]


class StepSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    line: int | None = None


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    topics: tuple[str, ...] = ("tidm.samples",)
    group_id: str | None = None
    select: Selection = Selection()
    steps: tuple[StepSpec, ...] = ()
    table: str = "clean"
    rejected_table: str = "rejected"
    output_topic: str | None = None
    lookback_s: float = Field(default=0.0, ge=0)
    max_records: int = Field(default=500, ge=1)
    # Landing units (see tidm.stream_processing.runner): windows of message time, capped by aligned
    # offset blocks; a unit of an idle partition closes after `idle_s` without new messages.
    unit_s: float = Field(default=10.0, gt=0)
    unit_messages: int = Field(default=1000, ge=1)
    idle_s: float = Field(default=1.0, gt=0)
    source: str = "<python>"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            msg = f"job name {value!r} must be letters, digits, '-', '_' or '.'"
            raise ValueError(msg)
        return value

    @property
    def group(self) -> str:
        return self.group_id or f"tidm-job-{self.name}"

    def bind(self) -> list[BoundStep]:
        """Resolve every step by name and check its parameters; errors name file, line and step."""
        known = registry()
        bound = []
        for i, s in enumerate(self.steps):
            where = f"{self.source}:{s.line}" if s.line else self.source
            fn = known.get(s.name)
            if fn is None:
                close = sorted(k for k in known if k[:3] == s.name[:3]) or sorted(known)[:8]
                msg = f"{where}: step {i + 1} '{s.name}': unknown step (known: {', '.join(close)} ...)"
                raise JobSpecError(msg)
            try:
                inspect.signature(fn).bind(pa.table({}), **s.params)
            except TypeError as exc:
                msg = f"{where}: step {i + 1} '{s.name}': bad parameters {sorted(s.params)}: {exc}"
                raise JobSpecError(msg) from None
            bound.append(BoundStep(s.name, fn, dict(s.params), s.output, where, _LOOKBACK.get(s.name, 0.0)))
        return bound

    @property
    def effective_lookback_s(self) -> float:
        return max([self.lookback_s, *(_LOOKBACK.get(s.name, 0.0) for s in self.steps)])


@dataclass(frozen=True)
class BoundStep:
    name: str
    fn: StepFn
    params: dict[str, Any]
    output: str | None
    where: str
    lookback_s: float = 0.0


@dataclass
class StepsOutcome:
    """What a run of the steps produced: the flow's result, rejects and branch outputs, with counts."""

    kept: pa.Table
    rejected: list[pa.Table] = field(default_factory=list)
    outputs: dict[str, list[pa.Table]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def apply_steps(table: pa.Table, steps: Sequence[BoundStep]) -> StepsOutcome:
    """Run the steps in order on `table` (samples with `flags`)."""
    outcome = StepsOutcome(kept=table)
    for i, s in enumerate(steps):
        try:
            result = s.fn(outcome.kept, **s.params)
        except JobSpecError:
            raise
        except Exception as exc:
            msg = f"{s.where}: step {i + 1} '{s.name}' failed: {exc}"
            raise JobSpecError(msg) from exc
        outcome.counts[f"{i + 1}:{s.name}"] = dict(result.counts)
        if s.output is not None:
            outcome.outputs.setdefault(s.output, []).append(result.kept)
            continue
        outcome.kept = result.kept
        if result.rejected.num_rows:
            outcome.rejected.append(result.rejected)
    return outcome


def _with_lines(text: str, section: str | None = None) -> tuple[Any, dict[int, int]]:
    """Parse YAML; also return the line of each item of the `steps` list (top level, or in `section`)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[int, int] = {}
    if section is not None and isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == section), None)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value == "steps"
                and isinstance(value, yaml.SequenceNode)
            ):
                for i, item in enumerate(value.value):
                    lines[i] = item.start_mark.line + 1
    doc = yaml.safe_load(text)
    if section is not None and isinstance(doc, dict):
        doc = doc.get(section)
    return doc, lines


def _normalise_step(raw: Any, where: str, index: int) -> dict[str, Any]:
    """Accept `- despike: {k: 7}`, `- name: despike` + params, or a bare `- drop_bad_samples`."""
    if isinstance(raw, str):
        return {"name": raw}
    if isinstance(raw, dict) and "name" in raw:
        params = {k: v for k, v in raw.items() if k not in ("name", "output", "params")}
        return {
            "name": raw["name"],
            "params": {**raw.get("params", {}), **params},
            "output": raw.get("output"),
        }
    if isinstance(raw, dict) and len(raw) == 1:
        ((name, params),) = raw.items()
        params = dict(params or {})
        output = params.pop("output", None)
        return {"name": name, "params": params, "output": output}
    msg = f"{where}: step {index + 1}: expected 'name: {{params}}', a name, or a mapping with 'name'"
    raise JobSpecError(msg)


def load_spec(path: Path, *, section: str | None = None) -> JobSpec:
    """Read and validate a YAML job spec, including that every step exists with valid parameters.

    `section`: the spec is the mapping under that top-level key (a process settings file that also
    holds the job, e.g. `job:`); error locations then start with it.
    """
    where = str(path)
    prefix = f"{section}." if section else ""
    try:
        doc, lines = _with_lines(path.read_text(encoding="utf-8"), section)
    except OSError as exc:
        msg = f"cannot read job spec {where}: {exc.strerror}"
        raise JobSpecError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"{where}: not valid YAML: {exc}"
        raise JobSpecError(msg) from exc
    if not isinstance(doc, dict):
        under = f" under '{section}'" if section else ""
        msg = f"{where}: expected a mapping{under} with at least 'name' and 'steps'"
        raise JobSpecError(msg)
    raw_steps = doc.get("steps") or []
    if not isinstance(raw_steps, list):
        msg = f"{where}: 'steps' must be a list"
        raise JobSpecError(msg)
    steps = []
    for i, raw in enumerate(raw_steps):
        line = lines.get(i)
        item = _normalise_step(raw, f"{where}:{line}" if line else where, i)
        steps.append({**item, "line": line})
    try:
        spec = JobSpec.model_validate({**doc, "steps": steps, "source": where})
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = e["loc"]
            at = where
            if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and lines.get(loc[1]):
                at = f"{where}:{lines[loc[1]]}"
            problems.append(f"{at}: {prefix}{'.'.join(str(p) for p in loc)}: {e['msg']}")
        raise JobSpecError("; ".join(problems)) from None
    spec.bind()
    return spec
