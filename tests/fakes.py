"""Small in-memory fakes of TIDM's own interfaces, for unit tests only."""

from __future__ import annotations

from collections.abc import Sequence

from tidm.ingest.transports.base import Delivery, Message


class MemoryProducer:
    """A Producer that appends to per-topic lists; partition 0 only."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Delivery:
        log = self.messages.setdefault(topic, [])
        log.append(Message(topic, 0, len(log), key, value, tuple(headers), 0))
        return Delivery(topic, 0, len(log) - 1)
