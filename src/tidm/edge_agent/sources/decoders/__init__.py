"""Payload decoders of the MQTT source: JSON + JSONPath, Sparkplug B, plain values; quarantine.

Every decoder returns (samples, rejects) and never raises on input; rejected payloads go to a
`PayloadQuarantine`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tidm.edge_agent.sources.decoders.base import Decoded, Decoder, Reject, safe_decode
from tidm.edge_agent.sources.decoders.json_path import JsonDecoder, JsonDecoderSettings, JsonSignal
from tidm.edge_agent.sources.decoders.plain import PlainDecoder, PlainDecoderSettings
from tidm.edge_agent.sources.decoders.quarantine import (
    DROPPED,
    ExpiredRecord,
    FieldPolicy,
    FieldValue,
    PayloadQuarantine,
    QuarantineRecord,
    QuarantineRetention,
    QuarantineStats,
)
from tidm.edge_agent.sources.decoders.sparkplug import (
    SparkplugDecoder,
    SparkplugDecoderSettings,
    SparkplugStats,
)

__all__ = [
    "DROPPED",
    "Decoded",
    "Decoder",
    "DecoderSettings",
    "ExpiredRecord",
    "FieldPolicy",
    "FieldValue",
    "JsonDecoder",
    "JsonDecoderSettings",
    "JsonSignal",
    "PayloadQuarantine",
    "PlainDecoder",
    "PlainDecoderSettings",
    "QuarantineRecord",
    "QuarantineRetention",
    "QuarantineStats",
    "Reject",
    "SparkplugDecoder",
    "SparkplugDecoderSettings",
    "SparkplugStats",
    "build_decoder",
    "safe_decode",
]

DecoderSettings = Annotated[
    JsonDecoderSettings | SparkplugDecoderSettings | PlainDecoderSettings, Field(discriminator="kind")
]


def build_decoder(settings: JsonDecoderSettings | SparkplugDecoderSettings | PlainDecoderSettings) -> Decoder:
    """The decoder for one subscription's settings."""
    if isinstance(settings, JsonDecoderSettings):
        return JsonDecoder(settings)
    if isinstance(settings, SparkplugDecoderSettings):
        return SparkplugDecoder(settings)
    return PlainDecoder(settings)
