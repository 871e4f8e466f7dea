"""JSON payloads: one JSONPath per signal, timestamps from the payload or the receive time, batches.

A payload is either one record (an object) or many: a top-level array, or the items a `records`
JSONPath selects. Each record gives one sample per signal found in it ("wide" records), or, with
`signal_path` + `value_path`, one sample naming its own signal ("long" records).

Hot path: JSONPaths that are plain child/index chains (`$.a.b[0]`, the common case) are compiled
to key tuples and walked without python-jsonpath; only filters, wildcards and descents use it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders.base import STATUS_GOOD, Decoded, Reject, topic_level
from tidm.errors import MissingExtraError

if TYPE_CHECKING:
    from tidm.edge_agent.sources.decoders.quarantine import FieldPolicy

__all__ = ["JsonDecoder", "JsonDecoderSettings", "JsonSignal", "compile_path"]

# What the quarantine keeps in place of a field it may not keep in clear.
DROPPED_MARK = "<dropped by policy>"
UNKNOWN_MARK = "<redacted: not a collected field>"

Location = tuple[str | int, ...]

TimestampUnit = Literal["auto", "iso", "s", "ms", "us", "ns"]

_MISSING: Any = object()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
# datetime's range (years 1..9999) in µs since the epoch: anything outside is not a time.
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999
_SCALE = {"s": 1_000_000.0, "ms": 1_000.0, "us": 1.0, "ns": 0.001}
_INT_MUL = {"s": 1_000_000, "ms": 1_000, "us": 1}
_MAX_TEXT = 4096
_MAX_REJECTS = 20  # per payload: enough to explain it, not a second copy of a huge bad batch

Getter = Callable[[Any], Any]


def _jsonpath() -> Any:
    try:
        import jsonpath
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(extra="mqtt", module="python-jsonpath") from exc
    return jsonpath


def _keys_getter(keys: tuple[str | int, ...]) -> Getter:
    if len(keys) == 1 and isinstance(keys[0], str):
        key = keys[0]

        def get_one(obj: Any) -> Any:
            return obj.get(key, _MISSING) if type(obj) is dict else _MISSING

        return get_one

    def get_chain(obj: Any) -> Any:
        for key in keys:
            if type(key) is str:
                if type(obj) is not dict:
                    return _MISSING
                obj = obj.get(key, _MISSING)
                if obj is _MISSING:
                    return _MISSING
            else:
                if type(obj) is not list:
                    return _MISSING
                try:
                    obj = obj[key]  # type: ignore[index]  # an int here: names were handled above
                except IndexError:
                    return _MISSING
        return obj

    return get_chain


def compile_path(path: str) -> Getter:
    """A function returning the first match of JSONPath `path` in a document, or a sentinel.

    Raises ValueError naming the path when it is not valid JSONPath.
    """
    jsonpath = _jsonpath()
    try:
        compiled = jsonpath.compile(path)
    except jsonpath.JSONPathError as exc:
        msg = f"invalid JSONPath {path!r}: {str(exc).splitlines()[0]}"
        raise ValueError(msg) from exc
    keys: list[str | int] = []
    simple = compiled.singular_query() and type(compiled).__name__ == "JSONPath"
    if simple:
        for segment in compiled.segments:
            if type(segment).__name__ != "JSONPathChildSegment" or len(segment.selectors) != 1:
                simple = False
                break
            selector = segment.selectors[0]
            kind = type(selector).__name__
            if kind == "NameSelector":
                keys.append(str(selector.name))
            elif kind == "IndexSelector" and int(selector.index) >= 0:
                keys.append(int(selector.index))
            else:
                simple = False
                break
    if simple:
        return _keys_getter(tuple(keys))

    def get_general(obj: Any) -> Any:
        match = compiled.match(obj)
        return _MISSING if match is None else match.obj

    return get_general


def _check_path(path: str | None) -> str | None:
    if path is not None:
        compile_path(path)
    return path


class JsonSignal(BaseModel):
    """One signal of a wide record: its id (AAS idShort path) and the JSONPath of its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: str = Field(min_length=1)
    path: str
    # A required signal missing from a record rejects that record; optional ones are simply absent.
    required: bool = False

    _valid_path = field_validator("path")(_check_path)


