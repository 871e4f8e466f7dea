"""Canonical bytes of an evidence entry (RFC 8785 JSON) and the way back.

The canonical form has a fixed key set, so two parties that log the same event produce the same bytes,
hence the same leaf hash:

    {"v":1,"event":..,"subject":..,"inputs":[..],"actor":..,"time_us":..,"attributes":{..}}
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import rfc8785

from tidm.evidence.api import EventType, EvidenceEntry
from tidm.evidence.errors import EntryError

__all__ = [
    "ENTRY_VERSION",
    "MAX_ENTRY_BYTES",
    "all_canonical",
    "canonical_bytes",
    "canonical_entry",
    "entries_from_canonical",
    "entry_from_canonical",
    "is_digest",
    "sha256_hex",
    "validate_entry",
]

ENTRY_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024

# Sorted compact JSON (RFC 8785 for the plain values `_jcs` lets through), built once: json.dumps with
# options builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_KEYS = frozenset({"v", "event", "subject", "inputs", "actor", "time_us", "attributes"})
_DIGEST = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of `data`: how TIDM names an object in evidence (`subject`, `inputs`)."""
    return hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    """True if `value` is a 64-character lowercase hex string."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def validate_entry(entry: EvidenceEntry) -> None:
    """Raise `EntryError` if `entry` cannot be logged (the size limit is checked on its canonical bytes)."""
    try:
        EventType(entry.event)
    except ValueError:
        msg = f"unknown event type {entry.event!r}"
        raise EntryError(msg) from None
    if not is_digest(entry.subject):
        msg = f"subject must be 64 lowercase hex characters, got {entry.subject!r}"
        raise EntryError(msg)
    if isinstance(entry.inputs, str | bytes):
        msg = "inputs must be a sequence of digests, not a single string"
        raise EntryError(msg)
    for position, digest in enumerate(entry.inputs):
        if not is_digest(digest):
            msg = f"inputs[{position}] must be 64 lowercase hex characters, got {digest!r}"
            raise EntryError(msg)
    if not isinstance(entry.actor, str) or not entry.actor:
        msg = f"actor must be a non-empty string, got {entry.actor!r}"
        raise EntryError(msg)
    if not isinstance(entry.time_us, int) or isinstance(entry.time_us, bool) or entry.time_us < 0:
        msg = f"time_us must be a non-negative int (µs since the epoch), got {entry.time_us!r}"
        raise EntryError(msg)
    if not isinstance(entry.attributes, Mapping):
        msg = f"attributes must be a mapping, got {type(entry.attributes).__name__}"
        raise EntryError(msg)
    for key in entry.attributes:
        if not isinstance(key, str):
            msg = f"attribute names must be strings, got {key!r}"
            raise EntryError(msg)


def canonical_bytes(entry: EvidenceEntry) -> bytes:
    """The entry's RFC 8785 canonical JSON bytes; raises `EntryError` if invalid or over 64 KiB."""
    validate_entry(entry)
    fast = _fast_canonical(entry)
    if fast is not None:
        return fast[0]
    document = {
        "v": ENTRY_VERSION,
        "event": EventType(entry.event).value,
        "subject": entry.subject,
        "inputs": list(entry.inputs),
        "actor": entry.actor,
        "time_us": entry.time_us,
        "attributes": dict(entry.attributes),
    }
    try:
        data = _jcs(document)
    except (rfc8785.CanonicalizationError, UnicodeError) as exc:
        msg = f"entry is not representable as canonical JSON: {exc}"
        raise EntryError(msg) from exc
    if len(data) > MAX_ENTRY_BYTES:
        msg = (
            f"entry is {len(data)} bytes as canonical JSON, the limit is {MAX_ENTRY_BYTES}: "
            "log digests and ids in attributes, never payloads"
        )
        raise EntryError(msg)
    return data


