"""`tidm agent plan` on the shipped AAS examples: the table plant IT reviews, stable JSON, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidm.cli.main import cli
from tidm.semantics import SignalCatalog
from tidm.semantics.plan import load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["agent", "plan", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("fmt", ["json", "xml", "aasx"])
@pytest.mark.parametrize(
    ("name", "signals"),
    [
        ("pump", ["Hydraulics.InletPressure", "Drive.SpeedSetpoint"]),
        ("cnc_spindle", ["Vibration.RMS", "SpindleSpeed"]),
        ("energy_meter", ["Measurements.Voltage", "Frequency"]),
    ],
)
def test_table_on_every_shipped_example(name: str, fmt: str, signals: list[str]) -> None:
    code, out, err = run("--aas", str(EXAMPLES / f"{name}.{fmt}"))
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    expected = len(load_plan(EXAMPLES / f"{name}.{fmt}").rows)
    assert lines[0] == f"{EXAMPLES / f'{name}.{fmt}'}: {expected} signals of 1 asset(s)"
    assert any(line.startswith("asset https://example.com/ids/asset/") for line in lines)
    for signal in signals:
        assert any(line.strip().startswith(signal) for line in lines)
    # Columns line up: every header and row of the plan starts its ADDRESS column at the same offset.
    header = next(line for line in lines if line.strip().startswith("SIGNAL"))
    column = header.index("ADDRESS")
    rows = [line for line in lines if line.startswith("    ") and not line.strip().startswith("SIGNAL")]
    assert rows
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in rows)


def test_pump_table_content() -> None:
    code, out, _ = run("--aas", str(EXAMPLES / "pump.json"))
    assert code == 0
    assert (
        "InterfaceOPCUA  opcua  opc.tcp://pump-p101.plant.example.com:4840  security: opcua_channel_sc" in out
    )
    row = next(line for line in out.splitlines() if "Hydraulics.FlowRate" in line)
    for cell in (
        "nsu=http://example.com/UA/CentrifugalPump/;s=P101.FlowRate",
        "m3/h",
        "1000 ms",
        "important (MIIT 2)",
        "aimc",
    ):
        assert cell in row


def test_json_is_stable_and_complete() -> None:
    code, out, _ = run("--aas", str(EXAMPLES / "cnc_spindle.xml"), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert list(data) == sorted(data)
    assert len(data["rows"]) == 6
    assert data["rows"][0]["json_path"] == "$.rms"
    assert data["rows"][3]["metric"] == "Spindle/Speed"
    assert run("--aas", str(EXAMPLES / "cnc_spindle.xml"), "--format", "json")[1] == out
    # Same plan from another format of the same AAS, apart from the file name.
    other = json.loads(run("--aas", str(EXAMPLES / "cnc_spindle.aasx"), "--format", "json")[1])
    assert other["rows"] == data["rows"]


def test_mapping_and_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    code, out, _ = run(
        "--aas",
        str(EXAMPLES / "energy_meter.json"),
        "--mapping",
        str(EXAMPLES / "energy_meter.mapping.yaml"),
        "--catalog",
        str(catalog),
    )
    assert code == 0
    assert "Electrical.ImportedEnergy" in out
    loaded = SignalCatalog.load(catalog)
    assert len(loaded) == 5
    assert (
        loaded.get("https://example.com/ids/asset/3120_8801_5560_0007", "Electrical.ImportedEnergy")
        is not None
    )


def test_errors_exit_non_zero_naming_the_element(tmp_path: Path) -> None:
    data = json.loads((EXAMPLES / "pump.json").read_text(encoding="utf-8"))
    aid = next(s for s in data["submodels"] if s["idShort"] == "AssetInterfacesDescription")
    iface = aid["submodelElements"][0]
    interaction = next(e for e in iface["value"] if e["idShort"] == "InteractionMetadata")
    inlet = interaction["value"][0]["value"][0]
    forms = next(e for e in inlet["value"] if e["idShort"] == "forms")
    forms["value"] = [e for e in forms["value"] if e["idShort"] != "href"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data), encoding="utf-8")
    code, out, err = run("--aas", str(broken))
    assert code == 2
    assert out == ""
    assert err.strip() == (
        f"error: {broken}: AssetInterfacesDescription/InterfaceOPCUA/InteractionMetadata/properties/"
        "InletPressure/forms/href: missing href (where the property is on the endpoint)"
    )


def test_bad_mapping_exits_non_zero(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text("signals:\n  - {property: Nope}\n", encoding="utf-8")
    code, _, err = run("--aas", str(EXAMPLES / "energy_meter.json"), "--mapping", str(mapping))
    assert code == 2
    assert f"{mapping}: signals[0].property: no AID property 'Nope'" in err


def test_console_entry_point() -> None:
    # The real `tidm` process: what plant IT runs on a gateway.
    proc = subprocess.run(
        [sys.executable, "-m", "tidm.cli.main", "agent", "plan", "--aas", str(EXAMPLES / "pump.aasx")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Drive.SpeedSetpoint" in proc.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "tidm.cli.main", "agent", "plan", "--aas", "no-such-file.json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
    assert "no-such-file.json: cannot read AAS file" in missing.stderr
