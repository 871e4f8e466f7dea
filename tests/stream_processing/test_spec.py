from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tidm.semantics import samples_table
from tidm.stream_processing import JobSpecError
from tidm.stream_processing.spec import Selection, StepResult, apply_steps, load_spec, registry, step
from tidm.stream_processing.steps import with_flags


def _table() -> pa.Table:
    n = 12
    return with_flags(
        samples_table(
            ts_us=[1_000_000 * i for i in range(n)],
            recv_ts_us=[0] * n,
            asset_id=["urn:a:pump-1"] * 6 + ["urn:a:fan-1"] * 6,
            signal=["Pressure", "Speed"] * 6,
            value=[1.0, 2.0, 1.1, 2.1, 99.0, 2.2, 1.2, 2.3, float("nan"), 2.4, 1.4, 2.5],
            value_text=[None] * n,
            quality=[0] * 11 + [2],
            status_code=[0] * 11 + [0x80000000],
            seq=list(range(n)),
        )
    )


SPEC = """\
name: pumps-clean
topics: [tidm.samples]
select:
  assets: ["urn:a:pump-*"]
steps:
  - drop_bad_samples
  - validity: {lo: 0, hi: 50}
  - rolling:
      output: features
      window_n: 3
lookback_s: 30
"""


def test_load_spec_binds_steps_and_selection(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    assert [s.name for s in spec.steps] == ["drop_bad_samples", "validity", "rolling"]
    assert [s.line for s in spec.steps] == [6, 7, 8]
    assert spec.steps[2].output == "features"
    assert spec.group == "tidm-job-pumps-clean"
    table = _table()
    mask = spec.select.mask(table)
    assert sum(mask.to_pylist()) == 6


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("  - despikee: {k: 3}\n", r"job.yaml:6: step 1 'despikee': unknown step"),
        (
            "  - drop_bad_samples\n  - validity: {low: 0}\n",
            r"job.yaml:7: step 2 'validity': bad parameters \['low'\]",
        ),
        ("  - [1, 2]\n", r"job.yaml:6: step 1: expected"),
    ],
)
def test_spec_errors_name_file_line_and_step(tmp_path: Path, steps: str, message: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ntopics: [t]\nselect: {}\nlookback_s: 0\nsteps:\n" + steps)
    with pytest.raises(JobSpecError, match=message):
        load_spec(path)


def test_unknown_fields_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\nstepz: []\n")
    with pytest.raises(JobSpecError, match="stepz: Extra inputs"):
        load_spec(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_spec(path)


def test_python_steps_register_and_run(tmp_path: Path) -> None:
    @step("double_values", lookback_s=5)
    def double_values(table: pa.Table, *, factor: float = 2.0) -> StepResult:
        import pyarrow.compute as pc

        doubled = table.set_column(4, "value", pc.multiply(table.column("value"), factor))
        return StepResult(doubled, table.slice(0, 0), {"rows": table.num_rows})

    assert "double_values" in registry()
    path = tmp_path / "job.yaml"
    path.write_text("name: j\nsteps:\n  - drop_bad_samples\n  - double_values: {factor: 3}\n")
    spec = load_spec(path)
    assert spec.effective_lookback_s == 5
    outcome = apply_steps(_table(), spec.bind())
    assert outcome.kept.column("value").to_pylist()[:2] == [3.0, 6.0]
    assert sum(t.num_rows for t in outcome.rejected) == 2  # the NaN and the bad-quality sample
    assert outcome.counts["2:double_values"] == {"rows": 10}


def test_selection_by_semantic_id() -> None:
    sel = Selection(semantic_ids=("0173-1#02-AAB663#003",))
    mask = sel.mask(_table(), {("urn:a:pump-1", "Pressure"): "0173-1#02-AAB663#003"})
    assert sum(mask.to_pylist()) == 3
