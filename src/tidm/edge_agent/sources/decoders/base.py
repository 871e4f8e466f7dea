"""The decoder contract: payload bytes in, (samples, rejects) out; a decoder never raises on input."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tidm.edge_agent.sources.base import RawSample

if TYPE_CHECKING:
    from tidm.edge_agent.sources.decoders.quarantine import FieldPolicy

__all__ = [
    "STATUS_BAD_NO_COMMUNICATION",
    "STATUS_BAD_NO_DATA",
    "STATUS_GOOD",
    "STATUS_GOOD_HISTORICAL",
    "Decoded",
    "Decoder",
    "Reject",
    "safe_decode",
    "topic_level",
]

log = logging.getLogger(__name__)

# OPC UA status codes (Part 4, 7.39) so that every source speaks the same quality language.
STATUS_GOOD = 0x0000_0000
# Good severity with InfoType=DataValue (bit 10) and HistorianBits=Raw: "a raw value from a historian".
# Used for Sparkplug `is_historical` metrics: they are real, late-delivered (store-and-forward) readings,
# so the quality stays good, but the flag survives in the status code for anyone who needs live-only data.
STATUS_GOOD_HISTORICAL = 0x0000_0400
STATUS_BAD_NO_DATA = 0x809B_0000
STATUS_BAD_NO_COMMUNICATION = 0x8031_0000


@dataclass(frozen=True, slots=True)
class Reject:
    """Why (part of) a payload could not be turned into samples.

    `reason` is a short stable key for counting (`json.invalid`, `sparkplug.unknown_alias`, ...);
    `detail` names what and where, for the quarantine file (never the payload itself).
    """

    reason: str
    detail: str


Decoded = tuple[list[RawSample], list[Reject]]


class Decoder(Protocol):
    """Turns one MQTT message into samples; bad input becomes `Reject`s, never an exception."""

    def decode(self, topic: str, payload: bytes, recv_us: int) -> Decoded:
        """The samples in `payload` (received on `topic` at `recv_us`) and what was rejected."""
        ...

    def redact(self, topic: str, payload: bytes, recv_us: int, policy: FieldPolicy) -> bytes | None:
        """`payload` as the quarantine may keep it: `policy` applied to every field this decoder
        knows, every other field replaced by a marker; None when the payload cannot be parsed into
        fields (the quarantine then keeps only its hash and the reasons)."""
        ...


def safe_decode(decoder: Decoder, topic: str, payload: bytes, recv_us: int) -> Decoded:
    """`decoder.decode`, with any escaped exception turned into a reject (a bug, but never a crash)."""
    try:
        return decoder.decode(topic, payload, recv_us)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: input must never crash the agent
        log.exception("decoder %s failed on a payload from %r", type(decoder).__name__, topic)
        return [], [Reject("decoder.internal_error", f"{type(exc).__name__}: {exc}"[:500])]


def topic_level(topic: str, level: int) -> str | None:
    """The `level`-th '/'-separated level of `topic` (negative counts from the end), or None."""
    parts = topic.split("/")
    try:
        value = parts[level]
    except IndexError:
        return None
    return value or None
