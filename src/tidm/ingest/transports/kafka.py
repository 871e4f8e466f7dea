"""The Kafka transport, over aiokafka (the `kafka` extra).

Producers are idempotent with acks=all and zstd, so `send` returns once every in-sync replica has the
record and a retried send is never written twice. Consumers never auto-commit, start from the earliest
offset when their group has none, and read only committed data (read_committed). aiokafka errors are
translated here into `tidm.ingest.transports.errors`, naming the topic, partition or group.

aiokafka is imported when a `KafkaTransport` is constructed, not when this module is, so importing
`tidm.ingest.transports` works without the extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from tidm.errors import MissingExtraError
from tidm.ingest.transports.base import (
    MAX_MESSAGE_BYTES,
    Delivery,
    Message,
    RebalanceCallback,
    TopicPartition,
    Transport,
    is_valid_topic_name,
)
from tidm.ingest.transports.errors import (
    CommitFailedError,
    CorruptLogError,
    MessageTooLargeError,
    NotAssignedError,
    TransportClosedError,
    TransportConfigError,
    TransportError,
    TransportFailure,
    TransportUnavailable,
    UnknownTopicError,
)

__all__ = ["KafkaConsumer", "KafkaProducer", "KafkaSecurity", "KafkaTransport"]

log = logging.getLogger(__name__)

# Room above MAX_MESSAGE_BYTES for the record batch framing Kafka counts in its size limits.
_MAX_BATCH_BYTES = MAX_MESSAGE_BYTES + (1 << 20)
_PRODUCER_BATCH_BYTES = 1 << 20  # concurrent small sends to one partition share a request
_FETCH_MAX_BYTES = 50 * 1024 * 1024  # Kafka's default; always at least one batch


def _kafka() -> SimpleNamespace:
    """The aiokafka names this module uses, imported on first need."""
    try:
        import aiokafka
        import aiokafka.abc
        import aiokafka.admin
        import aiokafka.codec
        import aiokafka.errors
        import aiokafka.helpers
    except ImportError as exc:
        extra = "kafka"
        raise MissingExtraError(extra, "aiokafka") from exc
    if not aiokafka.codec.has_zstd():  # zstd compression needs cramjam, the other half of the extra
        extra = "kafka"
        raise MissingExtraError(extra, "cramjam")
    return SimpleNamespace(
        Producer=aiokafka.AIOKafkaProducer,
        Consumer=aiokafka.AIOKafkaConsumer,
        TopicPartition=aiokafka.TopicPartition,
        Admin=aiokafka.admin.AIOKafkaAdminClient,
        NewTopic=aiokafka.admin.NewTopic,
        Listener=aiokafka.abc.ConsumerRebalanceListener,
        errors=aiokafka.errors,
        create_ssl_context=aiokafka.helpers.create_ssl_context,
    )


def _caught() -> tuple[type[BaseException], ...]:
    """The exceptions of aiokafka (and the network under it) that we translate."""
    ke = _kafka().errors
    return (ke.KafkaError, ke.ConsumerStoppedError, ke.IllegalOperation, OSError, TimeoutError)


def _translate(exc: BaseException, where: str) -> TransportError:
    """Our error for an aiokafka (or socket) exception raised while working on `where`."""
    ke = _kafka().errors
    text = f"{where}: {type(exc).__name__}: {exc}".rstrip(": ")
    kinds: list[tuple[tuple[type[BaseException], ...], type[TransportError]]] = [
        (
            (ke.MessageSizeTooLargeError, ke.RecordTooLargeError, ke.RecordListTooLargeError),
            MessageTooLargeError,
        ),
        ((ke.UnknownTopicOrPartitionError,), UnknownTopicError),
        (
            (
                ke.CommitFailedError,
                ke.IllegalGenerationError,
                ke.UnknownMemberIdError,
                ke.RebalanceInProgressError,
            ),
            CommitFailedError,
        ),
        ((ke.CorruptRecordException,), CorruptLogError),
        ((ke.ProducerClosed, ke.ConsumerStoppedError), TransportClosedError),
        (
            (
                ke.TopicAuthorizationFailedError,
                ke.GroupAuthorizationFailedError,
                ke.ClusterAuthorizationFailedError,
                ke.TransactionalIdAuthorizationFailed,
                ke.AuthenticationFailedError,
                ke.AuthenticationMethodNotSupported,
                ke.SaslAuthenticationFailed,
                ke.UnsupportedSaslMechanismError,
                ke.InvalidTopicError,
                ke.InvalidPartitionsError,
                ke.InvalidReplicationFactorError,
                ke.InvalidConfigurationError,
                ke.InvalidGroupIdError,
                ke.PolicyViolationError,
                ke.KafkaConfigurationError,
                ke.UnsupportedCodecError,
                ke.IncompatibleBrokerVersion,
            ),
            TransportConfigError,
        ),
        ((ke.KafkaTimeoutError, ke.KafkaConnectionError, OSError, TimeoutError), TransportUnavailable),
    ]
    for types, ours in kinds:
        if isinstance(exc, types):
            return ours(text)
    if getattr(exc, "retriable", False):
        return TransportUnavailable(text)
    return TransportFailure(text)


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach a secured cluster; the default is plaintext, as the dev broker speaks.

    Built by the configuration layer (which keeps the password as a `SecretStr`) and passed down.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = _kafka().create_ssl_context(
                cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
            )
        if self.protocol.startswith("SASL"):
            if self.username is None or self.password is None:
                msg = f"{self.protocol} needs a username and a password"
                raise TransportConfigError(msg)
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options


@dataclass(frozen=True)
class _Settings:
    bootstrap: str
    client_id: str
    security: KafkaSecurity
    linger_ms: int
    request_timeout_ms: int

    def client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            **self.security.client_options(),
        }


class KafkaTransport:
    """Producers, consumers and topic creation on one Kafka cluster.

    `replication_factor` of created topics defaults to min(3, brokers); with 3 or more replicas,
    `min.insync.replicas` is set to 2 so that acks=all survives the loss of one broker.

    `linger_ms` defaults to 0: every send is awaited until acknowledged, so waiting for company only
    delays it, and concurrent sends share requests anyway while one is in flight (64 KiB values on
    the dev broker: 1200 sequential sends/s at 0 ms against 150/s at 5 ms; about 10 000/s either
    way with 64 in flight).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        security: KafkaSecurity | None = None,
        replication_factor: int | None = None,
        linger_ms: int = 0,
        request_timeout_ms: int = 30_000,
        topic_ready_timeout_s: float = 30.0,
    ) -> None:
        _kafka()  # fail now, with the install hint, if the extra is missing
        self._settings = _Settings(
            bootstrap=bootstrap,
            client_id=client_id,
            security=security or KafkaSecurity(),
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
        )
        self._replication_factor = replication_factor
        self._topic_ready_timeout_s = topic_ready_timeout_s

    def __repr__(self) -> str:
        return f"KafkaTransport({self._settings.bootstrap!r}, client_id={self._settings.client_id!r})"

    @property
    def security(self) -> KafkaSecurity:
        """How this transport reaches the cluster (the password is kept out of its repr)."""
        return self._settings.security

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self._settings)

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> KafkaConsumer:
        _check_topics(topics)
        if not group_id:
            msg = "a consumer needs a non-empty group_id"
            raise TransportConfigError(msg)
        return KafkaConsumer(
            self._settings, topics, group_id=group_id, on_assign=on_assign, on_revoke=on_revoke
        )

    async def ensure_topics(self, topics: Sequence[str], *, partitions: int) -> None:
        """Create the missing topics (existing ones are left as they are) and wait, bounded, until
        the cluster's metadata shows every partition of every topic with a leader."""
        _check_topics(topics)
        if partitions < 1:
            msg = f"partitions must be at least 1, not {partitions}"
            raise TransportConfigError(msg)
        k = _kafka()
        admin = k.Admin(**self._settings.client_options())
        where = f"ensure_topics({', '.join(topics)})"
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in dict.fromkeys(topics) if t not in existing]
            if missing:
                await self._create(admin, missing, partitions)
            await self._wait_ready(admin, list(topics))
        except _caught() as exc:
            raise _translate(exc, where) from exc
        finally:
            await admin.close()

    async def _create(self, admin: Any, topics: list[str], partitions: int) -> None:
        k = _kafka()
        replicas = self._replication_factor
        if replicas is None:
            cluster = await admin.describe_cluster()
            replicas = max(1, min(3, len(cluster.get("brokers", ()))))
        configs = {"max.message.bytes": str(_MAX_BATCH_BYTES)}
        if replicas >= 3:
            configs["min.insync.replicas"] = "2"
        new = [k.NewTopic(t, partitions, replicas, topic_configs=configs) for t in topics]
        response = await admin.create_topics(new)
        for topic, code, *detail in response.topic_errors:
            error = k.errors.for_code(code)
            if code == 0 or error is k.errors.TopicAlreadyExistsError:
                continue
            raise _translate(error(*detail), f"create topic {topic}")
        log.info("created Kafka topics %s (%d partitions, %d replicas)", topics, partitions, replicas)

    async def _wait_ready(self, admin: Any, topics: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._topic_ready_timeout_s
        delay = 0.05
        while True:
            pending = [t["topic"] for t in await admin.describe_topics(topics) if not _topic_ready(t)]
            if not pending:
                return
            if loop.time() >= deadline:
                msg = f"topics {pending} not ready after {self._topic_ready_timeout_s:.0f} s"
                raise TransportUnavailable(msg)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _topic_ready(meta: Mapping[str, Any]) -> bool:
    parts = meta.get("partitions") or []
    return meta.get("error_code") == 0 and bool(parts) and all(p.get("leader", -1) >= 0 for p in parts)


def _check_topics(topics: Iterable[str]) -> None:
    for topic in topics:
        if not is_valid_topic_name(topic):
            msg = f"invalid topic name {topic!r}: use 1-249 of [A-Za-z0-9._-], not '.' or '..'"
            raise TransportConfigError(msg)


class KafkaProducer:
    """An idempotent, acks=all, zstd-compressing aiokafka producer."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            msg = f"producer {self._settings.client_id!r} already {self._state}"
            raise TransportClosedError(msg)
        k = _kafka()
        producer = k.Producer(
            **self._settings.client_options(),
            acks="all",
            enable_idempotence=True,
            compression_type="zstd",
            linger_ms=self._settings.linger_ms,
            max_batch_size=_PRODUCER_BATCH_BYTES,
            max_request_size=_MAX_BATCH_BYTES,
        )
        try:
            await producer.start()
        except _caught() as exc:
            await producer.stop()
            raise _translate(exc, f"producer start ({self._settings.bootstrap})") from exc
        self._producer = producer
        self._state = "started"

    async def stop(self) -> None:
        """Flush pending sends, then close the connections."""
        producer, self._producer = self._producer, None
        self._state = "stopped"
        if producer is not None:
            try:
                await producer.stop()
            except _caught() as exc:
                raise _translate(exc, "producer stop") from exc

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Delivery:
        """Send one message; return once all in-sync replicas have it."""
        if self._producer is None:
            msg = f"{topic}: send on a producer that is {self._state}, not started"
            raise TransportClosedError(msg)
        size = len(key or b"") + len(value) + sum(len(n.encode()) + len(v) for n, v in headers)
        if size > MAX_MESSAGE_BYTES:
            msg = f"{topic}: message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
            raise MessageTooLargeError(msg)
        try:
            meta = await self._producer.send_and_wait(topic, value, key=key, headers=list(headers))
        except _caught() as exc:
            raise _translate(exc, topic) from exc
        return Delivery(meta.topic, meta.partition, meta.offset)


class KafkaConsumer:
    """An aiokafka consumer in a group: manual commits, earliest reset, read_committed."""

    def __init__(
        self,
        settings: _Settings,
        topics: Sequence[str],
        *,
        group_id: str,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        self._settings = settings
        self._topics = list(dict.fromkeys(topics))
        self.group_id = group_id
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._consumer: Any = None
        self._state = "new"
        self._callback_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"KafkaConsumer(group={self.group_id!r}, topics={self._topics!r})"

    async def start(self) -> None:
        if self._state != "new":
            msg = f"group {self.group_id!r}: consumer already {self._state}"
            raise TransportClosedError(msg)
        k = _kafka()
        consumer = k.Consumer(
            **self._settings.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=_MAX_BATCH_BYTES,
            fetch_max_bytes=max(_FETCH_MAX_BYTES, _MAX_BATCH_BYTES),
        )
        consumer.subscribe(self._topics, listener=self._listener(k))
        # aiokafka may join the group inside start(): callbacks already need seek() to work there.
        self._consumer = consumer
        self._state = "started"
        try:
            await consumer.start()
        except _caught() as exc:
            self._consumer = None
            self._state = "stopped"
            await consumer.stop()
            raise _translate(exc, f"group {self.group_id!r} start ({self._settings.bootstrap})") from exc

    async def stop(self) -> None:
        """Leave the group (its partitions go to the other members) and close the connections."""
        consumer, self._consumer = self._consumer, None
        self._state = "stopped"
        if consumer is not None:
            try:
                await consumer.stop()
            except _caught() as exc:
                raise _translate(exc, f"group {self.group_id!r} stop") from exc

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return _ours(self._consumer.assignment())

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Message]]:
        consumer = self._started()
        self._raise_callback_error()
        try:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except _caught() as exc:
            raise _translate(exc, f"group {self.group_id!r} fetch") from exc
        out = {
            TopicPartition(tp.topic, tp.partition): [_message(r) for r in records]
            for tp, records in fetched.items()
            if records
        }
        if not out:
            self._raise_callback_error()  # else on the next call: fetched records are never dropped
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self._started()
        if not offsets:
            return
        where = f"group {self.group_id!r} commit " + ", ".join(
            f"{tp}@{o}" for tp, o in sorted(offsets.items())
        )
        k = _kafka()
        try:
            await consumer.commit({k.TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()})
        except k.errors.IllegalStateError as exc:
            msg = f"{where}: not assigned to this member ({exc})"
            raise CommitFailedError(msg) from exc
        except _caught() as exc:
            raise _translate(exc, where) from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        consumer = self._started()
        k = _kafka()
        try:
            offset = await consumer.committed(k.TopicPartition(tp.topic, tp.partition))
        except _caught() as exc:
            raise _translate(exc, f"group {self.group_id!r} committed {tp}") from exc
        return None if offset is None or offset < 0 else int(offset)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        consumer = self._started()
        if offset < 0:
            msg = f"{tp}: cannot seek to negative offset {offset}"
            raise ValueError(msg)
        k = _kafka()
        try:
            consumer.seek(k.TopicPartition(tp.topic, tp.partition), offset)
        except k.errors.IllegalStateError as exc:
            msg = f"group {self.group_id!r}: cannot seek {tp}: not assigned to this member"
            raise NotAssignedError(msg) from exc

    async def offsets_for_times(
        self, times: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        consumer = self._started()
        if not times:
            return {}
        k = _kafka()
        where = f"group {self.group_id!r} offsets_for_times " + ", ".join(str(tp) for tp in sorted(times))
        try:
            found = await consumer.offsets_for_times(
                {k.TopicPartition(tp.topic, tp.partition): max(0, int(ms)) for tp, ms in times.items()}
            )
        except _caught() as exc:
            raise _translate(exc, where) from exc
        return {
            TopicPartition(tp.topic, tp.partition): (None if hit is None else int(hit.offset))
            for tp, hit in found.items()
        }

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        consumer = self._started()
        k = _kafka()
        ours = [k.TopicPartition(tp.topic, tp.partition) for tp in tps if tp in self.assignment()]
        if ours:
            consumer.pause(*ours)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        consumer = self._started()
        k = _kafka()
        ours = [k.TopicPartition(tp.topic, tp.partition) for tp in tps if tp in self.assignment()]
        if ours:
            consumer.resume(*ours)

    def paused(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return _ours(self._consumer.paused())

    # -- internals --

    def _started(self) -> Any:
        if self._consumer is None:
            msg = f"group {self.group_id!r}: consumer is {self._state}, not started"
            raise TransportClosedError(msg)
        return self._consumer

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _listener(self, k: SimpleNamespace) -> Any:
        """A rebalance listener calling our callbacks. aiokafka logs and swallows what a listener
        raises; we keep it and raise it from the next `getmany` instead."""
        call, on_assign, on_revoke = self._call, self._on_assign, self._on_revoke

        class _Listener(k.Listener):  # type: ignore[name-defined,misc]
            async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
                await call(on_revoke, revoked)

            async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
                await call(on_assign, assigned)

        return _Listener()

    async def _call(self, callback: RebalanceCallback | None, tps: Iterable[Any]) -> None:
        partitions = _ours(tps)
        if callback is None or not partitions:
            return
        try:
            await callback(partitions)
        except Exception as exc:  # re-raised from the next getmany, see _listener
            log.exception("group %r: rebalance callback failed for %s", self.group_id, sorted(partitions))
            if self._callback_error is None:
                self._callback_error = exc


def _ours(tps: Iterable[Any]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(tp.topic, tp.partition) for tp in tps)


def _message(record: Any) -> Message:
    headers = tuple((str(name), bytes(value or b"")) for name, value in record.headers or ())
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=headers,
        timestamp_ms=record.timestamp,
    )


if TYPE_CHECKING:  # mypy proves that the transport, its producers and consumers meet the contract
    _conforms: Transport = KafkaTransport("localhost:9092", client_id="check")
