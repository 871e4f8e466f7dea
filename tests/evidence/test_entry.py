"""Canonical entry bytes (RFC 8785) and their strict parsing."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.evidence._support import digest, make_entry

from tidm.evidence import (
    MAX_ENTRY_BYTES,
    EntryError,
    EventType,
    EvidenceEntry,
    canonical_bytes,
    entry_from_canonical,
    is_digest,
    sha256_hex,
)
from tidm.evidence.entry import _jcs


def test_sha256_hex_names_objects() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"batch") == hashlib.sha256(b"batch").hexdigest()
    assert is_digest(sha256_hex(b"x"))
    assert not is_digest(sha256_hex(b"x").upper())
    assert not is_digest(sha256_hex(b"x") + "\n")
    assert not is_digest(None)


def test_canonical_form_is_fixed_and_sorted() -> None:
    entry = EvidenceEntry(
        event=EventType.CONTENT_MODIFIED,
        subject=digest("out"),
        actor="job/clean",
        time_us=1_700_000_000_000_001,
        inputs=(digest("in"),),
        attributes={"z": 1, "a": "é", "f": 1.0},
    )
    expected = (
        '{"actor":"job/clean","attributes":{"a":"é","f":1,"z":1},"event":"CONTENT_MODIFIED",'
        f'"inputs":["{digest("in")}"],"subject":"{digest("out")}","time_us":1700000000000001,"v":1}}'
    ).encode()
    assert canonical_bytes(entry) == expected


def test_round_trip() -> None:
    entry = make_entry(7, inputs=(digest("a"), digest("b")))
    data = canonical_bytes(entry)
    parsed = entry_from_canonical(data)
    assert parsed == dataclasses.replace(entry, inputs=tuple(entry.inputs), attributes=dict(entry.attributes))
    assert isinstance(parsed.event, EventType)
    assert canonical_bytes(parsed) == data


def test_event_may_be_given_as_string() -> None:
    entry = dataclasses.replace(make_entry(1), event="SEND")  # type: ignore[arg-type]
    assert entry_from_canonical(canonical_bytes(entry)).event is EventType.SEND


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event": "TELEPORT"}, "unknown event type"),
        ({"subject": "ABC"}, "subject must be 64 lowercase hex"),
        ({"subject": digest("x").upper()}, "subject must be 64 lowercase hex"),
        ({"inputs": ("nope",)}, r"inputs\[0\]"),
        ({"inputs": digest("x")}, "not a single string"),
        ({"actor": ""}, "actor must be a non-empty string"),
        ({"time_us": -1}, "time_us"),
        ({"time_us": 1.5}, "time_us"),
        ({"time_us": True}, "time_us"),
        ({"attributes": {"blob": b"raw"}}, "not representable"),
        ({"attributes": {"n": float("nan")}}, "not representable"),
        ({"attributes": {"n": 2**60}}, "not representable"),
        ({"attributes": {"s": "\ud800"}}, "not representable"),
        ({"attributes": {1: "x"}}, "attribute names must be strings"),
        ({"attributes": ["x"]}, "attributes must be a mapping"),
    ],
)
def test_invalid_entries_are_rejected(change: dict[str, object], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        canonical_bytes(dataclasses.replace(make_entry(1), **change))  # type: ignore[arg-type]


def test_size_limit() -> None:
    big = dataclasses.replace(make_entry(1), attributes={"x": "a" * MAX_ENTRY_BYTES})
    with pytest.raises(EntryError, match=r"bytes as canonical JSON, the limit is 65536"):
        canonical_bytes(big)
    with pytest.raises(EntryError, match="the limit is 65536"):
        entry_from_canonical(b" " * (MAX_ENTRY_BYTES + 1))
    # Just under the limit is fine.
    base = len(canonical_bytes(dataclasses.replace(make_entry(1), attributes={"x": ""})))
    fits = dataclasses.replace(make_entry(1), attributes={"x": "a" * (MAX_ENTRY_BYTES - base)})
    assert len(canonical_bytes(fits)) == MAX_ENTRY_BYTES


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d.replace(b'{"actor"', b'{ "actor"'), "not in RFC 8785 canonical form"),
        (lambda d: d.replace(b'"v":1', b'"v":2'), "unsupported entry version"),
        (lambda d: d.replace(b',"v":1', b',"v":1,"extra":0'), "exactly the keys"),
        (lambda d: d.replace(b',"v":1', b',"v":1,"v":1'), "not in RFC 8785 canonical form"),
        (lambda d: d[:-1], "not valid JSON"),
        (lambda d: b"[]", "exactly the keys"),
        (lambda d: b"\xff", "not valid JSON"),
        (lambda d: d.replace(b'"RECEIVE"', b'"NOPE"'), "unknown event type"),
    ],
)
def test_non_canonical_bytes_are_rejected(mangle: object, message: str) -> None:
    data = canonical_bytes(make_entry(3))
    with pytest.raises(EntryError, match=message):
        entry_from_canonical(mangle(data))  # type: ignore[operator]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    inputs=st.lists(st.binary(min_size=1, max_size=8).map(sha256_hex), max_size=4),
    time_us=st.integers(0, 2**53 - 1),
    event=st.sampled_from(list(EventType)),
)
def test_round_trip_property(
    attributes: dict[str, object], inputs: list[str], time_us: int, event: EventType
) -> None:
    entry = EvidenceEntry(event, digest("s"), "actor", time_us, tuple(inputs), attributes)
    data = canonical_bytes(entry)
    assert entry_from_canonical(data) == entry
    assert json.loads(data)["v"] == 1


any_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.text(max_size=12)
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=500, deadline=None)
@given(document=any_json)
def test_fast_canonical_path_is_byte_identical_to_rfc8785(document: object) -> None:
    """The stdlib fast path of canonical_bytes must never disagree with the reference library."""
    assert _jcs(document) == rfc8785.dumps(document)  # type: ignore[arg-type]


def test_fast_canonical_path_edge_cases() -> None:
    for document in [
        {"\ue000": 1, "\U0001f600": 2},  # UTF-16 order differs from code point order here
        {"s": '\x00\x1f\x7f\u2028"\\/\b\f\n\r\t'},
        {"f": 1.0, "g": 1e21, "h": -0.0},
        [2**53 - 1, -(2**53) + 1],
    ]:
        assert _jcs(document) == rfc8785.dumps(document)
