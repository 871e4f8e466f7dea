"""Building the parts from settings. Wiring only: no behaviour of its own."""

from __future__ import annotations

from tidm.cli.settings import TransportSettings
from tidm.ingest.transports import EmbeddedTransport, KafkaSecurity, KafkaTransport, Transport

__all__ = ["build_transport"]


def build_transport(settings: TransportSettings, *, client_id: str) -> Transport:
    if settings.kind == "kafka":
        sec = settings.security
        security = KafkaSecurity(
            protocol=sec.protocol,
            sasl_mechanism=sec.sasl_mechanism,
            username=sec.username,
            password=sec.password.get_secret_value() if sec.password is not None else None,
            ca_file=sec.ca_file,
            cert_file=sec.cert_file,
            key_file=sec.key_file,
        )
        return KafkaTransport(settings.bootstrap, client_id=client_id, security=security)
    return EmbeddedTransport(settings.path, partitions=settings.partitions)
