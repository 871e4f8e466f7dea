"""Desensitization actions on Arrow batches: drop, mask, pseudonymize, generalize, pass; counts and levels."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pyarrow as pa
import pytest

from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.policy import KeyRing, Policy, PolicyError, PseudonymKey
from tidm.ingest import Provenance
from tidm.semantics import SAMPLES_SCHEMA, check_samples, samples_table
from tidm.semantics.catalog import CatalogEntry, SignalCatalog
from tidm.semantics.classification import ClassificationMap, Level

ASSET = "urn:tidm:asset:a1"
T0 = 1_700_000_000_123_456


def _table(rows: list[tuple[str, float | None, str | None]]) -> pa.Table:
    n = len(rows)
    return samples_table(
        ts_us=[T0 + i * 1_234_567 for i in range(n)],
        recv_ts_us=[T0 + i * 1_234_567 + 500 for i in range(n)],
        asset_id=[ASSET] * n,
        signal=[r[0] for r in rows],
        value=[r[1] for r in rows],
        value_text=[r[2] for r in rows],
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(n)),
    )


def _ring(*keys: tuple[str, int, bytes]) -> KeyRing:
    return KeyRing({f"{n}@{e}": PseudonymKey(n, e, s) for n, e, s in keys})


K1, K2 = b"k" * 32, b"j" * 32

POLICY = Policy.model_validate(
    {
        "id": "p",
        "version": "7",
        "rules": [
            {"match": {"signal": "Recipe*"}, "action": "drop"},
            {"match": {"signal": "Operator"}, "action": "pseudonymize", "key": "ops"},
            {"match": {"signal": "Serial"}, "action": "pseudonymize", "key": "ops", "length": 12},
            {"match": {"signal": "Batch"}, "action": "mask", "keep_prefix": 2, "keep_suffix": 1},
            {"match": {"signal": "Secret"}, "action": "mask", "fixed_length": 4},
            {"match": {"signal": "Temp"}, "action": "generalize", "step": 0.5, "clamp": [0, 80]},
            {"match": {"signal": "Load"}, "action": "generalize", "buckets": [0, 10, 100]},
            {"match": {"signal": "Speed"}, "action": "generalize", "time_step_ms": 60_000},
        ],
    }
)

ROWS: list[tuple[str, float | None, str | None]] = [
    ("Recipe1", 42.0, None),
    ("Operator", None, "alice"),
    ("Operator", None, "bob"),
    ("Operator", None, "alice"),
    ("Serial", 123456.0, None),
    ("Batch", None, "LOT-98765"),
    ("Secret", 3.25, None),
    ("Temp", 21.26, None),
    ("Temp", 99.0, None),
    ("Temp", None, None),  # a gap sample stays a gap
    ("Load", -3.0, None),
    ("Load", 55.5, None),
    ("Load", 1000.0, None),
    ("Speed", 7.0, None),
    ("Other", 1.5, None),
    ("Recipe2", None, "secret mix"),
]


def _apply(rows=ROWS, policy=POLICY, ring=None, **kw):  # type: ignore[no-untyped-def]
    d = Desensitizer(policy, keys=ring or _ring(("ops", 1, K1)), **kw)
    return d.apply(_table(rows))


def _hmac(key: bytes, text: str, n: int = 16) -> str:
    return "ps:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:n]


def test_every_action_on_one_batch() -> None:
    result = _apply()
    out = result.table
    check_samples(out, where="test")
    assert out.schema == SAMPLES_SCHEMA
    got = list(
        zip(out["signal"].to_pylist(), out["value"].to_pylist(), out["value_text"].to_pylist(), strict=True)
    )
    assert [g[0] for g in got] == [r[0] for r in ROWS if not r[0].startswith("Recipe")]
    by = {}
    for sig, v, t in got:
        by.setdefault(sig, []).append((v, t))
    assert by["Operator"] == [
        (None, _hmac(K1, "alice")),
        (None, _hmac(K1, "bob")),
        (None, _hmac(K1, "alice")),
    ]
    assert by["Serial"] == [(None, _hmac(K1, "123456.0", 12))]
    assert by["Batch"] == [(None, "LO******5")]
    assert by["Secret"] == [(None, "****")]
    assert by["Temp"] == [(21.5, None), (80.0, None), (None, None)]
    assert by["Load"] == [(0.0, None), (10.0, None), (100.0, None)]
    assert by["Other"] == [(1.5, None)]
    # Time coarsened to the minute for Speed only (ts and recv_ts); other rows keep theirs.
    speed = out["signal"].to_pylist().index("Speed")
    ts = out["ts"].cast(pa.int64()).to_pylist()
    recv = out["recv_ts"].cast(pa.int64()).to_pylist()
    assert ts[speed] % 60_000_000 == 0 and recv[speed] % 60_000_000 == 0
    other = out["signal"].to_pylist().index("Other")
    assert ts[other] % 60_000_000 != 0
    assert out["seq"].to_pylist() == [i for i, r in enumerate(ROWS) if not r[0].startswith("Recipe")]
    # The dropped signals' names do not travel in the dictionary either.
    assert not any(s.startswith("Recipe") for s in out["signal"].combine_chunks().dictionary.to_pylist())
    assert result.counts == {"drop": 2, "mask": 2, "pseudonymize": 4, "generalize": 7, "pass": 1}
    assert result.dropped == 2 and result.samples_in == len(ROWS)
    assert result.key_ids == ("ops@1",)
    assert (result.policy_id, result.policy_version, result.policy_hash) == ("p", "7", POLICY.sha256)


def test_pseudonyms_are_stable_per_key_id_and_differ_across_keys() -> None:
    rows = [("Operator", None, "alice"), ("Operator", None, "carol")]
    a1 = _apply(rows, ring=_ring(("ops", 1, K1))).table["value_text"].to_pylist()
    a2 = _apply(rows, ring=_ring(("ops", 1, K1))).table["value_text"].to_pylist()
    b = _apply(rows, ring=_ring(("ops", 1, K2))).table["value_text"].to_pylist()
    assert a1 == a2
    assert set(a1).isdisjoint(b)
    # Rotation: epoch 2 is in force for later batches and stamps its own key id.
    ring = _ring(("ops", 1, K1), ("ops", 2, K2))
    rotated = _apply(rows, ring=ring)
    assert rotated.key_ids == ("ops@2",) and rotated.table["value_text"].to_pylist() == b
    pinned = _apply(rows, ring=ring, epoch=1)
    assert pinned.key_ids == ("ops@1",) and pinned.table["value_text"].to_pylist() == a1


def test_batch_level_is_highest_of_its_remaining_signals() -> None:
    cmap = ClassificationMap.model_validate(
        {"signals": [{"signal": "Recipe*", "level": "core"}, {"signal": "Operator", "level": "important"}]}
    )
    result = _apply(classification=cmap)
    assert result.level is Level.IMPORTANT  # the core recipes were dropped
    assert result.provenance_fields()["classification"] == "important"
    assert result.evidence_attributes()["miit_level"] == 2
    keep_all = Policy.model_validate({"id": "p"})
    d = Desensitizer(keep_all, classification=cmap)
    assert d.apply(_table(ROWS)).level is Level.CORE
    assert d.apply(_table([("Other", 1.0, None)])).level is Level.GENERAL


def test_policy_by_level_drops_core_and_keeps_the_rest() -> None:
    cmap = ClassificationMap.model_validate({"signals": [{"signal": "Recipe*", "level": "core"}]})
    policy = Policy.model_validate(
        {"id": "lv", "rules": [{"match": {"min_level": "core"}, "action": "drop"}]}
    )
    result = Desensitizer(policy, classification=cmap).apply(_table(ROWS))
    assert result.counts["drop"] == 2 and result.counts["pass"] == len(ROWS) - 2


def test_dropping_everything_gives_an_empty_valid_batch() -> None:
    policy = Policy.model_validate({"id": "none", "default": "drop"})
    result = Desensitizer(policy).apply(_table(ROWS))
    assert result.table.num_rows == 0 and result.level is None
    check_samples(result.table, where="test")


def test_missing_key_fails_at_construction() -> None:
    with pytest.raises(PolicyError, match="no pseudonymization key named 'ops'"):
        Desensitizer(POLICY, keys=KeyRing())


def test_large_batch_numeric_actions_match_numpy() -> None:
    n = 50_000
    rng = np.random.default_rng(3)
    values = rng.normal(50, 30, n)
    table = samples_table(
        ts_us=np.arange(n, dtype=np.int64) * 1000 + T0,
        recv_ts_us=np.arange(n, dtype=np.int64) * 1000 + T0,
        asset_id=[ASSET] * n,
        signal=["Temp" if i % 2 else "Other" for i in range(n)],
        value=values,
        value_text=[None] * n,
        quality=np.zeros(n, dtype=np.uint8),
        status_code=np.zeros(n, dtype=np.uint32),
        seq=np.arange(n, dtype=np.uint64),
    )
    out = Desensitizer(POLICY, keys=_ring(("ops", 1, K1))).apply(table).table["value"].to_numpy()
    expect = values.copy()
    expect[1::2] = np.clip(np.round(values[1::2] / 0.5) * 0.5, 0, 80)
    np.testing.assert_array_equal(out, expect)


def test_levels_from_the_aas_catalog_unless_the_mapping_file_says_otherwise() -> None:
    catalog = SignalCatalog(
        [
            CatalogEntry(ASSET, "Other", level=Level.CORE, semantic_id="0173-1#02-AAA#001"),
            CatalogEntry(ASSET, "Temp", level=Level.CORE),
        ]
    )
    cmap = ClassificationMap.model_validate({"signals": [{"signal": "Temp", "level": "general"}]})
    policy = Policy.model_validate(
        {"id": "p", "rules": [{"match": {"semantic_id": "0173-1#02-AAA#001"}, "action": "drop"}]}
    )
    d = Desensitizer(policy, classification=cmap, catalog=catalog)
    assert d.plan(ASSET, "Other") == ("drop", Level.CORE)  # level and semantic id from the AAS
    assert d.plan(ASSET, "Temp") == ("pass", Level.GENERAL)  # the mapping file overrides
    assert d.plan(ASSET, "Unknown") == ("pass", Level.GENERAL)


def test_provenance_without_the_policy_fields_still_decodes() -> None:
    old = (
        b'{"agent_id":"a","asset_id":"x","batch_id":"b","created_us":1,"extra":{},"key_ids":[],'
        b'"policy_hash":"","policy_id":"","prev_batch_hash":"","rows":0,"schema_version":"samples/1",'
        b'"seq_first":0,"seq_last":0,"site":"s","sources":[]}'
    )
    prov = Provenance.from_json(old, where="test")
    assert (prov.policy_version, prov.classification) == ("", "")
    result = _apply()
    stamped = Provenance(
        agent_id="a",
        site="s",
        asset_id="x",
        batch_id="b",
        sources=(),
        seq_first=0,
        seq_last=0,
        rows=0,
        created_us=1,
        **result.provenance_fields(),
    )
    back = Provenance.from_json(stamped.to_json(), where="test")
    assert (back.policy_id, back.policy_version, back.policy_hash, back.key_ids) == (
        "p",
        "7",
        POLICY.sha256,
        ("ops@1",),
    )


def _content(table: pa.Table) -> list[object]:
    """A table's values, dictionaries and chunking (NaN-safe), for comparing two desensitized tables."""
    out: list[object] = [table.schema.to_string(show_schema_metadata=True)]
    for column in table.columns:
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                out.append((chunk.dictionary.to_pylist(), chunk.indices.to_pylist()))
            else:
                out.append(repr(chunk.to_pylist()))
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, len(ROWS)])
def test_pieces_of_a_prepared_table_match_applying_the_policy_to_each_piece(size: int) -> None:
    # The agent runs the policy once over a backlog, then cuts it into max_rows batches.
    ring = _ring(("ops", 1, K1))
    cmap = ClassificationMap.model_validate(
        {"signals": [{"signal": "Operator", "level": "important"}, {"signal": "Load", "level": "core"}]}
    )
    d = Desensitizer(POLICY, keys=ring, classification=cmap, clock_us=lambda: 1)
    table = _table(ROWS)
    prepared = d.prepare(table)
    for start in range(0, table.num_rows, size):
        piece = table.slice(start, size)
        seq = pa.array(np.arange(piece.num_rows, dtype=np.uint64) + 100)  # numbered after the cut
        piece = piece.set_column(piece.schema.get_field_index("seq"), piece.schema.field("seq"), seq)
        want, got = d.apply(piece), prepared.piece(piece, start)
        assert _content(got.table) == _content(want.table)
        assert (got.counts, got.key_ids, got.level, got.samples_in) == (
            want.counts,
            want.key_ids,
            want.level,
            want.samples_in,
        )
        assert got.evidence_attributes() == want.evidence_attributes()
        # A column the policy leaves alone in this piece is the piece's own, not a copy.
        for name in ("value", "value_text", "ts"):
            if _same_buffers(want.table, piece, name):
                assert _same_buffers(got.table, piece, name)


def _same_buffers(a: pa.Table, b: pa.Table, name: str) -> bool:
    if a.num_rows != b.num_rows:
        return False
    x, y = a.column(name).chunk(0), b.column(name).chunk(0)
    return x.offset == y.offset and [u.address if u else 0 for u in x.buffers()] == [
        v.address if v else 0 for v in y.buffers()
    ]


def test_a_prepared_piece_outside_the_table_is_refused() -> None:
    table = _table(ROWS[:4])
    prepared = Desensitizer(POLICY, keys=_ring(("ops", 1, K1))).prepare(table)
    with pytest.raises(ValueError, match="not within"):
        prepared.piece(table, 1)


def test_masked_numbers_keep_their_own_text_for_minus_zero() -> None:
    # Numbers are rewritten once per distinct bit pattern: -0.0 does not borrow 0.0's text.
    result = _apply([("Serial", 0.0, None), ("Serial", -0.0, None), ("Serial", 0.0, None)])
    assert result.table["value_text"].to_pylist() == [
        _hmac(K1, "0.0", 12),
        _hmac(K1, "-0.0", 12),
        _hmac(K1, "0.0", 12),
    ]
