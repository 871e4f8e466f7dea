"""Plain payloads: one number (or, if allowed, one text) per message, stamped with the receive time."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidm.edge_agent.sources.base import RawSample
from tidm.edge_agent.sources.decoders.base import STATUS_GOOD, Decoded, Reject, topic_level

if TYPE_CHECKING:
    from tidm.edge_agent.sources.decoders.quarantine import FieldPolicy

__all__ = ["PlainDecoder", "PlainDecoderSettings"]

_MAX_TEXT = 4096
_BOOLS = {"true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0}


class PlainDecoderSettings(BaseModel):
    """Which asset and signal a plain payload is, fixed or taken from a topic level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["plain"] = "plain"
    asset_id: str | None = None
    asset_topic_level: int | None = None
    signal: str | None = Field(default=None, min_length=1)
    signal_topic_level: int | None = None
    # Non-numeric payloads become text samples instead of rejects.
    text: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PlainDecoderSettings:
        if (self.asset_id is None) == (self.asset_topic_level is None):
            msg = "set exactly one of asset_id, asset_topic_level"
            raise ValueError(msg)
        if (self.signal is None) == (self.signal_topic_level is None):
            msg = "set exactly one of signal, signal_topic_level"
            raise ValueError(msg)
        return self


class PlainDecoder:
    """Decodes `b"21.5"`, `b"true"` or (with `text`) any UTF-8 text of one signal."""

    def __init__(self, settings: PlainDecoderSettings) -> None:
        self.settings = settings

    def decode(self, topic: str, payload: bytes, recv_us: int) -> Decoded:
        """One sample, or one reject saying why the payload is not a value."""
        s = self.settings
        asset = s.asset_id if s.asset_topic_level is None else topic_level(topic, s.asset_topic_level)
        signal = s.signal if s.signal_topic_level is None else topic_level(topic, s.signal_topic_level)
        if asset is None or signal is None:
            return [], [Reject("plain.topic", f"topic {topic!r} lacks the configured asset/signal level")]
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            return [], [Reject("plain.encoding", f"payload is not UTF-8 (byte {exc.start})")]
        if not text:
            return [], [Reject("plain.empty", "empty payload")]
        try:
            value = float(text)
        except ValueError:
            flag = _BOOLS.get(text.lower())
            if flag is not None:
                return [RawSample(asset, signal, recv_us, recv_us, flag, None, STATUS_GOOD)], []
            if not s.text:
                return [], [Reject("plain.not_a_number", f"payload is not a number ({len(text)} characters)")]
            if len(text) > _MAX_TEXT or "\x00" in text:
                return [], [Reject("plain.text", f"text of {len(text)} characters is not a value")]
            return [RawSample(asset, signal, recv_us, recv_us, None, text, STATUS_GOOD)], []
        return [RawSample(asset, signal, recv_us, recv_us, value, None, STATUS_GOOD)], []

    def redact(self, topic: str, payload: bytes, recv_us: int, policy: FieldPolicy) -> bytes | None:
        """The payload is one field: the policy's rewrite of it; None if dropped or not text."""
        from tidm.edge_agent.sources.decoders.quarantine import DROPPED, FieldValue

        s = self.settings
        asset = s.asset_id if s.asset_topic_level is None else topic_level(topic, s.asset_topic_level)
        signal = s.signal if s.signal_topic_level is None else topic_level(topic, s.signal_topic_level)
        if asset is None or signal is None:
            return None
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        value: float | str = text
        try:
            value = float(text)
        except ValueError:
            value = _BOOLS.get(text.lower(), text)
        (kept,) = policy.rewrite([FieldValue(asset, signal, value, recv_us)])
        if kept is DROPPED:
            return None
        return (kept if isinstance(kept, str) else json.dumps(kept)).encode("utf-8")
