"""`canonical_entry` (the stores' one-walk fast path) gives exactly what canonicalizing then parsing gives."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from tidm.evidence import EventType, EvidenceEntry
from tidm.evidence.entry import _parse_entry, canonical_bytes, canonical_entry
from tidm.evidence.errors import EntryError

DIGEST = hashlib.sha256(b"x").hexdigest()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    attributes=st.dictionaries(st.text(max_size=6), values, max_size=5),
    event=st.sampled_from(list(EventType)),
    time_us=st.integers(min_value=0, max_value=2**62),
)
def test_same_bytes_and_entry_as_the_general_path(
    attributes: dict[str, Any], event: EventType, time_us: int
) -> None:
    entry = EvidenceEntry(event, DIGEST, "agent:a", time_us, (DIGEST,), attributes)
    try:
        expected = canonical_bytes(entry)
    except EntryError as exc:
        with pytest.raises(EntryError) as caught:
            canonical_entry(entry)
        assert str(caught.value) == str(exc)
        return
    data, parsed = canonical_entry(entry)
    assert data == expected
    document = {
        "v": 1,
        "event": event.value,
        "subject": DIGEST,
        "inputs": [DIGEST],
        "actor": "agent:a",
        "time_us": time_us,
        "attributes": attributes,
    }
    assert data == rfc8785.dumps(document)  # the reference implementation, whatever path was taken
    again = _parse_entry(expected)
    assert parsed == again
    assert list(parsed.attributes) == list(again.attributes)  # the same key order


def test_invalid_and_oversized_entries_raise_the_same_errors() -> None:
    with pytest.raises(EntryError, match="subject"):
        canonical_entry(EvidenceEntry(EventType.SEND, "nope", "a", 0))
    big = EvidenceEntry(EventType.SEND, DIGEST, "a", 0, (), {"blob": "x" * 70_000})
    with pytest.raises(EntryError, match="limit is 65536"):
        canonical_entry(big)
