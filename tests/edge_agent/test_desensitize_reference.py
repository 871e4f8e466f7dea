"""Desensitization against a row-at-a-time reference, on property-generated batches.

The Desensitizer works on whole columns (NumPy and Arrow); the reference below applies each row's
rule on its own in plain Python, from the policy's documented meaning. Batches mix assets, signals,
nulls in either column, rows holding both a number and a text, NaN and repeated texts; policies mix
every action. Whole tables (`apply`) and pieces of a prepared table must both agree with it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.policy import KeyRing, Policy, PseudonymKey, Rule
from tidm.semantics import SAMPLES_SCHEMA, check_samples, samples_table

KEY = b"reference-key-0123456789abcdef!!"
SIGNALS = ("A", "B", "C", "D", "E")
ASSETS = ("urn:x:1", "urn:x:2", "urn:x:3")
T0 = 1_700_000_000_000_000

RULES: list[dict[str, Any]] = [
    {"action": "drop"},
    {"action": "pass"},
    {"action": "pseudonymize", "key": "k"},
    {"action": "pseudonymize", "key": "k", "length": 8, "prefix": ""},
    {"action": "mask", "fixed_length": 4},
    {"action": "mask", "keep_prefix": 2, "keep_suffix": 1, "fill": "#"},
    {"action": "generalize", "step": 0.5},
    {"action": "generalize", "buckets": [0, 10, 100], "clamp": [0, 50]},
    {"action": "generalize", "time_step_ms": 1000},
    {"action": "generalize", "step": 2.0, "time_step_ms": 60_000},
]

Row = tuple[str, str, int, float | None, str | None]

rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(ASSETS),
        st.sampled_from(SIGNALS),
        st.integers(0, 10**9),
        st.one_of(
            st.none(),
            st.sampled_from([0.0, -0.0, math.nan, 1.25, -7.0, 1e300]),
            st.floats(-1e3, 1e3, allow_nan=False),
        ),
        st.one_of(st.none(), st.sampled_from(["", "op-1", "op-2", "LOT-98765", "ü€x"]), st.text(max_size=6)),
    ),
    max_size=40,
)
policy_strategy = st.dictionaries(
    st.sampled_from([*SIGNALS, "urn:x:2/*"]), st.sampled_from(range(len(RULES))), max_size=5
)


def _policy(choice: dict[str, int], default: str) -> Policy:
    rules = []
    for target, index in sorted(choice.items()):
        match = {"asset": target.split("/")[0], "signal": "*"} if "/" in target else {"signal": target}
        rules.append({"match": match, **RULES[index]})
    return Policy.model_validate({"id": "ref", "version": "1", "default": default, "rules": rules})


def _table(rows: list[Row]) -> pa.Table:
    n = len(rows)
    return samples_table(
        ts_us=[T0 + r[2] for r in rows],
        recv_ts_us=[T0 + r[2] + 777 for r in rows],
        asset_id=[r[0] for r in rows],
        signal=[r[1] for r in rows],
        value=[r[3] for r in rows],
        value_text=[r[4] for r in rows],
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(n)),
    )


def _rewrite(rule: Rule, clear: str) -> str:
    if rule.action == "pseudonymize":
        return rule.prefix + hmac.new(KEY, clear.encode(), hashlib.sha256).hexdigest()[: rule.length]
    if rule.fixed_length is not None:
        return rule.fill * rule.fixed_length
    head = min(rule.keep_prefix, len(clear))
    tail = min(rule.keep_suffix, len(clear) - head)
    return (
        clear[:head] + rule.fill * (len(clear) - head - tail) + (clear[len(clear) - tail :] if tail else "")
    )


def _generalized(rule: Rule, v: float) -> float:
    if rule.step is not None:
        v = float(np.round(v / rule.step) * rule.step)
    if rule.buckets is not None and not math.isnan(v):
        below = [edge for edge in rule.buckets if edge <= v]
        v = float(below[-1] if below else rule.buckets[0])
    if rule.clamp is not None and not math.isnan(v):
        v = min(max(v, rule.clamp[0]), rule.clamp[1])
    return v


def _reference(policy: Policy, rows: list[Row]) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """Each row on its own: (asset, signal, ts, recv_ts, value, text, seq) of the rows kept; counts."""
    out, counts = [], dict.fromkeys(("drop", "mask", "pseudonymize", "generalize", "pass"), 0)
    for seq, (asset, signal, dt, value, text) in enumerate(rows):
        ts, recv = T0 + dt, T0 + dt + 777
        rule = policy.rule_for(signal, asset_id=asset, semantic_id=None, level=None)
        action = rule.action if rule is not None else policy.default
        counts[action] += 1
        if action == "drop":
            continue
        if rule is not None and action == "generalize":
            if value is not None:
                value = _generalized(rule, value)
            if rule.time_step_ms is not None:
                step = rule.time_step_ms * 1000
                ts, recv = ts - ts % step, recv - recv % step
        elif rule is not None and action in ("mask", "pseudonymize"):
            if value is not None:  # a number becomes the text of its repr, the value a gap
                text, value = _rewrite(rule, repr(value)), None
            elif text is not None:
                text = _rewrite(rule, text)
        out.append((asset, signal, ts, recv, value, text, seq))
    return out, counts


def _rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    cols = [
        table[name].to_pylist()
        for name in ("asset_id", "signal", "ts", "recv_ts", "value", "value_text", "seq")
    ]
    cols[2] = table["ts"].cast(pa.int64()).to_pylist()
    cols[3] = table["recv_ts"].cast(pa.int64()).to_pylist()
    return list(zip(*cols, strict=True)) if cols else []


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        v = row[4]
        return (*row[:4], ("nan" if isinstance(v, float) and math.isnan(v) else repr(v)), *row[5:])

    return [key(r) for r in got] == [key(r) for r in want]


def _desensitizer(policy: Policy) -> Desensitizer:
    return Desensitizer(policy, keys=KeyRing({"k@1": PseudonymKey("k", 1, KEY)}), clock_us=lambda: T0)


@settings(max_examples=300, deadline=None)
@given(rows=rows_strategy, choice=policy_strategy, default=st.sampled_from(["pass", "drop"]))
def test_whole_tables_match_the_row_reference(rows: list[Row], choice: dict[str, int], default: str) -> None:
    policy = _policy(choice, default)
    result = _desensitizer(policy).apply(_table(rows))
    check_samples(result.table, where="reference test")
    assert result.table.schema == SAMPLES_SCHEMA
    want, counts = _reference(policy, rows)
    assert _same(_rows_of(result.table), want)
    assert result.counts == counts
    assert result.samples_in == len(rows)
    hit_keys = {"k@1"} if counts["pseudonymize"] else set()
    assert set(result.key_ids) == hit_keys


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    choice=policy_strategy,
    default=st.sampled_from(["pass", "drop"]),
    size=st.integers(1, 9),
)
def test_pieces_of_a_prepared_table_match_the_row_reference(
    rows: list[Row], choice: dict[str, int], default: str, size: int
) -> None:
    policy = _policy(choice, default)
    des = _desensitizer(policy)
    table = _table(rows)
    prepared = des.prepare(table)
    for start in range(0, len(rows), size):
        piece = table.slice(start, size)
        got = prepared.piece(piece, start)
        want, counts = _reference(policy, rows[start : start + size])
        want = [(*w[:6], w[6] + start) for w in want]
        assert _same(_rows_of(got.table), want)
        assert got.counts == counts
