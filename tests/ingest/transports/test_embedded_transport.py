"""What only the embedded log does: its file format, crash tolerance, locking and partitioner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.ingest.transports.helpers import drain, running, wait_assigned

from tidm.ingest.transports import (
    CorruptLogError,
    EmbeddedTransport,
    TopicPartition,
    TransportClosedError,
    UnknownTopicError,
    murmur2,
    partition_for_key,
)
from tidm.ingest.transports.embedded import _encode

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (the Java client's own vectors), plus a binary key
# from a JVM-generated table (sarama's partitioner tests).
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (bytes([12, 42, 56, 24, 109, 111]), 274204207),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_MURMUR2)
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected
    assert partition_for_key(key, 1 << 31) == expected & 0x7FFFFFFF


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=500))
def test_partition_for_key_matches_aiokafka(key: bytes, partitions: int) -> None:
    aiokafka_partitioner = pytest.importorskip("aiokafka.partitioner")
    everything = list(range(partitions))
    assert partition_for_key(key, partitions) == aiokafka_partitioner.DefaultPartitioner()(
        key, everything, everything
    )


def _segment(root: Path, topic: str, partition: int = 0) -> Path:
    return root / topic / f"{partition}.log"


def _frame(value: bytes) -> bytes:
    return b"".join(_encode(b"k", value, [("h", b"v")], 1_700_000_000_000))


async def _send_all(transport: EmbeddedTransport, topic: str, values: list[bytes]) -> None:
    async with running(transport.producer()) as producer:
        for v in values:
            await producer.send(topic, v, key=b"k")


TORN_TAILS = {
    "half a frame": _frame(b"x" * 1000)[:500],
    "a header only": _frame(b"x" * 1000)[:8],
    "part of a header": _frame(b"x" * 1000)[:5],
    "a whole frame with a bad CRC": _frame(b"x" * 1000)[:-1] + b"!",
    "zeros (a power cut after the size grew)": bytes(4096),
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
async def test_a_torn_tail_is_ignored_by_readers_and_cut_by_the_next_writer(
    tmp_path: Path, tail: bytes
) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["t"], partitions=1)
    await _send_all(transport, "t", [b"a", b"b", b"c"])
    segment = _segment(tmp_path, "t")
    with segment.open("ab") as f:  # what a crash mid-append leaves
        f.write(tail)

    async with running(transport.consumer(["t"], group_id="g")) as consumer:
        assert [m.value for m in await drain(consumer, 3)] == [b"a", b"b", b"c"]
        assert await consumer.getmany(timeout_ms=50) == {}  # the torn record is not a record

        async with running(transport.producer()) as producer:
            delivery = await producer.send("t", b"d", key=b"k")
        assert delivery.offset == 3
        (after,) = await drain(consumer, 1)
        assert (after.offset, after.value) == (3, b"d")
    # nothing of the torn tail is left: the file is exactly four frames
    async with running(EmbeddedTransport(tmp_path).consumer(["t"], group_id="fresh")) as fresh:
        assert [m.value for m in await drain(fresh, 4)] == [b"a", b"b", b"c", b"d"]


async def test_the_writer_truncates_exactly_the_torn_bytes(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await _send_all(transport, "t", [b"a"])
    segment = _segment(tmp_path, "t")
    size_after_one = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(_frame(b"torn" * 100)[:77])
    await _send_all(transport, "t", [b"a"])
    assert segment.stat().st_size == 2 * size_after_one


async def test_corruption_inside_the_log_is_an_error_naming_the_record(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await _send_all(transport, "t", [b"first", b"second", b"third"])
    segment = _segment(tmp_path, "t")
    data = bytearray(segment.read_bytes())
    where = data.index(b"second")
    data[where] ^= 0xFF  # bit rot in the middle record
    segment.write_bytes(bytes(data))
    async with running(transport.consumer(["t"], group_id="g")) as consumer:
        with pytest.raises(CorruptLogError, match=r"t\[0\]@1: CRC mismatch"):
            await drain(consumer, 3)


async def test_corruption_is_not_truncated_away_by_a_writer(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await _send_all(transport, "t", [b"first", b"second"])
    segment = _segment(tmp_path, "t")
    data = bytearray(segment.read_bytes())
    data[data.index(b"second")] ^= 0xFF  # a bad frame with more bytes after it: not one torn append
    data += _frame(b"x" * 100)[:50]
    segment.write_bytes(bytes(data))
    async with running(transport.producer()) as producer:
        with pytest.raises(CorruptLogError, match=r"t\[0\]@1: CRC mismatch"):
            await producer.send("t", b"third")
    assert segment.read_bytes() == bytes(data)


_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from tidm.ingest.transports import EmbeddedTransport

    async def main(root, name, count):
        producer = EmbeddedTransport(root).producer()
        await producer.start()
        for i in range(count):
            await producer.send("shared", f"{name}:{i}".encode(), key=b"same-key")
        await producer.stop()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_two_processes_append_to_one_partition(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["shared"], partitions=1)
    count = 200
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, str(tmp_path), name, str(count))
        for name in ("p1", "p2")
    ]
    # meanwhile this process appends too, and reads while the others write
    async with running(transport.producer()) as producer:
        for i in range(count):
            await producer.send("shared", f"p0:{i}".encode(), key=b"same-key")
    assert [await p.wait() for p in procs] == [0, 0]
    async with running(transport.consumer(["shared"], group_id="g")) as consumer:
        messages = await drain(consumer, 3 * count)
        assert await consumer.getmany(timeout_ms=50) == {}
    assert [m.offset for m in messages] == list(range(3 * count))
    for name in ("p0", "p1", "p2"):  # each writer's records are whole and in its order
        mine = [m.value.decode() for m in messages if m.value.startswith(name.encode())]
        assert mine == [f"{name}:{i}" for i in range(count)]


async def test_only_one_member_of_a_group_owns_the_partitions_until_it_leaves(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["t"], partitions=2)
    await _send_all(transport, "t", [b"a", b"b"])
    tp = TopicPartition("t", partition_for_key(b"k", 2))
    events: list[tuple[str, frozenset[TopicPartition]]] = []

    async def assigned(tps: frozenset[TopicPartition]) -> None:
        events.append(("assign", tps))

    first = transport.consumer(["t"], group_id="g")
    second = transport.consumer(["t"], group_id="g", on_assign=assigned)
    async with running(second):
        async with running(first):
            await drain(first, 1)
            await first.commit({tp: 1})
            assert len(first.assignment()) == 2
            assert await second.getmany(timeout_ms=100) == {}
            assert second.assignment() == frozenset()
        # the owner left: the standby takes over from the committed offset
        (message,) = await drain(second, 1)
        assert (message.offset, message.value) == (1, b"b")
        assert events == [("assign", frozenset({TopicPartition("t", 0), TopicPartition("t", 1)}))]
    offsets = json.loads((tmp_path / "_groups" / "g.json").read_text())["offsets"]
    assert offsets == {"t": {str(tp.partition): 1}}
    assert not [p.name for p in (tmp_path / "_groups").iterdir() if p.name.endswith(".tmp")]


_OWNER = textwrap.dedent(
    """
    import asyncio, sys
    from tidm.ingest.transports import EmbeddedTransport

    async def main(root):
        consumer = EmbeddedTransport(root).consumer(["t"], group_id="g")
        await consumer.start()
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=50)
        print("owner", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_standby_takes_over_when_the_owning_process_dies(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await _send_all(transport, "t", [b"a"])
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OWNER, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert owner.stdout is not None
    try:
        assert await asyncio.wait_for(owner.stdout.readline(), timeout=60) == b"owner\n"
        async with running(transport.consumer(["t"], group_id="g")) as standby:
            assert await standby.getmany(timeout_ms=100) == {}
            owner.kill()  # no clean stop: the kernel releases the dead process's lock
            await owner.wait()
            assert [m.value for m in await drain(standby, 1)] == [b"a"]
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()


async def test_a_consumer_follows_topics_created_after_it_started(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    revoked: list[frozenset[TopicPartition]] = []

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)

    async with running(transport.consumer(["a", "b"], group_id="g", on_revoke=on_revoke)) as consumer:
        assert await consumer.getmany(timeout_ms=20) == {}
        await _send_all(transport, "a", [b"1"])
        assert [m.value for m in await drain(consumer, 1)] == [b"1"]
        await _send_all(transport, "b", [b"2"])
        # Eager, like Kafka: all partitions are revoked, then all assigned again from the committed
        # offsets; nothing was committed, so "a" is read again.
        assert sorted(m.value for m in await drain(consumer, 2)) == [b"1", b"2"]
        assert consumer.assignment() == {TopicPartition("a", 0), TopicPartition("b", 0)}
    assert revoked == [frozenset({TopicPartition("a", 0)})]


async def test_an_exception_in_a_callback_surfaces_from_getmany(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["t"], partitions=1)

    async def broken(tps: frozenset[TopicPartition]) -> None:
        raise RuntimeError("rewind failed")

    async with running(transport.consumer(["t"], group_id="g", on_assign=broken)) as consumer:
        with pytest.raises(RuntimeError, match="rewind failed"):
            await consumer.getmany(timeout_ms=10)


async def test_keyless_messages_go_round_robin(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["t"], partitions=3)
    async with running(transport.producer()) as producer:
        partitions = [(await producer.send("t", b"x")).partition for _ in range(6)]
    assert partitions == [0, 1, 2, 0, 1, 2]


async def test_concurrent_sends_land_in_call_order(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    async with running(transport.producer()) as producer:
        deliveries = await asyncio.gather(*(producer.send("t", b"%d" % i, key=b"k") for i in range(50)))
    assert [d.offset for d in deliveries] == list(range(50))


async def test_topics_are_created_on_first_send_unless_disabled(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path / "auto", partitions=3)
    await _send_all(transport, "implicit", [b"x"])
    assert json.loads((tmp_path / "auto" / "implicit" / "partitions.json").read_text())["partitions"] == 3

    strict = EmbeddedTransport(tmp_path / "strict", auto_create_topics=False)
    async with running(strict.producer()) as producer:
        with pytest.raises(UnknownTopicError, match="missing"):
            await producer.send("missing", b"x")


async def test_reading_resumes_incrementally_across_many_appends(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    async with (
        running(transport.producer()) as producer,
        running(transport.consumer(["t"], group_id="g")) as consumer,
    ):
        seen = []
        for round_ in range(20):
            for i in range(round_):
                await producer.send("t", f"{round_}.{i}".encode())
            seen += await drain(consumer, round_)
        assert [m.offset for m in seen] == list(range(sum(range(20))))
        consumer.seek(TopicPartition("t", 0), 100)
        assert (await drain(consumer, 1))[0].offset == 100


async def test_a_position_past_the_end_resets_to_the_earliest(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await _send_all(transport, "t", [b"a", b"b"])
    async with running(transport.consumer(["t"], group_id="g")) as consumer:
        await drain(consumer, 2)
        consumer.seek(TopicPartition("t", 0), 10)  # like Kafka with auto_offset_reset=earliest
        assert [m.offset for m in await drain(consumer, 2)] == [0, 1]


async def test_stop_wakes_a_waiting_getmany_and_stopped_producers_refuse(tmp_path: Path) -> None:
    transport = EmbeddedTransport(tmp_path)
    await transport.ensure_topics(["t"], partitions=1)
    consumer = transport.consumer(["t"], group_id="g")
    await consumer.start()
    await wait_assigned(consumer)
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=60_000))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(consumer.stop(), timeout=5)
    assert await asyncio.wait_for(waiting, timeout=5) == {}

    producer = transport.producer()
    await producer.start()
    await producer.stop()
    with pytest.raises(TransportClosedError):
        await producer.send("t", b"x")


def test_importing_the_transports_does_not_import_aiokafka() -> None:
    code = "import sys, tidm.ingest.transports; assert 'aiokafka' not in sys.modules, 'aiokafka imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_frame_layout_is_the_documented_one() -> None:
    frame = _frame(b"value")
    length, crc = int.from_bytes(frame[:4], "big"), int.from_bytes(frame[4:8], "big")
    body = frame[8:]
    assert length == len(body) and crc == zlib.crc32(body)
    assert body == (
        b"\x01"  # format
        + (1_700_000_000_000).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + (5).to_bytes(4, "big")
        + b"k"
        + b"value"
        + (1).to_bytes(2, "big")
        + (1).to_bytes(2, "big")
        + (1).to_bytes(4, "big")
        + b"h"
        + b"v"
    )
