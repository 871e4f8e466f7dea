"""The bulk fast path of canonical checks: never says yes wrongly, agrees with the one-by-one check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.evidence._support import make_entry

from tidm.evidence import EntryError, EventType, EvidenceEntry, SqliteEvidenceLog, canonical_bytes
from tidm.evidence.entry import all_canonical, entries_from_canonical, entry_from_canonical

GOOD = [canonical_bytes(make_entry(n, inputs=(make_entry(n + 1).subject,))) for n in range(20)]


def test_bulk_accepts_canonical_entries_and_parses_them_alike() -> None:
    assert all_canonical(GOOD) and all_canonical([])
    assert entries_from_canonical(GOOD) == [entry_from_canonical(g) for g in GOOD]


@pytest.mark.parametrize(
    "bad",
    [
        b'{"actor":"a","attributes":{},"event":"SEND","inputs":[],"subject":"x","time_us":1,"v":1}',
        GOOD[0].replace(b'"v":1}', b'"v":1 }'),
        GOOD[0].replace(b'"offset":0', b'"offset":5e0'),
        GOOD[0].replace(b'"offset":0', b'"offset":9007199254740993'),
        GOOD[0].replace(b'"RECEIVE"', b'"NOPE"'),
        GOOD[0][:-7] + b',"w":2,"v":1}',
        GOOD[0] + b"," + GOOD[1],
        # What the grammar of the flat shape must refuse (and the JSON path too).
        GOOD[0].replace(b'"offset":0', b'"offset":-0'),
        GOOD[0].replace(b'"offset":0', b'"offset":00'),
        GOOD[0].replace(b'"offset":0', b'"offset":12345678901234567'),
        GOOD[0].replace(b'"actor":"', b'"actor":"\\/'),
        GOOD[0].replace(b'"actor":"', b'"actor":"\\u0041'),
        GOOD[0].replace(b'"actor":"', b'"actor":"\\u001F'),
        GOOD[0].replace(b'"actor":"', b'"actor":"\t'),
        GOOD[0].replace(b'"offset":0', b'"offset":0,"offset":0'),
        GOOD[0].replace(b'"offset":0', b'"zz":0,"offset":0'),
        GOOD[0].replace(b'"time_us":', b'"time_us":9'),
        GOOD[0].replace(b'"offset":0', b'"offset":NaN'),
    ],
)
def test_bulk_refuses_anything_else(bad: bytes) -> None:
    assert not all_canonical([*GOOD[:3], bad])
    with pytest.raises(EntryError, match="entry 3"):
        entries_from_canonical([*GOOD[:3], bad])


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.one_of(st.integers(-(2**60), 2**60), st.text(max_size=8), st.booleans(), st.none()),
        max_size=4,
    ),
    st.text(min_size=1, max_size=8),
)
def test_bulk_agrees_with_the_exact_check(attributes: dict[str, object], actor: str) -> None:
    entry = EvidenceEntry(EventType.SEND, "a" * 64, actor, 5, (), attributes)
    try:
        data = canonical_bytes(entry)
    except EntryError:
        return
    if all_canonical([data]):
        assert entry_from_canonical(data) == entries_from_canonical([data])[0]


def test_floats_take_the_exact_path() -> None:
    data = GOOD[0].replace(b'"offset":0', b'"offset":0.5')
    assert not all_canonical([data])
    assert entries_from_canonical([data])[0].attributes["offset"] == 0.5


def test_sqlite_append_canonical_matches_append(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with SqliteEvidenceLog(tmp_path / "a.db") as a, SqliteEvidenceLog(tmp_path / "b.db") as b:
        a.append([entry_from_canonical(g) for g in GOOD])
        b.append_canonical(GOOD)
        assert a.root() == b.root()
        assert [i.canonical for i in b.read()] == GOOD


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(max_codepoint=0x7F), max_size=4),
        st.one_of(
            st.integers(-(2**54), 2**54), st.text(st.characters(max_codepoint=0x7F), max_size=6), st.none()
        ),
        max_size=4,
    ),
    st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=6),
    st.integers(0, 2**53 - 1),
    st.data(),
)
def test_flat_shape_check_never_accepts_what_the_exact_check_refuses(
    attributes: dict[str, object], actor: str, time_us: int, data: st.DataObject
) -> None:
    entry = EvidenceEntry(EventType.SEND, "a" * 64, actor, time_us, ("b" * 64,), attributes)
    try:
        good = canonical_bytes(entry)
    except EntryError:
        return
    assert all_canonical([good])  # refusing a valid entry would only be slow; accepting a bad one is wrong
    position = data.draw(st.integers(0, len(good) - 1))
    edit = data.draw(st.sampled_from([b"", b" ", b"\\", b'"', b"0", b"9", b",", b"}", b"A", b"-"]))
    mutated = good[:position] + edit + good[position + data.draw(st.integers(0, 2)) :]
    if all_canonical([mutated]):
        assert canonical_bytes(entry_from_canonical(mutated)) == mutated
