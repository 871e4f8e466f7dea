from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner
from tests.stream_processing.test_spec import SPEC, _table

from tidm.cli.main import cli


def test_validate_and_dry_run(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    runner = CliRunner()
    out = runner.invoke(cli, ["job", "validate", "--spec", str(spec)])
    assert out.exit_code == 0, out.output
    assert "ok: job 'pumps-clean'" in out.output and "3. rolling" in out.output
    sample = tmp_path / "sample.parquet"
    pq.write_table(_table().drop_columns(["flags"]), sample)
    out = runner.invoke(cli, ["job", "dry-run", "--spec", str(spec), "--sample", str(sample)])
    assert out.exit_code == 0, out.output
    assert "input after selection: 6 rows" in out.output
    assert "step 1 'drop_bad_samples'" in out.output and "6 rows in, 6 kept, 0 rejected" in out.output
    assert "step 2 'validity'" in out.output and "1 rejected" in out.output
    assert "rows to table 'features'" in out.output


def test_validate_reports_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\nsteps:\n  - drop_bad_samples\n  - nosuchstep\n")
    out = CliRunner().invoke(cli, ["job", "validate", "--spec", str(spec)])
    assert out.exit_code != 0
    assert f"{spec}:4: step 2 'nosuchstep': unknown step" in str(out.exception)
