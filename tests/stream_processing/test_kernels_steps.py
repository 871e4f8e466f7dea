"""The kernels as steps on Arrow tables: segmenting, nothing lost, text signals carried through, and
results equal to the array kernels / pandas on the same rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.stream_processing.test_kernels_support import KERNEL_SETTINGS, values_strategy

from tidm.evidence import MemoryEvidenceLog
from tidm.semantics import CLEAN_SCHEMA, samples_table
from tidm.stream_processing.kernels import STEPS, KernelError, segment_table
from tidm.stream_processing.privacy import BudgetExceeded, BudgetLedger, PrivateReleaser
from tidm.stream_processing.steps import Flag

SIGNALS = ["temp", "speed", "state"]  # "state" is a text signal


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 40) -> pa.Table:
    n = draw(st.integers(0, max_rows))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a1", "a2"]),
                st.sampled_from(SIGNALS),
                st.integers(0, 200),
                values_strategy(),
            ),
            min_size=n,
            max_size=n,
        )
    )
    text = [r[1] == "state" for r in rows]
    return samples_table(
        ts_us=[r[2] for r in rows],
        recv_ts_us=[r[2] + 5 for r in rows],
        asset_id=[r[0] for r in rows],
        signal=[r[1] for r in rows],
        value=[None if t else r[3] for r, t in zip(rows, text, strict=True)],
        value_text=["RUN" if t else None for t in text],
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(n)),
    )


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    df["ts"] = table.column("ts").cast(pa.int64()).to_numpy()
    return df


@KERNEL_SETTINGS
@given(table=tables())
def test_segment_table_groups_by_asset_and_signal_sorted_by_time(table: pa.Table) -> None:
    seg = segment_table(table)
    df = _frame(seg.table)
    assert sorted(df["seq"]) == list(range(table.num_rows))
    for s in range(seg.count):
        a, b = seg.offsets[s], seg.offsets[s + 1]
        part = df.iloc[a:b]
        assert set(part["asset_id"]) == {seg.asset[s]} and set(part["signal"]) == {seg.signal[s]}
        assert np.all(np.diff(part["ts"]) >= 0)
        assert np.array_equal(seg.ts[a:b], part["ts"].to_numpy())
        assert seg.text[s] == (seg.signal[s] == "state")
        # Stable: equal timestamps keep their arrival (seq) order.
        assert part.sort_values(["ts", "seq"])["seq"].tolist() == part["seq"].tolist()
    assert len(set(zip(seg.asset, seg.signal, strict=True))) == seg.count


@KERNEL_SETTINGS
@given(table=tables())
def test_segment_table_in_arrival_order_keeps_arrival_within_a_signal(table: pa.Table) -> None:
    seg = segment_table(table, order="arrival")
    df = _frame(seg.table)
    for s in range(seg.count):
        seqs = df.iloc[seg.offsets[s] : seg.offsets[s + 1]]["seq"].tolist()
        assert seqs == sorted(seqs)


def test_segment_table_without_sorting_refuses_scattered_signals() -> None:
    table = samples_table(
        ts_us=[1, 2, 3],
        recv_ts_us=[1, 2, 3],
        asset_id=["a"] * 3,
        signal=["x", "y", "x"],
        value=[1.0, 2.0, 3.0],
        value_text=[None] * 3,
        quality=[0] * 3,
        status_code=[0] * 3,
        seq=[0, 1, 2],
    )
    with pytest.raises(KernelError, match="not contiguous"):
        segment_table(table, order="none")


ROW_STEPS = [
    ("validity", {"lo": -100.0, "hi": 100.0}),
    ("validity", {"limits": {"temp": (0.0, 2.0)}, "reject": False}),
    ("flatline", {"min_count": 2}),
    ("flatline", {"min_count": 3, "reject": True}),
    ("despike", {"k": 2, "mode": "flag"}),
    ("despike", {"k": 2, "mode": "replace"}),
    ("despike", {"k": 2, "mode": "reject"}),
    ("deadband", {"d": 1.0}),
    ("swinging_door", {"e": 1.0}),
    ("dedup", {"keep": "last"}),
    ("dedup", {"keep": "first"}),
    ("order", {"mode": "sort"}),
    ("order", {"mode": "reject"}),
    ("to_si", {"units": {"temp": "Cel", "speed": "furlong"}}),
]


@KERNEL_SETTINGS
@given(table=tables(), step=st.sampled_from(ROW_STEPS))
def test_row_steps_lose_nothing_and_carry_text_through(table: pa.Table, step: tuple[str, dict]) -> None:
    name, params = step
    result = STEPS[name](table, **params)
    assert result.kept.schema.remove_metadata() == CLEAN_SCHEMA
    assert result.rejected.schema.remove_metadata() == CLEAN_SCHEMA
    seqs = result.kept.column("seq").to_pylist() + result.rejected.column("seq").to_pylist()
    assert sorted(seqs) == list(range(table.num_rows))
    assert result.counts["rows_in"] == table.num_rows
    assert result.counts["rows_kept"] == result.kept.num_rows
    assert result.counts["rows_rejected"] == result.rejected.num_rows
    kept = _frame(result.kept)
    text = kept[kept["signal"] == "state"]
    if name not in ("dedup", "order"):  # time steps apply to text signals too
        assert len(text) == sum(1 for s in table.column("signal").to_pylist() if s == "state")
        assert set(text["flags"]) <= {0}
    # Every rejected row says why.
    assert all(f != 0 for f in result.rejected.column("flags").to_pylist())


def _single(values: list[float | None], ts: list[int] | None = None, signal: str = "temp") -> pa.Table:
    n = len(values)
    return samples_table(
        ts_us=ts if ts is not None else list(range(0, 10 * n, 10)),
        recv_ts_us=[0] * n,
        asset_id=["a1"] * n,
        signal=[signal] * n,
        value=values,
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(n)),
    )


def test_despike_replace_writes_the_median_and_flags() -> None:
    result = STEPS["despike"](_single([1.0, 1.1, 0.9, 50.0, 1.0, 1.05, 0.95]), k=3, mode="replace")
    values = result.kept.column("value").to_pylist()
    flags = result.kept.column("flags").to_pylist()
    assert values[3] == pytest.approx(1.0) and flags[3] == Flag.SPIKE | Flag.SPIKE_REPLACED
    assert result.counts["spikes"] == 1


def test_gap_fill_generates_uncertain_rows() -> None:
    result = STEPS["gap_fill"](_single([0.0, 1.0, 4.0], ts=[0, 10, 40]), gap_us=15, step_us=10, max_fill=5)
    df = _frame(result.kept)
    assert df["ts"].tolist() == [0, 10, 20, 30, 40]
    assert df["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert df["flags"].tolist() == [0, 0, Flag.GAP_FILLED, Flag.GAP_FILLED, Flag.GAP_BEFORE]
    assert df["quality"].tolist() == [0, 0, 1, 1, 0]
    assert result.counts["filled"] == 2 and result.counts["gaps"] == 1


@KERNEL_SETTINGS
@given(table=tables(), step_us=st.integers(5, 60))
def test_resample_step_matches_pandas_groupby(table: pa.Table, step_us: int) -> None:
    result = STEPS["resample"](table, step_us=step_us, method="mean")
    df = _frame(table)
    numeric = df[(df["signal"] != "state") & df["value"].notna()].copy()
    numeric["bucket"] = numeric["ts"] // step_us * step_us
    with np.errstate(invalid="ignore"):
        ref = numeric.groupby(["asset_id", "signal", "bucket"], observed=True)["value"].mean()
    out = _frame(result.kept)
    res = out[out["signal"] != "state"].set_index(["asset_id", "signal", "ts"])["value"]
    assert len(res) == len(ref)
    got = res.loc[ref.index].to_numpy() if len(ref) else np.zeros(0)
    np.testing.assert_allclose(got, ref.to_numpy(), rtol=1e-9, atol=1e-9)
    assert (out["signal"] == "state").sum() == (df["signal"] == "state").sum()


def test_rolling_and_spectral_steps_make_feature_tables() -> None:
    table = _single([float(i % 4) for i in range(64)])
    rolling = STEPS["rolling"](table, window_n=4)
    assert rolling.kept.num_rows == 64
    assert rolling.kept.column("mean").to_pylist()[-1] == pytest.approx(1.5)
    spectral = STEPS["spectral"](table, m=16, bands=[(0.0, 10_000.0), (10_000.0, 60_000.0)])
    assert spectral.kept.num_rows == 4
    # 4 samples per period at 100 kHz: the tone is at 25 kHz.
    assert spectral.kept.column("peak_hz").to_pylist() == [25_000.0] * 4
    assert spectral.kept.column("fs").to_pylist() == [100_000.0] * 4


def test_to_si_converts_known_units_and_rejects_unknown_ones() -> None:
    table = pa.concat_tables([_single([20.0, None]), _single([1.0], signal="odd")])
    result = STEPS["to_si"](table, units={"temp": "Cel", "odd": "furlong"})
    kept = result.kept.to_pylist()
    assert [r["value"] for r in kept] == [pytest.approx(293.15), None]
    assert all(r["flags"] == Flag.UNIT_CONVERTED for r in kept)
    assert result.rejected.column("flags").to_pylist() == [Flag.UNIT_UNKNOWN]


def test_dp_noise_spends_the_budget_through_the_ledger(tmp_path: Path) -> None:
    evidence = MemoryEvidenceLog()
    with BudgetLedger(tmp_path / "ledger.db", evidence) as ledger:
        ledger.set_budget("plant", epsilon=1.0)
        releaser = PrivateReleaser(ledger, rng=np.random.default_rng(1))
        features = STEPS["resample"](_single([1.0, 2.0, 3.0, 4.0]), step_us=20).kept
        result = STEPS["dp_noise"](
            features, releaser=releaser, dataset="plant", columns=["value"], sensitivity=1.0, epsilon=0.6
        )
        assert ledger.spent("plant")[0] == pytest.approx(0.6)
        noisy = result.kept.column("value").to_pylist()
        assert noisy != features.column("value").to_pylist() and all(math.isfinite(v) for v in noisy)
        assert all(f & Flag.DP_NOISE for f in result.kept.column("flags").to_pylist())
        with pytest.raises(BudgetExceeded):
            STEPS["dp_noise"](
                features, releaser=releaser, dataset="plant", columns=["value"], sensitivity=1.0, epsilon=0.6
            )


def test_every_registered_step_takes_an_empty_table() -> None:
    empty = _single([])
    params = {
        "validity": {},
        "flatline": {"min_count": 2},
        "despike": {"k": 2},
        "deadband": {"d": 1.0},
        "swinging_door": {"e": 1.0},
        "gap_fill": {"gap_us": 1, "step_us": 1, "max_fill": 1},
        "resample": {"step_us": 10},
        "rolling": {"window_n": 3},
        "spectral": {"m": 4, "bands": [(0.0, 1.0)]},
        "to_si": {"units": {}},
    }
    for name, step in STEPS.items():
        if name == "dp_noise":
            continue
        result = step(empty, **params.get(name, {}))
        assert result.kept.num_rows == 0 and result.rejected.num_rows == 0, name
