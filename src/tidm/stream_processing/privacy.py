"""Differential privacy for aggregates: Laplace and Gaussian mechanisms and an epsilon budget ledger.

Noise belongs to aggregates (the features step), never to raw samples: a stream job computes a
count, sum or mean per window, then releases it through `PrivateReleaser.release`, which first spends
the dataset's budget in the ledger (refusing with `BudgetExceeded` when it would overspend), then
adds noise calibrated to the stated sensitivity.

The ledger is a SQLite file: every spend is one row written in an IMMEDIATE transaction, so
concurrent jobs (threads or processes) cannot both take the last of a budget, and a restart sees
every spend made before it. Each spend is also an evidence entry (ADDINFO with `dp_epsilon`,
`dp_delta`, `dataset`, `mechanism`); a spend whose entry was not yet appended when the process
died is appended on the next open (`append_once`, so never twice).

Composition is basic (sequential): epsilons and deltas of spends on a dataset add up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tidm.errors import Terminal
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.stream_processing.errors import JobError

__all__ = [
    "BudgetExceeded",
    "BudgetLedger",
    "Mechanism",
    "PrivacyError",
    "PrivateReleaser",
    "Spend",
    "gaussian_mechanism",
    "gaussian_sigma",
    "laplace_mechanism",
]

Mechanism = Literal["laplace", "gaussian"]

# Sums of float epsilons drift (0.1 * 10 != 1.0); a spend within this of the budget is allowed.
_TOLERANCE = 1e-9


class PrivacyError(JobError, Terminal):
    """A differential-privacy parameter or ledger operation is invalid."""


class BudgetExceeded(PrivacyError):
    """A release would spend more epsilon (or delta) on a dataset than its budget allows."""

    def __init__(
        self, dataset: str, *, requested: float, remaining: float, what: str = "epsilon", query: str = ""
    ) -> None:
        self.dataset = dataset
        self.requested = requested
        self.remaining = remaining
        label = f" for query {query!r}" if query else ""
        super().__init__(
            f"privacy budget of dataset {dataset!r} exceeded{label}: requested {what} {requested:g}, "
            f"remaining {max(remaining, 0.0):g}; the release was refused and nothing was spent"
        )


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        msg = f"{name} must be a finite number > 0, got {value!r}"
        raise PrivacyError(msg)


def laplace_mechanism(
    value: float | np.ndarray, *, sensitivity: float, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """`value` + Laplace(0, sensitivity/epsilon) noise: epsilon-DP for an L1 `sensitivity`."""
    _check_positive("sensitivity", sensitivity)
    _check_positive("epsilon", epsilon)
    data = np.asarray(value, dtype=np.float64)
    return data + rng.laplace(0.0, sensitivity / epsilon, size=data.shape)


def gaussian_sigma(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """Noise scale of the analytic Gaussian mechanism (Balle & Wang, ICML 2018) for an L2 `sensitivity`.

    The smallest sigma with Phi(D/2s - e*s/D) - exp(e) * Phi(-D/2s - e*s/D) <= delta; unlike the
    classic sqrt(2 ln(1.25/delta)) bound it holds for every epsilon > 0, not only epsilon < 1.
    """
    _check_positive("sensitivity", sensitivity)
    _check_positive("epsilon", epsilon)
    if not (0.0 < delta < 1.0):
        msg = f"delta must be in (0, 1) for the Gaussian mechanism, got {delta!r}"
        raise PrivacyError(msg)

    def excess(sigma: float) -> float:
        a = sensitivity / (2.0 * sigma)
        b = epsilon * sigma / sensitivity
        return _phi(a - b) - math.exp(epsilon) * _phi(-a - b) - delta

    # excess() falls as sigma grows: bracket the root, then bisect (60 halvings reach float precision).
    lo, hi = 0.0, sensitivity
    while excess(hi) > 0:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return hi


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_mechanism(
    value: float | np.ndarray,
    *,
    sensitivity: float,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """`value` + N(0, sigma^2) noise: (epsilon, delta)-DP for an L2 `sensitivity`."""
    sigma = gaussian_sigma(sensitivity=sensitivity, epsilon=epsilon, delta=delta)
    data = np.asarray(value, dtype=np.float64)
    return data + rng.normal(0.0, sigma, size=data.shape)


@dataclass(frozen=True)
class Spend:
    """One recorded spend of a dataset's budget."""

    id: int
    dataset: str
    epsilon: float
    delta: float
    mechanism: str
    query: str
    time_us: int

    def subject(self) -> str:
        """SHA-256 of the spend's canonical JSON: the evidence entry's subject."""
        doc = {
            "id": self.id,
            "dataset": self.dataset,
            "epsilon": repr(self.epsilon),
            "delta": repr(self.delta),
            "mechanism": self.mechanism,
            "query": self.query,
            "time_us": self.time_us,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL REFERENCES budgets(dataset),
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    mechanism TEXT NOT NULL,
    query TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    evidenced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS spends_by_dataset ON spends (dataset);
"""


class BudgetLedger:
    """Per-dataset (epsilon, delta) budgets and their spends, durable in SQLite, evidenced."""

    def __init__(self, path: Path, evidence: EvidenceLog, *, actor: str = "dp-ledger") -> None:
        self.path = path
        self._evidence = evidence
        self._actor = actor
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE below.
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            self._evidence_pending()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the SQLite connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def set_budget(self, dataset: str, *, epsilon: float, delta: float = 0.0) -> None:
        """Create or change a dataset's total budget (lowering it below what is spent stops releases)."""
        if not dataset:
            msg = "dataset name must be non-empty"
            raise PrivacyError(msg)
        _check_positive("epsilon budget", epsilon)
        if not (0.0 <= delta < 1.0):
            msg = f"delta budget must be in [0, 1), got {delta!r}"
            raise PrivacyError(msg)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO budgets (dataset, epsilon, delta) VALUES (?, ?, ?) "
                "ON CONFLICT(dataset) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
                (dataset, float(epsilon), float(delta)),
            )

    def budget(self, dataset: str) -> tuple[float, float]:
        """(epsilon, delta) total of a dataset."""
        with self._lock:
            row = self._db.execute(
                "SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)
            ).fetchone()
        if row is None:
            msg = f"dataset {dataset!r} has no privacy budget; set one with set_budget()"
            raise PrivacyError(msg)
        return float(row[0]), float(row[1])

    def spent(self, dataset: str) -> tuple[float, float]:
        """(epsilon, delta) spent on a dataset so far."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM spends WHERE dataset = ?",
                (dataset,),
            ).fetchone()
        return float(row[0]), float(row[1])

    def remaining(self, dataset: str) -> tuple[float, float]:
        """(epsilon, delta) still available on a dataset."""
        total, spent = self.budget(dataset), self.spent(dataset)
        return total[0] - spent[0], total[1] - spent[1]

    def spends(self, dataset: str | None = None) -> list[Spend]:
        """Recorded spends, oldest first (all datasets when `dataset` is None)."""
        query = "SELECT id, dataset, epsilon, delta, mechanism, query, time_us FROM spends"
        args: tuple[str, ...] = ()
        if dataset is not None:
            query += " WHERE dataset = ?"
            args = (dataset,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Spend(*row) for row in rows]

    def spend(
        self, dataset: str, *, epsilon: float, delta: float = 0.0, mechanism: Mechanism, query: str = ""
    ) -> Spend:
        """Record a spend, or raise `BudgetExceeded` (nothing recorded) if it would overspend."""
        _check_positive("epsilon", epsilon)
        if not (0.0 <= delta < 1.0):
            msg = f"delta must be in [0, 1), got {delta!r}"
            raise PrivacyError(msg)
        with self._transaction() as db:
            row = db.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)).fetchone()
            if row is None:
                msg = f"dataset {dataset!r} has no privacy budget; set one with set_budget()"
                raise PrivacyError(msg)
            eps_total, delta_total = float(row[0]), float(row[1])
            eps_spent, delta_spent = db.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM spends WHERE dataset = ?",
                (dataset,),
            ).fetchone()
            if eps_spent + epsilon > eps_total * (1 + _TOLERANCE) + _TOLERANCE:
                raise BudgetExceeded(dataset, requested=epsilon, remaining=eps_total - eps_spent, query=query)
            if delta > 0 and delta_spent + delta > delta_total * (1 + _TOLERANCE) + _TOLERANCE * 1e-6:
                raise BudgetExceeded(
                    dataset, requested=delta, remaining=delta_total - delta_spent, what="delta", query=query
                )
            now = time.time_ns() // 1000
            cursor = db.execute(
                "INSERT INTO spends (dataset, epsilon, delta, mechanism, query, time_us) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (dataset, float(epsilon), float(delta), mechanism, query, now),
            )
            spend_id = cursor.lastrowid
        assert spend_id is not None  # noqa: S101 - an INSERT always sets lastrowid
        spend = Spend(spend_id, dataset, float(epsilon), float(delta), mechanism, query, now)
        # The spend is durable first: if the process dies before the entry is appended, the budget is
        # still consumed (the safe side) and the next open appends the missing entry.
        self._evidence_spend(spend, eps_spent + epsilon, eps_total)
        return spend

    def _evidence_spend(self, spend: Spend, eps_spent: float, eps_total: float) -> None:
        self._evidence.append_once(
            EvidenceEntry(
                event=EventType.ADDINFO,
                subject=spend.subject(),
                actor=self._actor,
                time_us=spend.time_us,
                attributes={
                    "info": "dp-spend",
                    "dataset": spend.dataset,
                    "mechanism": spend.mechanism,
                    "dp_epsilon": spend.epsilon,
                    "dp_delta": spend.delta,
                    "query": spend.query,
                    "spend_id": spend.id,
                    "dp_epsilon_spent": eps_spent,
                    "dp_epsilon_budget": eps_total,
                },
            )
        )
        with self._transaction() as db:
            db.execute("UPDATE spends SET evidenced = 1 WHERE id = ?", (spend.id,))

    def _evidence_pending(self) -> None:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.dataset, s.epsilon, s.delta, s.mechanism, s.query, s.time_us, b.epsilon, "
                "(SELECT SUM(t.epsilon) FROM spends t WHERE t.dataset = s.dataset AND t.id <= s.id) "
                "FROM spends s JOIN budgets b ON b.dataset = s.dataset WHERE s.evidenced = 0 ORDER BY s.id"
            ).fetchall()
        for row in rows:
            self._evidence_spend(Spend(*row[:7]), float(row[8]), float(row[7]))


class PrivateReleaser:
    """Releases noisy aggregates of datasets, spending their budget in a ledger first."""

    def __init__(self, ledger: BudgetLedger, *, rng: np.random.Generator | None = None) -> None:
        self.ledger = ledger
        # Unseeded by default: predictable noise would undo the privacy. Tests pass a seeded Generator.
        self._rng = rng if rng is not None else np.random.default_rng()

    def release(
        self,
        dataset: str,
        aggregate: float | np.ndarray,
        *,
        sensitivity: float,
        epsilon: float,
        delta: float = 0.0,
        mechanism: Mechanism = "laplace",
        query: str = "",
    ) -> np.ndarray:
        """Spend (epsilon, delta) on `dataset`, then return `aggregate` with calibrated noise.

        Raises `BudgetExceeded` before computing anything if the dataset cannot afford it.
        """
        if mechanism == "laplace":
            if delta:
                msg = "the Laplace mechanism is pure epsilon-DP; pass delta=0"
                raise PrivacyError(msg)
            _check_positive("sensitivity", sensitivity)
        elif mechanism == "gaussian":
            gaussian_sigma(sensitivity=sensitivity, epsilon=epsilon, delta=delta)  # validates first
        else:
            msg = f"unknown mechanism {mechanism!r} (use 'laplace' or 'gaussian')"
            raise PrivacyError(msg)
        self.ledger.spend(dataset, epsilon=epsilon, delta=delta, mechanism=mechanism, query=query)
        if mechanism == "laplace":
            return laplace_mechanism(aggregate, sensitivity=sensitivity, epsilon=epsilon, rng=self._rng)
        return gaussian_mechanism(
            aggregate, sensitivity=sensitivity, epsilon=epsilon, delta=delta, rng=self._rng
        )
