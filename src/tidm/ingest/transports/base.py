"""The transport contract: a partitioned, offset-addressed log of messages (Kafka's model).

The agent publishes through a `Producer`; stream jobs read through a `Consumer` in a group and
commit offsets only after their outputs are durable. Kafka and the embedded file log implement both.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Consumer",
    "Delivery",
    "Message",
    "Producer",
    "RebalanceCallback",
    "TopicPartition",
    "Transport",
    "is_valid_topic_name",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest message (key + value + headers) every transport accepts: room for 8 MiB batches."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def is_valid_topic_name(name: str) -> bool:
    """Kafka's rule for topic names (ASCII letters, digits, `.`, `_`, `-`; at most 249), for both logs."""
    return _TOPIC_NAME.fullmatch(name) is not None and name not in {".", ".."}


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True)
class Message:
    """One record as read back from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        found = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found

    def where(self) -> str:
        """Where this message sits, for error messages: topic[partition]@offset."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Delivery:
    """Where an acknowledged message landed."""

    topic: str
    partition: int
    offset: int


RebalanceCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]
"""Called with the partitions a consumer was just assigned, or is about to lose (Kafka's rebalance
listener), never with an empty set. Kafka rebalances eagerly: all partitions are revoked, then the
new set is assigned. An exception raised by a callback is raised again by the next `getmany`."""


@runtime_checkable
class Producer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Flush pending sends, then release resources."""
        ...

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Delivery:
        """Send one message and return once the log acknowledged it durably (acks=all)."""
        ...


@runtime_checkable
class Consumer(Protocol):
    """A member of a consumer group over one or more topics."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions currently assigned to this member."""
        ...

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Message]]:
        """Fetch the next messages of assigned partitions, in offset order per partition."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, per partition, the offset of the next message to read."""
        ...

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for `tp`, or None."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` from `offset` on the next fetch."""
        ...

    async def offsets_for_times(
        self, times: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """Per partition, the earliest offset whose message timestamp (ms) is >= the given one, or
        None when there is none (a stream job's look-back rewinds there)."""
        ...

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching `tps` until resumed (backpressure); the assignment is kept."""
        ...

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        """Fetch paused partitions again."""
        ...

    def paused(self) -> frozenset[TopicPartition]:
        """Partitions currently paused (a rebalance clears the pause of partitions it takes away)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A factory of producers and consumers over one log (a Kafka cluster or an embedded folder)."""

    async def ensure_topics(self, topics: Sequence[str], *, partitions: int) -> None:
        """Create the topics that do not exist yet (idempotent)."""
        ...

    def producer(self) -> Producer: ...

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> Consumer:
        """A member of `group_id` reading `topics` from the committed offsets (earliest when none).

        `on_assign` runs once partitions are assigned and before their first fetch (a stream job
        rewinds there with `seek`); `on_revoke` runs before partitions are taken away.
        """
        ...
