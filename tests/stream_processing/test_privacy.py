"""Differential privacy: Laplace/Gaussian mechanisms and the durable, evidenced epsilon budget ledger."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from tidm.evidence import MemoryEvidenceLog, SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.stream_processing.privacy import (
    BudgetExceeded,
    BudgetLedger,
    PrivacyError,
    PrivateReleaser,
    gaussian_mechanism,
    gaussian_sigma,
    laplace_mechanism,
)


def test_laplace_noise_has_the_calibrated_scale_and_is_seeded() -> None:
    values = np.zeros(200_000)
    noisy = laplace_mechanism(values, sensitivity=2.0, epsilon=0.5, rng=np.random.default_rng(1))
    # Laplace(b) has mean |x| = b; b = sensitivity / epsilon = 4.
    assert abs(float(np.mean(np.abs(noisy))) - 4.0) < 0.1
    again = laplace_mechanism(values, sensitivity=2.0, epsilon=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(noisy, again)
    assert laplace_mechanism(10.0, sensitivity=1, epsilon=1, rng=np.random.default_rng(0)).shape == ()


def test_gaussian_sigma_satisfies_the_analytic_bound() -> None:
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    for eps, delta in [(0.1, 1e-5), (1.0, 1e-6), (5.0, 1e-3)]:
        s = gaussian_sigma(sensitivity=1.0, epsilon=eps, delta=delta)
        excess = phi(1 / (2 * s) - eps * s) - math.exp(eps) * phi(-1 / (2 * s) - eps * s)
        assert excess <= delta * (1 + 1e-6)
        # Tight: a slightly smaller sigma breaks the bound.
        s2 = s * 0.99
        assert phi(1 / (2 * s2) - eps * s2) - math.exp(eps) * phi(-1 / (2 * s2) - eps * s2) > delta
        # Never worse than the classic bound where that one applies.
        if eps < 1:
            assert s <= math.sqrt(2 * math.log(1.25 / delta)) / eps
    noisy = gaussian_mechanism(
        np.zeros(100_000), sensitivity=1, epsilon=1, delta=1e-6, rng=np.random.default_rng(2)
    )
    assert abs(float(np.std(noisy)) - gaussian_sigma(sensitivity=1, epsilon=1, delta=1e-6)) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sensitivity": 0, "epsilon": 1}, "sensitivity"),
        ({"sensitivity": 1, "epsilon": -1}, "epsilon"),
        ({"sensitivity": 1, "epsilon": float("inf")}, "epsilon"),
    ],
)
def test_mechanism_parameters_are_checked(kwargs: dict[str, float], error: str) -> None:
    with pytest.raises(PrivacyError, match=error):
        laplace_mechanism(1.0, rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(PrivacyError, match="delta"):
        gaussian_sigma(sensitivity=1, epsilon=1, delta=0)


def test_ledger_refuses_to_overspend_and_survives_restart(tmp_path: Path) -> None:
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    path = tmp_path / "ledger.db"
    with BudgetLedger(path, evidence, actor="job:features") as ledger:
        ledger.set_budget("line-1/vibration", epsilon=1.0)
        releaser = PrivateReleaser(ledger, rng=np.random.default_rng(5))
        for _ in range(10):
            releaser.release(
                "line-1/vibration", np.array([10.0, 20.0]), sensitivity=1.0, epsilon=0.1, query="mean"
            )
        # 10 x 0.1 sums to 0.9999999999999999: the whole budget is spent, nothing more is allowed.
        with pytest.raises(BudgetExceeded, match=r"'line-1/vibration' exceeded.*requested epsilon 0.01"):
            releaser.release("line-1/vibration", 1.0, sensitivity=1.0, epsilon=0.01, query="count")
        assert len(ledger.spends("line-1/vibration")) == 10
    # After a restart the spends are still there and still refuse.
    with BudgetLedger(path, evidence, actor="job:features") as ledger:
        assert ledger.spent("line-1/vibration")[0] == pytest.approx(1.0)
        with pytest.raises(BudgetExceeded):
            ledger.spend("line-1/vibration", epsilon=0.001, mechanism="laplace")
        ledger.set_budget("line-1/vibration", epsilon=2.0)  # a governance decision raises the budget
        ledger.spend("line-1/vibration", epsilon=0.5, mechanism="laplace")
        assert ledger.remaining("line-1/vibration")[0] == pytest.approx(0.5)
    # Every spend is one ADDINFO evidence entry with the DP attributes.
    spends = [e.entry for e in evidence.read() if e.entry.attributes.get("info") == "dp-spend"]
    assert len(spends) == 11
    first = spends[0]
    assert first.event == EventType.ADDINFO and first.actor == "job:features"
    assert first.attributes["dp_epsilon"] == 0.1 and first.attributes["dp_delta"] == 0.0
    assert first.attributes["dataset"] == "line-1/vibration" and first.attributes["mechanism"] == "laplace"
    evidence.close()


def test_gaussian_spends_delta_too_and_unknown_datasets_are_refused(tmp_path: Path) -> None:
    evidence = MemoryEvidenceLog()
    with BudgetLedger(tmp_path / "ledger.db", evidence) as ledger:
        ledger.set_budget("d", epsilon=10.0, delta=1e-5)
        releaser = PrivateReleaser(ledger, rng=np.random.default_rng(0))
        releaser.release("d", 5.0, sensitivity=1, epsilon=1, delta=6e-6, mechanism="gaussian")
        with pytest.raises(BudgetExceeded, match="delta"):
            releaser.release("d", 5.0, sensitivity=1, epsilon=1, delta=6e-6, mechanism="gaussian")
        with pytest.raises(PrivacyError, match="pure epsilon-DP"):
            releaser.release("d", 5.0, sensitivity=1, epsilon=1, delta=1e-6, mechanism="laplace")
        with pytest.raises(PrivacyError, match="has no privacy budget"):
            releaser.release("other", 5.0, sensitivity=1, epsilon=1)
        assert [s.mechanism for s in ledger.spends()] == ["gaussian"]
    assert [e.entry.attributes["dp_delta"] for e in evidence.read()] == [6e-6]


def test_concurrent_spenders_never_exceed_the_budget(tmp_path: Path) -> None:
    evidence = SqliteEvidenceLog(tmp_path / "evidence.db")
    path = tmp_path / "ledger.db"
    with BudgetLedger(path, evidence) as setup:
        setup.set_budget("shared", epsilon=1.0)
    ledgers = [BudgetLedger(path, evidence) for _ in range(4)]  # separate connections, like processes
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def spender(ledger: BudgetLedger) -> None:
        for _ in range(10):
            try:
                ledger.spend("shared", epsilon=0.05, mechanism="laplace")
                outcome = granted
            except BudgetExceeded:
                outcome = refused
            with lock:
                outcome.append(1)

    threads = [threading.Thread(target=spender, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(granted) == 20 and len(refused) == 20
    assert ledgers[0].spent("shared")[0] == pytest.approx(1.0)
    for ledger in ledgers:
        ledger.close()
    evidence.close()


def test_a_spend_without_its_evidence_entry_is_evidenced_on_reopen(tmp_path: Path) -> None:
    class FailingLog(MemoryEvidenceLog):
        def append_once(self, entry):  # type: ignore[no-untyped-def]
            raise OSError("evidence store unavailable")

    path = tmp_path / "ledger.db"
    with BudgetLedger(path, FailingLog()) as ledger:
        ledger.set_budget("d", epsilon=1.0)
        with pytest.raises(OSError, match="unavailable"):
            ledger.spend("d", epsilon=0.25, mechanism="laplace")
        assert ledger.spent("d")[0] == 0.25  # the budget is consumed: the safe side
    evidence = MemoryEvidenceLog()
    with BudgetLedger(path, evidence) as ledger:
        pass
    with BudgetLedger(path, evidence) as ledger:  # a second reopen appends nothing more
        assert ledger.spent("d")[0] == 0.25
    assert [e.entry.attributes["dp_epsilon"] for e in evidence.read()] == [0.25]