def canonical_entry(entry: EvidenceEntry) -> tuple[bytes, EvidenceEntry]:
    """The entry's canonical bytes and the entry as parsed back from them (what stores log).

    Same result as `canonical_bytes` then parsing the bytes, in one walk for the common shapes
    (text, safe integers, booleans, null, lists and objects of them): the walk both checks that the
    standard library's sorted compact JSON is RFC 8785 there and builds the parsed-back attributes
    (objects in key order, tuples as lists). Other entries take the general path.
    """
    validate_entry(entry)
    fast = _fast_canonical(entry)
    if fast is not None:
        return fast
    data = canonical_bytes(entry)
    return data, _parse_entry(data)


def _fast_canonical(entry: EvidenceEntry) -> tuple[bytes, EvidenceEntry] | None:
    """`canonical_entry` of a validated entry of the common shapes; None for the general path."""
    subject, actor, time_us = entry.subject, entry.actor, entry.time_us
    if not (type(subject) is str and type(actor) is str and type(time_us) is int):
        return None
    if time_us > _MAX_SAFE_INTEGER:
        return None
    try:
        attributes = _normalized(dict(entry.attributes))
        inputs = [_text(digest) for digest in entry.inputs]
        event = EventType(entry.event)
        document = {
            "v": ENTRY_VERSION,
            "event": event.value,
            "subject": subject,
            "inputs": inputs,
            "actor": actor,
            "time_us": time_us,
            "attributes": attributes,
        }
        data = _ENCODER.encode(document).encode("utf-8")
    except (_NotPlain, UnicodeEncodeError, TypeError):  # TypeError: keys of mixed types in sorted()
        return None  # the general path canonicalizes it or names what it cannot
    if len(data) > MAX_ENTRY_BYTES:
        return None  # the general path raises the size error
    normalized = EvidenceEntry(
        event=event,
        subject=subject,
        actor=actor,
        time_us=time_us,
        inputs=tuple(inputs),
        attributes=attributes,
    )
    return data, normalized


def _text(value: object) -> str:
    if type(value) is not str:
        raise _NotPlain
    return value


def _normalized(value: Any) -> Any:
    """`value` as a JSON round trip gives it back, if plain (see `_jcs`); else raise `_NotPlain`."""
    kind = type(value)
    if kind is str or value is None or value is True or value is False:
        return value
    if kind is int:
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return value
        raise _NotPlain
    if kind is list or kind is tuple:
        return [_normalized(item) for item in value]
    if kind is dict:
        out = {}
        for key in sorted(value):  # keys of mixed types raise TypeError: the caller's general path
            if type(key) is not str or not (key.isascii() or max(key) < "\U00010000"):
                raise _NotPlain
            item = value[key]
            item_kind = type(item)
            # The flat values every emitter writes, without a call each (this runs per entry).
            if item_kind is str or item is None or item is True or item is False:
                out[key] = item
            elif item_kind is int and -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
                out[key] = item
            else:
                out[key] = _normalized(item)
        return out
    raise _NotPlain


def entry_from_canonical(data: bytes) -> EvidenceEntry:
    """Parse canonical bytes back into an entry; raises `EntryError` unless they are exactly canonical."""
    entry = _parse_entry(data)
    if canonical_bytes(entry) != data:
        msg = "entry bytes are valid JSON but not in RFC 8785 canonical form"
        raise EntryError(msg)
    return entry


def _parse_entry(data: bytes) -> EvidenceEntry:
    """Parse entry bytes this process just canonicalized (skips the re-encoding check)."""
    if len(data) > MAX_ENTRY_BYTES:
        msg = f"entry is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}"
        raise EntryError(msg)
    try:
        # Duplicate keys need no hook: json keeps the last one, so the bytes are not canonical.
        document = json.loads(data)
    except (ValueError, UnicodeError) as exc:
        msg = f"entry is not valid JSON: {exc}"
        raise EntryError(msg) from exc
    if not isinstance(document, dict) or set(document) != _KEYS:
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        msg = f"entry must be an object with exactly the keys {sorted(_KEYS)}, got {keys}"
        raise EntryError(msg)
    if document["v"] != ENTRY_VERSION or isinstance(document["v"], bool):
        msg = f"unsupported entry version {document['v']!r}"
        raise EntryError(msg)
    if not isinstance(document["inputs"], list):
        msg = "inputs must be a JSON array"
        raise EntryError(msg)
    if not isinstance(document["event"], str):
        msg = f"event must be a string, got {document['event']!r}"
        raise EntryError(msg)
    try:
        event = EventType(document["event"])
    except ValueError:
        msg = f"unknown event type {document['event']!r}"
        raise EntryError(msg) from None
    return EvidenceEntry(
        event=event,
        subject=document["subject"],
        actor=document["actor"],
        time_us=document["time_us"],
        inputs=tuple(document["inputs"]),
        attributes=document["attributes"],
    )


