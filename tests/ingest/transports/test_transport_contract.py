"""The behaviour every transport promises (base.py), run on the embedded log and on the real Kafka."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest
from tests.ingest.transports.helpers import by_partition, drain, running, wait_assigned

from tidm.ingest.transports import (
    MAX_MESSAGE_BYTES,
    CommitFailedError,
    Consumer,
    Delivery,
    MessageTooLargeError,
    NotAssignedError,
    Producer,
    TopicPartition,
    Transport,
    TransportClosedError,
    TransportConfigError,
    partition_for_key,
)


def test_implements_the_protocols(transport: Transport) -> None:
    assert isinstance(transport, Transport)
    assert isinstance(transport.producer(), Producer)
    assert isinstance(transport.consumer(["t"], group_id="g"), Consumer)


async def test_send_returns_where_the_message_landed(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("send")
    await transport.ensure_topics([topic], partitions=3)
    async with running(transport.producer()) as producer:
        first = await producer.send(topic, b"v1", key=b"pump-1")
        second = await producer.send(topic, b"v2", key=b"pump-1")
    assert first == Delivery(topic, partition_for_key(b"pump-1", 3), 0)
    assert second == Delivery(topic, first.partition, 1)


async def test_a_key_keeps_its_partition_and_its_order(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("affinity")
    await transport.ensure_topics([topic], partitions=4)
    keys = [f"asset-{i}".encode() for i in range(6)]
    async with running(transport.producer()) as producer:
        deliveries = [
            await producer.send(topic, f"{key.decode()}:{seq}".encode(), key=key)
            for seq in range(5)
            for key in keys
        ]
    # the same partition as Kafka's default partitioner (murmur2) would pick
    for d, key in zip(deliveries, keys * 5, strict=True):
        assert d.partition == partition_for_key(key, 4)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        messages = await drain(consumer, len(deliveries))
    for tp, records in by_partition(messages).items():
        assert [m.offset for m in records] == list(range(len(records)))  # dense, in offset order
        assert {partition_for_key(m.key or b"", 4) for m in records} == {tp.partition}
    for key in keys:
        values = [m.value for m in messages if m.key == key]
        assert values == [f"{key.decode()}:{seq}".encode() for seq in range(5)]


async def test_headers_keys_and_values_round_trip(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("headers")
    await transport.ensure_topics([topic], partitions=1)
    headers = [
        ("tidm-sha256", bytes(range(32))),
        ("empty", b""),
        ("größe", b"\x00\xff"),
        ("tidm-sha256", b"last"),
    ]
    async with running(transport.producer()) as producer:
        await producer.send(topic, b"with headers", key=b"k", headers=headers)
        await producer.send(topic, b"", key=None)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        first, second = await drain(consumer, 2)
    assert (first.topic, first.partition, first.offset) == (topic, 0, 0)
    assert first.key == b"k" and first.value == b"with headers"
    assert first.headers == tuple(headers)
    assert first.header("tidm-sha256") == b"last" and first.header("missing") is None
    assert abs(first.timestamp_ms / 1000 - time.time()) < 300
    assert second.key is None and second.value == b"" and second.headers == ()


async def test_a_new_member_resumes_from_the_committed_offset(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic, group = unique_name("resume"), unique_name("g")
    tp = TopicPartition(topic, 0)
    await transport.ensure_topics([topic], partitions=1)
    async with running(transport.producer()) as producer:
        for i in range(6):
            await producer.send(topic, b"m%d" % i)
    async with running(transport.consumer([topic], group_id=group)) as first:
        assert await first.committed(tp) is None
        assert [m.offset for m in await drain(first, 6)] == list(range(6))
        await first.commit({tp: 4})
        assert await first.committed(tp) == 4
    async with running(transport.consumer([topic], group_id=group)) as second:
        assert await second.committed(tp) == 4
        resumed = await drain(second, 2)
        assert [(m.offset, m.value) for m in resumed] == [(4, b"m4"), (5, b"m5")]
        assert await second.getmany(timeout_ms=300) == {}


async def test_seek_rereads_from_an_offset(transport: Transport, unique_name: Callable[..., str]) -> None:
    topic = unique_name("seek")
    tp = TopicPartition(topic, 0)
    await transport.ensure_topics([topic], partitions=1)
    async with running(transport.producer()) as producer:
        for i in range(5):
            await producer.send(topic, b"m%d" % i)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        await drain(consumer, 5)
        consumer.seek(tp, 2)
        again = await drain(consumer, 3)
        assert [m.offset for m in again] == [2, 3, 4]
        consumer.seek(tp, 0)
        assert [m.value for m in await drain(consumer, 5)] == [b"m%d" % i for i in range(5)]
        with pytest.raises(NotAssignedError):
            consumer.seek(TopicPartition(topic, 7), 0)
        with pytest.raises(ValueError, match="negative"):
            consumer.seek(tp, -1)


async def test_on_assign_runs_before_the_first_fetch_and_may_seek(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("assign")
    tp = TopicPartition(topic, 0)
    await transport.ensure_topics([topic], partitions=1)
    async with running(transport.producer()) as producer:
        for i in range(4):
            await producer.send(topic, b"m%d" % i)
    assigned: list[frozenset[TopicPartition]] = []
    consumer: Consumer | None = None

    async def on_assign(partitions: frozenset[TopicPartition]) -> None:
        assigned.append(partitions)
        assert consumer is not None
        consumer.seek(tp, 3)  # a stream job rewinds (here: skips) on assignment

    consumer = transport.consumer([topic], group_id=unique_name("g"), on_assign=on_assign)
    async with running(consumer):
        (only,) = await drain(consumer, 1)
    assert assigned == [frozenset({tp})]
    assert only.offset == 3


async def test_getmany_returns_empty_after_its_timeout(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("empty")
    await transport.ensure_topics([topic], partitions=2)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        assert await wait_assigned(consumer) == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert await asyncio.wait_for(consumer.getmany(timeout_ms=250), timeout=30) == {}
        assert await consumer.getmany(timeout_ms=0) == {}


async def test_max_records_bounds_one_fetch(transport: Transport, unique_name: Callable[..., str]) -> None:
    topic = unique_name("bounded")
    await transport.ensure_topics([topic], partitions=1)
    async with running(transport.producer()) as producer:
        for i in range(10):
            await producer.send(topic, b"m%d" % i)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        seen: list[int] = []
        deadline = asyncio.get_running_loop().time() + 60
        while len(seen) < 10:
            assert asyncio.get_running_loop().time() < deadline
            batch = await consumer.getmany(timeout_ms=200, max_records=3)
            assert sum(len(r) for r in batch.values()) <= 3
            seen.extend(m.offset for records in batch.values() for m in records)
        assert seen == list(range(10))


async def test_large_messages_round_trip_up_to_the_limit(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("large")
    await transport.ensure_topics([topic], partitions=1)
    four_mib = os.urandom(4 * 1024 * 1024)
    at_limit = os.urandom(MAX_MESSAGE_BYTES - 3 - 6)  # key + value + header bytes == the limit
    async with running(transport.producer()) as producer:
        first = await producer.send(topic, four_mib, key=b"big")
        second = await producer.send(topic, at_limit, key=b"big", headers=[("h", b"12345")])
        with pytest.raises(MessageTooLargeError, match=topic):
            await producer.send(topic, at_limit + b"x", key=b"big", headers=[("h", b"12345")])
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        received = await drain(consumer, 2)
    assert [(m.offset, m.value == v) for m, v in zip(received, [four_mib, at_limit], strict=True)] == [
        (first.offset, True),
        (second.offset, True),
    ]


async def test_commit_of_an_unassigned_partition_fails(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("fenced")
    await transport.ensure_topics([topic], partitions=1)
    async with running(transport.consumer([topic], group_id=unique_name("g"))) as consumer:
        await wait_assigned(consumer)
        with pytest.raises(CommitFailedError, match="not assigned"):
            await consumer.commit({TopicPartition(topic, 5): 1})


async def test_use_before_start_and_bad_names_are_refused(
    transport: Transport, unique_name: Callable[..., str]
) -> None:
    producer = transport.producer()
    with pytest.raises(TransportClosedError):
        await producer.send(unique_name("t"), b"x")
    consumer = transport.consumer([unique_name("t")], group_id=unique_name("g"))
    with pytest.raises(TransportClosedError):
        await consumer.getmany(timeout_ms=0)
    with pytest.raises(TransportConfigError, match="invalid topic name"):
        await transport.ensure_topics(["no spaces/slashes"], partitions=1)
    with pytest.raises(TransportConfigError, match="invalid topic name"):
        transport.consumer([".."], group_id="g")


async def test_ensure_topics_is_idempotent(transport: Transport, unique_name: Callable[..., str]) -> None:
    topic = unique_name("idem")
    await transport.ensure_topics([topic], partitions=2)
    await transport.ensure_topics([topic, topic], partitions=5)  # exists: left as it is
    async with running(transport.producer()) as producer:
        partitions = {(await producer.send(topic, b"x", key=b"k%d" % i)).partition for i in range(40)}
    assert partitions == {0, 1}
