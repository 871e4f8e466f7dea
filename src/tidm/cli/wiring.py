"""Building the parts from settings. Wiring only: no behaviour of its own."""

from __future__ import annotations

from typing import Literal, Protocol

from tidm.cli.settings import ConfigError, EvidenceSettings, TransportSettings
from tidm.evidence.api import EvidenceLog
from tidm.ingest.transports import EmbeddedTransport, KafkaSecurity, KafkaTransport, Transport

__all__ = ["OpenEvidenceLog", "build_transport", "open_evidence"]


class OpenEvidenceLog(EvidenceLog, Protocol):
    """An evidence log a process opened and must close."""

    def close(self) -> None: ...


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


def open_evidence(
    settings: EvidenceSettings,
    transport: TransportSettings,
    *,
    client_id: str,
    durability: Literal["power", "process"] = "power",
    reads_for: str | None = None,
    store_and_forward: bool = False,
) -> OpenEvidenceLog:
    """The process's evidence log: the local SQLite file, or a started sink to the evidence topic.

    The sink sends over its own transport built from the process's transport settings (same brokers
    and security; its producer runs on the sink's own loop thread). With `evidence.store` it reads from
    the notary's tile store; `reads_for` says why this process reads evidence, and makes a missing
    `evidence.store` an error naming it instead of a failure at the first read.

    `store_and_forward` (edge agents): appends go to the local SQLite log at `evidence.path` and a
    background thread forwards them to the topic, so an agent never waits on the uplink it spools for.
    """
    from tidm.evidence import SqliteEvidenceLog

    if settings.kind == "sqlite":
        return SqliteEvidenceLog(settings.path, durability=durability)
    from tidm.evidence.objectstore import S3ObjectStore
    from tidm.evidence.tiles import TileEvidenceLog
    from tidm.ingest.evidence_sink import KafkaEvidenceSink

    if settings.store is None and reads_for is not None:
        msg = (
            f"evidence.store is not set: with evidence.kind kafka, {reads_for} reads the evidence log, "
            "so give the notary's tile store (endpoint, bucket, prefix and credentials) as evidence.store"
        )
        raise ConfigError(msg)
    if store_and_forward:
        from tidm.ingest.evidence_forward import ForwardingEvidenceLog

        # Not started here: the forwarder starts it (and retries), so an agent starts while the
        # broker is away. A short ack timeout: a stop waits at most this long for the forwarder.
        sink = KafkaEvidenceSink(
            build_transport(transport, client_id=f"{client_id}-evidence"),
            settings.topic,
            partitions=settings.partitions,
            timeout_s=10.0,
        )
        local = SqliteEvidenceLog(settings.path, durability=durability)
        progress = settings.path.with_name(settings.path.name + ".forwarded")
        return ForwardingEvidenceLog(local, sink, progress).start()
    reader = None
    if settings.store is not None:
        # Read-only: the notary owns the bucket, so never create it from here.
        reader = TileEvidenceLog(S3ObjectStore(settings.store.model_copy(update={"create_bucket": False})))
    sink = KafkaEvidenceSink(
        build_transport(transport, client_id=f"{client_id}-evidence"),
        settings.topic,
        reader=reader,
        partitions=settings.partitions,
        owns_reader=True,
    )
    return sink.start()
