"""Helpers to drive producers and consumers in the transport tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from tidm.ingest.transports import Consumer, Message, TopicPartition


class _Startable(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


@asynccontextmanager
async def running(thing: S) -> AsyncIterator[S]:
    """Start a producer or consumer, and stop it whatever happens."""
    await thing.start()
    try:
        yield thing
    finally:
        await thing.stop()


async def drain(consumer: Consumer, count: int, *, timeout_s: float = 60.0) -> list[Message]:
    """Fetch until `count` messages arrived (Kafka needs a moment to join the group), in arrival order."""
    out: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < count:
        assert loop.time() < deadline, f"got {len(out)} of {count} messages in {timeout_s} s"
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            out.extend(records)
    return out


async def wait_assigned(consumer: Consumer, *, timeout_s: float = 60.0) -> frozenset[TopicPartition]:
    """Poll an empty topic until the group gives this member partitions; return them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not consumer.assignment():
        assert loop.time() < deadline, "no partitions assigned"
        assert await consumer.getmany(timeout_ms=100) == {}
    return consumer.assignment()


def by_partition(messages: list[Message]) -> dict[TopicPartition, list[Message]]:
    out: dict[TopicPartition, list[Message]] = {}
    for m in messages:
        out.setdefault(m.tp, []).append(m)
    return out