class JsonDecoderSettings(BaseModel):
    """How to read JSON payloads of one subscription."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["json"] = "json"
    # Where the asset id comes from: fixed, a topic level (0-based, negative from the end) or the record.
    asset_id: str | None = None
    asset_topic_level: int | None = None
    asset_path: str | None = None
    # JSONPath selecting the records; by default a top-level array's items, else the payload itself.
    records: str | None = None
    signals: list[JsonSignal] = Field(default_factory=list)
    signal_path: str | None = None
    value_path: str | None = None
    # Without a timestamp path every sample gets the receive time.
    timestamp_path: str | None = None
    timestamp_unit: TimestampUnit = "auto"
    # ISO 8601 times without an offset are ambiguous on a plant floor; reject them unless told they are UTC.
    naive_is_utc: bool = False

    _valid_paths = field_validator("asset_path", "records", "signal_path", "value_path", "timestamp_path")(
        _check_path
    )

    @model_validator(mode="after")
    def _consistent(self) -> JsonDecoderSettings:
        sources = [x is not None for x in (self.asset_id, self.asset_topic_level, self.asset_path)]
        if sum(sources) != 1:
            msg = "set exactly one of asset_id, asset_topic_level, asset_path"
            raise ValueError(msg)
        long_form = self.signal_path is not None or self.value_path is not None
        if long_form and (self.signal_path is None or self.value_path is None):
            msg = "signal_path and value_path go together"
            raise ValueError(msg)
        if long_form == bool(self.signals):
            msg = "set either signals (wide records) or signal_path + value_path (long records)"
            raise ValueError(msg)
        return self


def to_us(raw: Any, unit: TimestampUnit, naive_is_utc: bool) -> int | str:
    """A payload timestamp in µs since the epoch, or the reason it is not one."""
    if type(raw) is str:
        if unit not in ("auto", "iso"):
            return f"expected an epoch number in {unit}, got text"
        try:
            parsed = dt.datetime.fromisoformat(raw)
        except ValueError:
            return "not an ISO 8601 time"
        if parsed.tzinfo is None:
            if not naive_is_utc:
                return "ISO 8601 time without a UTC offset"
            parsed = parsed.replace(tzinfo=dt.UTC)
        try:
            return (parsed - _EPOCH) // _US
        except OverflowError:
            return "time out of range"
    rt = type(raw)
    if rt is int or rt is float:
        if unit == "iso":
            return "expected an ISO 8601 time, got a number"
        if rt is float and not math.isfinite(raw):
            return "time is not finite"
        if unit == "auto":
            magnitude = abs(raw)
            unit = (
                "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
            )
        if rt is int:
            # Integer arithmetic: exact, and no OverflowError for absurdly large numbers.
            us = raw * _INT_MUL[unit] if unit != "ns" else raw // 1000
        else:
            scaled = raw * _SCALE[unit]
            if not -1e19 < scaled < 1e19:
                return "time out of range"
            us = int(scaled)
        if not _MIN_US <= us <= _MAX_US:
            return "time out of range"
        return int(us)
    return f"time is a {type(raw).__name__}"


class JsonDecoder:
    """Decodes JSON payloads per `JsonDecoderSettings`."""

    def __init__(self, settings: JsonDecoderSettings) -> None:
        self.settings = settings
        self._asset_path = compile_path(settings.asset_path) if settings.asset_path else None
        self._ts_path = compile_path(settings.timestamp_path) if settings.timestamp_path else None
        self._signals = [(s.signal, compile_path(s.path), s.required) for s in settings.signals]
        self._signal_path = compile_path(settings.signal_path) if settings.signal_path else None
        self._value_path = compile_path(settings.value_path) if settings.value_path else None
        self._records: Callable[[Any], list[Any]] | None = None
        if settings.records is not None:
            compiled = _jsonpath().compile(settings.records)
            self._records = compiled.findall

    def decode(self, topic: str, payload: bytes, recv_us: int) -> Decoded:
        """Samples of every record in `payload`; rejected records and payloads as `Reject`s."""
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError for absurd nesting.
            return [], [Reject("json.invalid", f"payload is not JSON: {str(exc)[:200]}")]
        if self._records is not None:
            try:
                records = self._records(doc)
            except Exception as exc:  # noqa: BLE001 - python-jsonpath may raise on odd documents
                return [], [Reject("json.records", f"records path failed: {exc}"[:300])]
            if not records:
                return [], [Reject("json.records", f"no records at {self.settings.records}")]
        elif type(doc) is list:
            records = doc
            if not records:
                return [], [Reject("json.records", "empty array")]
        else:
            records = [doc]

        asset_fixed = self.settings.asset_id
        if self.settings.asset_topic_level is not None:
            asset_fixed = topic_level(topic, self.settings.asset_topic_level)
            if asset_fixed is None:
                level = self.settings.asset_topic_level
                return [], [Reject("json.asset", f"topic {topic!r} has no level {level}")]
        samples: list[RawSample] = []
        rejects: list[Reject] = []
        append = samples.append
        asset_path = self._asset_path
        ts_path = self._ts_path
        unit = self.settings.timestamp_unit
        naive_is_utc = self.settings.naive_is_utc
        signals = self._signals
        long_form = self._signal_path is not None
        ts_cache: dict[str, int | str] = {}
        int_mul = _INT_MUL.get(unit, 0)
        for index, record in enumerate(records):
            asset = asset_fixed
            if asset_path is not None:
                asset = asset_path(record)
                if type(asset) is not str or not asset:
                    _add(
                        rejects,
                        Reject("json.asset", f"record {index}: no asset id at {self.settings.asset_path}"),
                    )
                    continue
            ts = recv_us
            if ts_path is not None:
                raw_ts = ts_path(record)
                if raw_ts is _MISSING:
                    _add(
                        rejects,
                        Reject(
                            "json.timestamp", f"record {index}: no time at {self.settings.timestamp_path}"
                        ),
                    )
                    continue
                got: Any
                if type(raw_ts) is int and int_mul:
                    # The hot case (epoch integers in a declared unit), inline.
                    got = raw_ts * int_mul
                    if not _MIN_US <= got <= _MAX_US:
                        got = "time out of range"
                elif type(raw_ts) is str:
                    # ISO parsing is the costly case, and batched records often share a time.
                    got = ts_cache.get(raw_ts)
                    if got is None:
                        got = ts_cache[raw_ts] = to_us(raw_ts, unit, naive_is_utc)
                else:
                    got = to_us(raw_ts, unit, naive_is_utc)
                if type(got) is str:
                    _add(rejects, Reject("json.timestamp", f"record {index}: {got}"))
                    continue
                ts = got
            assert asset is not None  # noqa: S101 - one of the three asset sources is set (validated)
            if long_form:
                self._long(record, index, asset, ts, recv_us, append, rejects)
                continue
            found = 0
            for signal, get, required in signals:
                raw = get(record)
                rt = type(raw)
                if rt is float:
                    append(RawSample(asset, signal, ts, recv_us, raw, None, STATUS_GOOD))
                    found += 1
                    continue
                if raw is _MISSING or raw is None:
                    if required:
                        _add(
                            rejects,
                            Reject("json.missing", f"record {index}: required signal {signal!r} missing"),
                        )
                    continue
                value = _value(raw)
                if isinstance(value, str):
                    _add(rejects, Reject("json.value_type", f"record {index}: {signal!r} {value}"))
                    continue
                number, text = value
                append(RawSample(asset, signal, ts, recv_us, number, text, STATUS_GOOD))
                found += 1
            if found == 0:
                _add(
                    rejects,
                    Reject("json.no_signals", f"record {index}: none of the configured signals found"),
                )
        return samples, rejects

    def redact(self, topic: str, payload: bytes, recv_us: int, policy: FieldPolicy) -> bytes | None:
        """The payload with `policy` applied to each configured signal's value (as `decode` finds
        it); the asset id, signal name and time fields kept; every other field replaced by a marker."""
        from tidm.edge_agent.sources.decoders.quarantine import DROPPED, FieldValue

        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        s = self.settings
        asset_fixed = s.asset_id
        if s.asset_topic_level is not None:
            asset_fixed = topic_level(topic, s.asset_topic_level)
        records = self._located_records(doc)
        if records is None:
            return None
        clear: set[Location] = set()
        fields: list[FieldValue] = []
        where: list[Location] = []
        unknown: set[Location] = set()
        for prefix, record in records:
            asset = asset_fixed
            if s.asset_path is not None:
                asset = self._keep_clear(s.asset_path, record, prefix, clear)
            if s.timestamp_path is not None:
                self._keep_clear(s.timestamp_path, record, prefix, clear)
            pairs: list[tuple[str | None, str]] = []
            if s.signal_path is not None and s.value_path is not None:
                pairs.append((self._keep_clear(s.signal_path, record, prefix, clear), s.value_path))
            else:
                pairs.extend((js.signal, js.path) for js in s.signals)
            for signal, path in pairs:
                found = _locate(path, record)
                if found is None:
                    continue
                loc, raw = found
                if asset is None or signal is None:
                    unknown.add(prefix + loc)  # whose value this is is unknown: no policy to apply
                    continue
                fields.append(FieldValue(asset, signal, raw, recv_us))
                where.append(prefix + loc)
        rewrites: dict[Location, Any] = {}
        for loc, kept in zip(where, policy.rewrite(fields), strict=True):
            rewrites[loc] = DROPPED_MARK if kept is DROPPED else kept
        for loc in unknown:
            rewrites[loc] = UNKNOWN_MARK
        return json.dumps(_rebuild(doc, (), rewrites, clear), separators=(",", ":")).encode("utf-8")

    def _located_records(self, doc: Any) -> list[tuple[Location, Any]] | None:
        if self.settings.records is not None:
            try:
                matches = _jsonpath().compile(self.settings.records).finditer(doc)
                return [(tuple(m.parts), m.obj) for m in matches]
            except Exception:  # noqa: BLE001 - python-jsonpath may raise on odd documents
                return None
        if type(doc) is list:
            return [((i,), r) for i, r in enumerate(doc)]
        return [((), doc)]

    @staticmethod
    def _keep_clear(path: str, record: Any, prefix: Location, clear: set[Location]) -> str | None:
        """Mark the (text or number) field at `path` as kept in clear; its text, if it is text."""
        found = _locate(path, record)
        if found is None or type(found[1]) not in (str, int, float):
            return None
        clear.add(prefix + found[0])
        return found[1] if type(found[1]) is str and found[1] else None

    def _long(
        self,
        record: Any,
        index: int,
        asset: str,
        ts: int,
        recv_us: int,
        append: Callable[[RawSample], None],
        rejects: list[Reject],
    ) -> None:
        assert self._signal_path is not None and self._value_path is not None  # noqa: S101
        signal = self._signal_path(record)
        if type(signal) is not str or not signal:
            _add(
                rejects,
                Reject("json.signal", f"record {index}: no signal name at {self.settings.signal_path}"),
            )
            return
        raw = self._value_path(record)
        if raw is _MISSING or raw is None:
            _add(rejects, Reject("json.missing", f"record {index}: no value at {self.settings.value_path}"))
            return
        value = _value(raw)
        if isinstance(value, str):
            _add(rejects, Reject("json.value_type", f"record {index}: {signal!r} {value}"))
            return
        number, text = value
        append(RawSample(asset, signal, ts, recv_us, number, text, STATUS_GOOD))


def _add(rejects: list[Reject], reject: Reject) -> None:
    if len(rejects) < _MAX_REJECTS:
        rejects.append(reject)
    elif len(rejects) == _MAX_REJECTS:
        rejects.append(Reject(reject.reason, "... further rejects of this payload not listed"))


def _value(raw: Any) -> tuple[float | None, str | None] | str:
    """(value, text) of a JSON scalar, or why it is not a sample value."""
    rt = type(raw)
    if rt is float:
        return raw, None
    if rt is int:
        try:
            return float(raw), None
        except OverflowError:
            return "is an integer too large for float64"
    if rt is bool:
        return (1.0 if raw else 0.0), None
    if rt is str:
        if len(raw) > _MAX_TEXT:
            return f"is text longer than {_MAX_TEXT} characters"
        return None, raw
    return f"is a {'JSON object' if rt is dict else 'JSON array' if rt is list else rt.__name__}"


def _locate(path: str, record: Any) -> tuple[Location, Any] | None:
    """Where the first match of `path` is in `record` (as `compile_path` finds it) and its value."""
    try:
        match = _jsonpath().compile(path).match(record)
    except Exception:  # noqa: BLE001 - python-jsonpath may raise on odd documents
        return None
    if match is None:
        return None
    return tuple(match.parts), match.obj


def _rebuild(node: Any, loc: Location, rewrites: dict[Location, Any], clear: set[Location]) -> Any:
    if loc in rewrites:
        return rewrites[loc]
    if loc in clear:
        return node
    if type(node) is dict:
        return {k: _rebuild(v, (*loc, k), rewrites, clear) for k, v in node.items()}
    if type(node) is list:
        return [_rebuild(v, (*loc, i), rewrites, clear) for i, v in enumerate(node)]
    return UNKNOWN_MARK