_MAX_SAFE_INTEGER = 2**53 - 1


def _jcs(document: Any) -> bytes:
    """RFC 8785 bytes of `document`.

    For documents without floats, with safe integers and with keys inside the Basic Multilingual Plane,
    the standard library's sorted compact JSON is byte-identical to RFC 8785 (same string escapes,
    UTF-16 order equals code point order) and ~20x faster than the pure-Python `rfc8785`. Anything
    else takes the `rfc8785` path, which also reports what cannot be canonicalized.
    """
    if _plain(document):
        try:
            return _ENCODER.encode(document).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let rfc8785 raise its error
    return rfc8785.dumps(document)


def _plain(value: object) -> bool:
    if value is None or value is True or value is False or type(value) is str:
        return True
    if type(value) is int:
        return -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER
    if type(value) is list or type(value) is tuple:
        return all(_plain(item) for item in value)
    if type(value) is dict:
        return all(
            type(key) is str and (key.isascii() or max(key) < "\U00010000") and _plain(item)
            for key, item in value.items()
        )
    return False


_EVENT_NAMES = frozenset(e.value for e in EventType)


def _float_seen(text: str) -> float:
    raise _NotPlain


class _NotPlain(Exception):
    pass


def _digests(values: list[Any]) -> bool:
    return all(type(v) is str and _DIGEST.fullmatch(v) for v in values)


# The shape nearly every entry has: ASCII, attributes a flat object of strings, safe integers,
# booleans and nulls, keys without escapes. For such bytes, canonical form is a matter of grammar
# (RFC 8785 string escapes, integer spelling, no whitespace) plus sorted unique attribute keys, so one
# regular expression and a key-order check decide it without a JSON parse. The integers it accepts
# have at most 16 digits, below 9e15 (safe, < 2**53); longer ones take the JSON path.
_PLAIN = rb"[\x20\x21\x23-\x5b\x5d-\x7f]"  # ASCII that strings hold as is (not '"', '\\', controls)
_ESCAPE = rb'\\(?:["\\bfnrt]|u00(?:0[0-7bef]|1[0-9a-f]))'  # the escapes RFC 8785 writes, exactly
_STR_BODY = _PLAIN + rb"*(?:" + _ESCAPE + _PLAIN + rb"*)*"  # unrolled: runs of plain characters
_KEY_CHARS = _PLAIN + rb"*"
_INT = rb"(?:0|-?[1-9][0-9]{0,14}|-?[1-8][0-9]{15})"
_VALUE = rb'(?:"' + _STR_BODY + rb'"|' + _INT + rb"|true|false|null)"
_MEMBER = rb'"' + _KEY_CHARS + rb'":' + _VALUE
_HEX = rb'"[0-9a-f]{64}"'
_FLAT_ENTRY = re.compile(
    rb'\{"actor":"(?=[^"])'
    + _STR_BODY
    + rb'","attributes":\{((?:'
    + _MEMBER
    + rb"(?:,"
    + _MEMBER
    + rb')*)?)\},"event":"(?:'
    + b"|".join(e.value.encode() for e in EventType)
    + rb')","inputs":\[(?:'
    + _HEX
    + rb"(?:,"
    + _HEX
    + rb')*)?\],"subject":'
    + _HEX
    + rb',"time_us":(?:0|[1-9][0-9]{0,14}|[1-8][0-9]{15}),"v":1\}'
)
# Applied to attributes that matched `_FLAT_ENTRY`, it finds the members one after another.
_FLAT_KEY = re.compile(rb'"(' + _KEY_CHARS + rb')":' + _VALUE)
_SORTED_KEYS: set[tuple[bytes, ...]] = set()  # attribute key lists seen sorted and unique (few shapes)
_SORTED_KEYS_MAX = 4096


