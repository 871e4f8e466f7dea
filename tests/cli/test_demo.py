from pathlib import Path

from click.testing import CliRunner

from tidm.cli.demo import run_demo
from tidm.cli.main import cli


async def test_demo_verifies_its_own_evidence(tmp_path: Path) -> None:
    result = await run_demo(tmp_path, duration_s=2, assets=2, signals=5, period_ms=100)
    p = result.pipeline
    assert len(p.produced) == 2 * 5 * 20
    assert p.agent.samples_in == len(p.produced)
    assert p.job.rows_landed + p.job.rows_rejected == len(p.produced)
    assert result.tamper_reason == "hash-mismatch"
    assert result.verify_ok, result.verify_problems
    assert result.objects_total == p.job.objects and result.objects_traced == result.objects_total
    assert (result.run_dir / "checkpoint").read_text().startswith("tidm.demo/notary\n")


def test_demo_command_prints_the_summary(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        cli, ["demo", "--workdir", str(tmp_path), "--duration", "1", "--assets", "1", "--signals", "3"]
    )
    assert out.exit_code == 0, out.output
    assert "evidence log against checkpoint   : verified" in out.output
    assert "polars reads" in out.output
