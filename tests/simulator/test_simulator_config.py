from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import tidm.simulator
from tidm.simulator import (
    AssetConfig,
    SignalConfig,
    SimulatorConfig,
    SimulatorConfigError,
    load_config,
)


def test_defaults_make_a_working_simulator() -> None:
    cfg = SimulatorConfig()
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 0
    assert cfg.namespace_uri == "urn:tidm:simulator"
    assert cfg.signal_count == 1
    assert cfg.tick_ms == 100
    assert cfg.security.mode == "none"


def test_tick_is_the_gcd_of_signal_periods() -> None:
    cfg = SimulatorConfig(
        assets=(
            AssetConfig(
                signals=(
                    SignalConfig(name="A", update_period_ms=100),
                    SignalConfig(name="B", update_period_ms=250),
                )
            ),
        )
    )
    assert cfg.tick_ms == 50


def test_fleet_builds_unique_assets_and_signals() -> None:
    cfg = SimulatorConfig.fleet(50, 40, period_ms=200, seed=7, max_ticks=3)
    assert cfg.signal_count == 2000
    assert cfg.seed == 7
    assert cfg.max_ticks == 3
    assert cfg.tick_ms == 200
    assert cfg.assets[0].name == "Asset0001"
    assert cfg.assets[0].asset_id == "urn:tidm:asset:asset-0001"
    assert [s.kind for s in cfg.assets[0].signals[:4]] == ["sine", "ramp", "counter", "text-state"]
    assert len({(a.asset_id, s.name) for a in cfg.assets for s in a.signals}) == 2000


def test_fleet_template_applies_to_every_signal() -> None:
    template = SignalConfig(noise_std=0.5, gap_probability=0.1, gap_mode="bad_status")
    cfg = SimulatorConfig.fleet(2, 3, signal=template)
    assert all(s.noise_std == 0.5 and s.gap_mode == "bad_status" for a in cfg.assets for s in a.signals)


def test_fleet_rejects_empty_fleet() -> None:
    with pytest.raises(SimulatorConfigError, match="at least one asset"):
        SimulatorConfig.fleet(0, 10)


def test_fleet_reports_invalid_fields_as_config_error() -> None:
    with pytest.raises(SimulatorConfigError, match="common tick of 3 ms"):
        SimulatorConfig.fleet(1, 1, period_ms=3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: AssetConfig(name="Pump001", signals=(SignalConfig(name="P"), SignalConfig(name="P"))),
            "signal names of asset 'Pump001' must be unique; duplicated: P",
        ),
        (
            lambda: SignalConfig(name="Pressure.Inlet"),
            "signal name 'Pressure.Inlet' must start with a letter",
        ),
        (lambda: AssetConfig(name="1Pump"), "asset name '1Pump' must start with a letter"),
        (
            lambda: AssetConfig(asset_id="urn:tidm:asset:pump 1"),
            "must be non-empty and contain no whitespace",
        ),
        (
            lambda: SignalConfig(gap_probability=1.5),
            "gap_probability\n  Input should be less than or equal to 1",
        ),
        (lambda: SignalConfig(period_s=0), "period_s\n  Input should be greater than 0"),
        (lambda: SignalConfig(kind="square"), "Input should be 'sine', 'ramp', 'counter' or 'text-state'"),
        (lambda: SignalConfig(gap_lenght=3), "gap_lenght\n  Extra inputs are not permitted"),
        (lambda: SignalConfig(states=("IDLE", "")), "states must be non-empty strings"),
        (
            lambda: SimulatorConfig(
                assets=(
                    AssetConfig(
                        signals=(
                            SignalConfig(name="A", update_period_ms=100),
                            SignalConfig(name="B", update_period_ms=33),
                        )
                    ),
                )
            ),
            "signal update periods [33, 100] ms share a common tick of 1 ms; it must be at least 10 ms",
        ),
        (
            lambda: SimulatorConfig(assets=(AssetConfig(name="A"), AssetConfig(name="A", asset_id="urn:x"))),
            "asset names must be unique; duplicated: A",
        ),
        (
            lambda: SimulatorConfig(assets=(AssetConfig(name="A"), AssetConfig(name="B"))),
            "asset ids must be unique; duplicated: urn:tidm:asset:asset-001",
        ),
        (
            lambda: SimulatorConfig(extra_namespaces_before=("urn:tidm:simulator",)),
            "must not contain the simulator's own namespace_uri",
        ),
        (lambda: SimulatorConfig(namespace_uri="urn:a;b"), "without ';' or whitespace"),
        (lambda: SimulatorConfig(record_path=Path("out.parquet")), "must end with one of .jsonl, .csv"),
        (
            lambda: SimulatorConfig(security={"mode": "basic256sha256"}),
            "needs both 'certificate' and 'private_key'",
        ),
        (lambda: SimulatorConfig(port=70000), "port\n  Input should be less than or equal to 65535"),
    ],
)
def test_validation_errors_are_clear(build: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()  # type: ignore[operator]
    assert message in str(info.value)


def test_models_are_frozen() -> None:
    cfg = SimulatorConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.port = 4840  # type: ignore[misc]


def test_load_config_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        """
port: 4841
seed: 3
extra_namespaces_before: [urn:other]
assets:
  - asset_id: urn:tidm:asset:pump-001
    name: Pump001
    signals:
      - {name: DischargePressure, unit: bar, amplitude: 2.5, offset: 6, noise_std: 0.05}
      - {name: Mode, kind: text-state, states: [STOPPED, RUNNING], gap_mode: bad_status}
limits: {max_nodes_per_read: 500}
""",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.port == 4841
    assert cfg.extra_namespaces_before == ("urn:other",)
    pump = cfg.assets[0]
    assert pump.signals[0].unit == "bar"
    assert pump.signals[1].states == ("STOPPED", "RUNNING")
    assert cfg.limits.max_nodes_per_read == 500
    assert load_config(path) == cfg


def test_load_config_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("assets:\n  - signals:\n      - {name: P, stuck_probability: 2}\n", encoding="utf-8")
    with pytest.raises(SimulatorConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text
    assert "assets.0.signals.0.stuck_probability" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [("- just\n- a list\n", "must be a mapping"), ("port: [unclosed\n", "cannot read simulator config")],
)
def test_load_config_rejects_unreadable_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SimulatorConfigError, match=message):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SimulatorConfigError, match="cannot read simulator config"):
        load_config(tmp_path / "missing.yaml")


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == SimulatorConfig()


def test_packaged_example_config_loads() -> None:
    cfg = load_config(Path(tidm.simulator.__file__).parent / "example.yaml")
    assert cfg.signal_count == 8
    assert cfg.tick_ms == 100
    assert {a.name for a in cfg.assets} == {"Pump001", "Compressor001"}
