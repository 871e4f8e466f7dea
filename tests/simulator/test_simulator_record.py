from __future__ import annotations

from pathlib import Path

import pytest

from tidm.simulator import ProducedSample, SimulatorConfigError, read_produced
from tidm.simulator.record import ProducedLog

_SAMPLES = [
    ProducedSample("urn:tidm:asset:pump-001", "P", 1_700_000_000_000_001, 0.1 + 0.2, None, 0),
    ProducedSample("urn:tidm:asset:pump-001", "P", 1_700_000_000_000_002, None, None, 0x80310000),
    ProducedSample("urn:tidm:asset:pump-001", "Mode", 1_700_000_000_000_001, None, "RUNNING, fast", 0),
    ProducedSample("urn:tidm:asset:pump-001", "P", 1_700_000_000_000_003, -1e-300, None, 0),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_record_file_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "sub" / f"produced{suffix}"
    log = ProducedLog(path=path)
    log.open()
    log.extend(_SAMPLES[:2])
    log.close()
    # A restarted simulator appends (and a CSV gets its header once).
    log.open()
    log.extend(_SAMPLES[2:])
    log.close()
    assert read_produced(path) == _SAMPLES
    assert log.snapshot() == _SAMPLES
    assert log.total == len(_SAMPLES)


def test_memory_log_is_bounded() -> None:
    log = ProducedLog(limit=3)
    log.extend(_SAMPLES)
    assert log.snapshot() == _SAMPLES[-3:]
    assert log.total == 4
    off = ProducedLog(limit=0)
    off.extend(_SAMPLES)
    assert off.snapshot() == []
    assert off.total == 4


def test_read_produced_rejects_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "produced.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(SimulatorConfigError, match=r"\.jsonl or \.csv"):
        read_produced(path)
