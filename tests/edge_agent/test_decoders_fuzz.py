"""Property-based fuzzing of every payload decoder (more than 100,000 generated inputs in total).

Hypothesis draws a payload (random bytes, JSON values, records, Sparkplug messages with random
metrics) and a seed; each example decodes that payload plus `MUTANTS` byte-level mutants of it
(truncated, flipped, inserted, deleted, spliced) made with `random.Random(seed)` -- cheap inputs
near the valid ones, where parsers break, without Hypothesis' per-example cost. Inputs decoded:
json wide 4,000 x 10 + json long 2,500 x 10 + json batches 1,000 + plain 1,500 x 10 (x 2 decoders)
+ sparkplug bytes 2,000 x 10 + sparkplug structured 2,000 x 10 + sparkplug sequences 600 x 8
+ through the source 300 x (1..30) = 125,800 and more.

Properties: no exception escapes a decoder; every sample is well formed; an input that yields no
sample is rejected with a reason (so the source quarantines and counts it); and, through the real
MqttSource processing path, every rejected payload lands in the quarantine file and its counters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidm.edge_agent.batcher import Batcher
from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders import (
    JsonDecoder,
    JsonDecoderSettings,
    JsonSignal,
    PlainDecoder,
    PlainDecoderSettings,
    Reject,
    SparkplugDecoder,
    SparkplugDecoderSettings,
)
from tidm.edge_agent.sources.decoders.sparkplug import payload_class
from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription, _Item

RECV = 1_800_000_000_000_000
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999


def fuzz(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


MUTANTS = 9


def variants(payload: bytes, seed: int, n: int = MUTANTS) -> list[bytes]:
    """`payload` and `n` mutants of it, deterministic in `seed`."""
    rng = random.Random(seed)
    out = [payload]
    for _ in range(n):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(6)
            i = rng.randint(0, len(data))
            if op == 0:
                del data[i:]
            elif op == 1 and data:
                data[min(i, len(data) - 1)] ^= rng.randint(1, 255)
            elif op == 2:
                data[i:i] = rng.randbytes(rng.randint(1, 4))
            elif op == 3:
                del data[i : i + rng.randint(1, 8)]
            elif op == 4:
                j = rng.randint(0, len(data))
                data[i:i] = data[min(i, j) : max(i, j)][:32]
            else:
                data[i : i + 4] = rng.choice(
                    [b"{", b"}", b"[", b'"', b"\\", b",", b":", b"\x00", b"\xff", b"1e999"]
                )
        out.append(bytes(data))
    return out


seeds = st.integers(0, 2**32 - 1)


def well_formed(samples: Sequence[RawSample], rejects: Sequence[Reject]) -> None:
    for s in samples:
        assert type(s.asset_id) is str and s.asset_id and type(s.signal) is str and s.signal
        assert type(s.ts_us) is int and MIN_US <= s.ts_us <= MAX_US
        assert s.recv_us == RECV
        assert s.value is None or type(s.value) is float
        assert s.value_text is None or type(s.value_text) is str
        assert 0 <= s.status_code < 2**32
    for r in rejects:
        assert r.reason and r.detail and r.reason != "decoder.internal_error"


def nothing_silently_lost(samples: Sequence[RawSample], rejects: Sequence[Reject]) -> None:
    well_formed(samples, rejects)
    assert samples or rejects, "an input that gives no sample must be rejected (and so quarantined)"


# ---------------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
timestamps = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.text(max_size=30)
    | json_values
)
records = st.fixed_dictionaries(
    {},
    optional={
        "ts": timestamps,
        "x": json_values,
        "y": json_scalars,
        "asset": st.text(max_size=6) | json_scalars,
    },
)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid payload, perhaps truncated, with flipped bytes or inserted garbage."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "flip", "insert"]))
        if op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


def json_payloads() -> st.SearchStrategy[bytes]:
    valid = (json_values | st.lists(records, max_size=8) | records).map(lambda v: json.dumps(v).encode())
    return st.binary(max_size=120) | valid | valid.flatmap(mutated)


WIDE = JsonDecoder(
    JsonDecoderSettings(
        asset_id="a",
        timestamp_path="$.ts",
        signals=[JsonSignal(signal="x", path="$.x"), JsonSignal(signal="y", path="$.y")],
    )
)
LONG = JsonDecoder(
    JsonDecoderSettings(
        asset_path="$.asset", records="$[*]", signal_path="$.y", value_path="$.x", timestamp_path="$.ts"
    )
)
PLAIN = PlainDecoder(PlainDecoderSettings(asset_topic_level=1, signal_topic_level=-1))
PLAIN_TEXT = PlainDecoder(PlainDecoderSettings(asset_id="a", signal="s", text=True))


# --------------------------------------------------------------------------------------- JSON


@fuzz(4_000)
@given(payload=json_payloads(), seed=seeds)
def test_fuzz_json_wide(payload: bytes, seed: int) -> None:
    for data in variants(payload, seed):
        samples, rejects = WIDE.decode("t", data, RECV)
        nothing_silently_lost(samples, rejects)
        assert {s.signal for s in samples} <= {"x", "y"}


@fuzz(2_500)
@given(payload=json_payloads(), seed=seeds)
def test_fuzz_json_long_batched(payload: bytes, seed: int) -> None:
    for data in variants(payload, seed):
        samples, rejects = LONG.decode("t", data, RECV)
        nothing_silently_lost(samples, rejects)


@fuzz(1_000)
@given(batch=st.lists(records, min_size=1, max_size=30))
def test_fuzz_json_batches_count_every_record(batch: list[dict[str, Any]]) -> None:
    """Each record is either a sample per signal found, or accounted for by a reject."""
    samples, rejects = WIDE.decode("t", json.dumps(batch).encode(), RECV)
    well_formed(samples, rejects)
    assert len(samples) <= 2 * len(batch)
    if len(rejects) <= 20:  # below the cap every rejected record is listed
        explained = {int(r.detail.split(":")[0].split()[1]) for r in rejects}
        for i, rec in enumerate(batch):
            has_scalar = any(
                k in rec and rec[k] is not None and not isinstance(rec[k], dict | list) for k in ("x", "y")
            )
            if not has_scalar or "ts" not in rec:
                assert i in explained, f"record {i} gave nothing and was not rejected"


# -------------------------------------------------------------------------------------- plain


@fuzz(15_000)
@given(
    payload=st.binary(max_size=40)
    | st.text(max_size=40).map(str.encode)
    | st.floats().map(lambda f: repr(f).encode()),
    topic=st.text(max_size=20),
)
def test_fuzz_plain(payload: bytes, topic: str) -> None:
    for decoder in (PLAIN, PLAIN_TEXT):
        samples, rejects = decoder.decode(topic, payload, RECV)
        nothing_silently_lost(samples, rejects)
        assert len(samples) + len(rejects) == 1


# ---------------------------------------------------------------------------------- Sparkplug

DATATYPES = st.integers(0, 40)
VALUE_FIELDS = {
    "int_value": st.integers(0, 2**32 - 1),
    "long_value": st.integers(0, 2**64 - 1),
    "float_value": st.floats(width=32),
    "double_value": st.floats(),
    "boolean_value": st.booleans(),
    "string_value": st.text(max_size=10),
    "bytes_value": st.binary(max_size=10),
}


@st.composite
def metrics(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if draw(st.booleans()):
        m["name"] = draw(
            st.sampled_from(["a", "b", "c", "bdSeq", "Node Control/Rebirth", ""]) | st.text(max_size=5)
        )
    if draw(st.booleans()):
        m["alias"] = draw(st.integers(0, 6) | st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        m["datatype"] = draw(DATATYPES)
    if draw(st.booleans()):
        m["timestamp"] = draw(st.integers(0, 2**64 - 1))
    for flag in ("is_historical", "is_null"):
        if draw(st.integers(0, 4)) == 0:
            m[flag] = True
    field = draw(st.sampled_from([None, *VALUE_FIELDS]))
    if field is not None:
        m[field] = draw(VALUE_FIELDS[field])
    return m


@st.composite
def sparkplug_payloads(draw: st.DrawFn) -> bytes:
    msg = payload_class()()
    if draw(st.booleans()):
        msg.timestamp = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        msg.seq = draw(st.integers(0, 300))
    for m in draw(st.lists(metrics(), max_size=6)):
        msg.metrics.add(**m)
    raw = bytes(msg.SerializeToString())
    return draw(st.just(raw) | mutated(raw))


TYPES = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD", "XDATA"]


@st.composite
def sparkplug_topics(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(TYPES))
    node = draw(st.sampled_from(["n1", "n2"]))
    device = draw(st.sampled_from(["", "/d1", "/d2"]))
    topic = f"spBv1.0/g/{kind}/{node}{device}"
    return draw(st.just(topic) | st.just(topic).flatmap(lambda t: st.text(max_size=3).map(lambda x: t + x)))


def _born() -> SparkplugDecoder:
    d = SparkplugDecoder(SparkplugDecoderSettings())
    birth = payload_class()(seq=0)
    for i, name in enumerate("abc"):
        birth.metrics.add(name=name, alias=i + 1, datatype=10, double_value=float(i))
    d.decode("spBv1.0/g/NBIRTH/n1", birth.SerializeToString(), RECV)
    d.decode(
        "spBv1.0/g/DBIRTH/n1/d1", payload_class()(seq=1, metrics=birth.metrics).SerializeToString(), RECV
    )
    return d


@fuzz(2_000)
@given(topic=sparkplug_topics(), payload=st.binary(max_size=80), seed=seeds)
def test_fuzz_sparkplug_random_bytes(topic: str, payload: bytes, seed: int) -> None:
    decoder = _born()
    for data in variants(payload, seed):
        samples, rejects = decoder.decode(topic, data, RECV)
        well_formed(samples, rejects)


@fuzz(2_000)
@given(topic=sparkplug_topics(), payload=sparkplug_payloads(), seed=seeds)
def test_fuzz_sparkplug_structured(topic: str, payload: bytes, seed: int) -> None:
    for data in variants(payload, seed):
        _check_structured(topic, data)


def _check_structured(topic: str, payload: bytes) -> None:
    decoder = _born()
    samples, rejects = decoder.decode(topic, payload, RECV)
    well_formed(samples, rejects)
    msg = payload_class()()
    try:
        msg.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - unparseable: it must have been rejected (or ignored as a command)
        assert rejects or "CMD" in topic
        return
    kind = topic.split("/")[2]
    if kind in ("NDATA", "DDATA") and not rejects and topic.count("/") in (3, 4):
        for m in msg.metrics:
            if isinstance(m.name, str) and not m.name and m.HasField("alias") and m.alias not in (1, 2, 3):
                raise AssertionError("a metric with an unknown alias was not rejected")


@fuzz(600)
@given(messages=st.lists(st.tuples(sparkplug_topics(), sparkplug_payloads()), min_size=8, max_size=8))
def test_fuzz_sparkplug_sequences(messages: list[tuple[str, bytes]]) -> None:
    """Births, deaths, rebirths and data in any order: the state machine never breaks."""
    decoder = SparkplugDecoder()
    for topic, payload in messages:
        samples, rejects = decoder.decode(topic, payload, RECV)
        well_formed(samples, rejects)
    assert decoder.stats.births >= decoder.stats.rebirths


# ----------------------------------------------------- through the source into the quarantine


def _source(folder: Path) -> MqttSource:
    return MqttSource(
        MqttSourceSettings(
            host="127.0.0.1",
            client_id="fuzz",
            quarantine_dir=folder,
            subscriptions=[
                MqttSubscription(topic="j/#", decoder=WIDE.settings),
                MqttSubscription(topic="p/+/+", decoder=PLAIN.settings),
                MqttSubscription(topic="spBv1.0/#", decoder=SparkplugDecoderSettings()),
            ],
        )
    )


@fuzz(300)
@given(
    batch=st.lists(
        st.tuples(st.just("j/x"), json_payloads())
        | st.tuples(st.just("p/a/s"), st.binary(max_size=12))
        | st.tuples(sparkplug_topics(), sparkplug_payloads()),
        min_size=1,
        max_size=30,
    )
)
def test_fuzz_every_rejected_payload_is_quarantined_and_counted(batch: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory(prefix="tidm-fuzz-") as folder:
        source = _source(Path(folder))
        emitted: list[RawSample] = []
        items = [_Item(0, topic, payload, 0, 0, RECV) for topic, payload in batch]
        # The decoders are stateful (Sparkplug): replay the same inputs on fresh ones for the oracle.
        oracle = _source(Path(folder) / "oracle")
        expected = []
        for item in items:
            index = oracle._decoder_for(item.topic)
            assert index is not None
            got, rejects = oracle._decoders[index].decode(item.topic, item.payload, RECV)
            if rejects:
                expected.append((item.topic, item.payload, sorted({r.reason for r in rejects}), len(rejects)))
        asyncio.run(source._process(lambda _n, s: emitted.extend(s), items))
        lines = source.quarantine.path.read_text().splitlines() if source.quarantine.path.exists() else []
        got_q = [json.loads(line) for line in lines]
        assert [(q["topic"], base64.b64decode(q["payload_b64"]), q["reasons"]) for q in got_q] == [
            e[:3] for e in expected
        ]
        assert source.stats.quarantine.payloads == len(expected)
        assert sum(source.stats.quarantine.rejects_by_reason.values()) == sum(e[3] for e in expected)
        assert source.stats.messages == len(items)
        # What was emitted fits the samples contract (the batcher builds the Arrow table).
        batcher = Batcher(max_rows=10**6, max_age_ms=1)
        batcher.add(source.name, emitted)
        for asset in batcher.due(force=True):
            batch_ = batcher.take(asset)
            assert batch_ is not None and batch_.table.num_rows > 0