def _flat_canonical(data: bytes) -> bool:
    """True if `data` is a canonical entry of the flat shape; False if not, or of another shape."""
    match = _FLAT_ENTRY.fullmatch(data) if len(data) <= MAX_ENTRY_BYTES else None
    if match is None:
        return False
    members = match.group(1)
    if not members:
        return True
    keys = tuple(_FLAT_KEY.findall(members))
    if keys in _SORTED_KEYS:
        return True
    if list(keys) != sorted(set(keys)):
        return False
    if len(_SORTED_KEYS) >= _SORTED_KEYS_MAX:
        _SORTED_KEYS.clear()
    _SORTED_KEYS.add(keys)
    return True


def all_canonical(entries: list[bytes]) -> bool:
    """True if every item is a well-formed entry in canonical form; False means "check one by one".

    The fast path of audits over millions of entries. Entries of the flat shape (see `_FLAT_ENTRY`)
    are checked by grammar, without a parse; the others get one C-level parse and one C-level encode
    of all of them together, valid where the standard library's sorted compact JSON equals RFC 8785
    (ASCII text, no floats, safe integers, as `_jcs` documents). It never says True wrongly; it may
    say False for valid entries outside that domain, which the caller then checks with
    `entry_from_canonical`.
    """
    flat = _flat_canonical
    entries = [data for data in entries if not flat(data)]
    if not entries:
        return True
    blob = b"[" + b",".join(entries) + b"]"
    if not blob.isascii():
        return False
    for data in entries:
        # Canonical entries start and end with the first and last keys in sorted order; with raw quotes
        # impossible inside JSON strings, this pins each item's boundaries inside the joined chunk.
        if len(data) > MAX_ENTRY_BYTES or not (data.startswith(b'{"actor":"') and data.endswith(b',"v":1}')):
            return False
    try:
        documents = json.loads(blob, parse_float=_float_seen, parse_constant=_float_seen)
    except (ValueError, _NotPlain):
        return False
    if len(documents) != len(entries):
        return False  # an item held more than one value ("1,2"): the split was not one per entry
    for document in documents:
        if (
            type(document) is not dict
            or document.keys() != _KEYS
            or document["v"] != ENTRY_VERSION
            or type(document["v"]) is not int
            or document["event"] not in _EVENT_NAMES
            or type(document["subject"]) is not str
            or _DIGEST.fullmatch(document["subject"]) is None
            or type(document["inputs"]) is not list
            or (document["inputs"] and not _digests(document["inputs"]))
            or type(document["actor"]) is not str
            or not document["actor"]
            or type(document["time_us"]) is not int
            or not 0 <= document["time_us"] <= _MAX_SAFE_INTEGER
            or type(document["attributes"]) is not dict
        ):
            return False
        for value in document["attributes"].values():
            kind = type(value)
            if kind is str or (kind is int and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER):
                continue  # the common flat case, without the recursive walk
            if not _plain(value):
                return False
    encoded = json.dumps(documents, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    # An escape such as \ua001 (or a lone surrogate) in the ASCII input decodes to non-ASCII text.
    return encoded.isascii() and encoded.encode("ascii") == blob


def entries_from_canonical(entries: list[bytes]) -> list[EvidenceEntry]:
    """Parse many canonical entries (bulk fast path); `EntryError` naming the first bad position."""
    if all_canonical(entries):
        # ASCII, as all_canonical checked: text parses without json's encoding detection.
        documents = json.loads((b"[" + b",".join(entries) + b"]").decode("ascii"))
        return [
            EvidenceEntry(
                event=EventType(d["event"]),
                subject=d["subject"],
                actor=d["actor"],
                time_us=d["time_us"],
                inputs=tuple(d["inputs"]),
                attributes=d["attributes"],
            )
            for d in documents
        ]
    parsed = []
    for position, data in enumerate(entries):
        try:
            parsed.append(entry_from_canonical(data))
        except EntryError as exc:
            msg = f"entry {position}: {exc}"
            raise EntryError(msg) from None
    return parsed
