"""Building the parts from settings. Wiring only: no behaviour of its own."""

from __future__ import annotations

from tidm.cli.settings import TransportSettings
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport, Transport

__all__ = ["build_transport"]


def build_transport(settings: TransportSettings, *, client_id: str) -> Transport:
    if settings.kind == "kafka":
        return KafkaTransport(settings.bootstrap, client_id=client_id)
    return EmbeddedTransport(settings.path, partitions=settings.partitions)
