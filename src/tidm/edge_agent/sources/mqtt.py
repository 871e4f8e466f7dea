"""MQTT source (paho-mqtt 2.x): subscriptions decoded into samples, QoS 1 acknowledged only once used.

Threads: paho runs its network loop in its own thread (`loop_start`, one client per connection).
`on_message` hands each message to the asyncio side through a bounded hand-off; the asyncio side
decodes, emits, quarantines what was rejected (fsynced), and only then acknowledges QoS 1 messages
(`manual_ack`). So a message is never acknowledged before it is in the agent or in quarantine, and
an agent that stops or crashes before that gets it redelivered by the broker (persistent session).

Backpressure: with MQTT 5 the broker may have at most `max_inflight` unacknowledged QoS 1 messages
on the way (Receive Maximum), and under 3.1.1 the broker's own in-flight limit does the same. When
the hand-off is full anyway (a QoS 0 flood), the network thread waits instead of dropping: it stops
reading the socket and TCP pushes back to the broker. Waits are counted; the only messages ever
dropped are QoS 0 ones arriving while the source shuts down, and those are counted and logged.

Reconnects: capped exponential back-off with full jitter, a fresh client each time (no state
carried across: a leak-free reconnect). MQTT 5 is tried first in `protocol: auto`; a broker that
refuses it gets MQTT 3.1.1, and the downgrade is logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.metrics import NullSourceMetrics, SourceMetrics
from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.sources.decoders import (
    Decoder,
    DecoderSettings,
    ExpiredRecord,
    FieldPolicy,
    PayloadQuarantine,
    QuarantineRecord,
    QuarantineRetention,
    QuarantineStats,
    Reject,
    SparkplugDecoder,
    build_decoder,
    safe_decode,
)
from tidm.errors import MissingExtraError
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog

__all__ = ["MqttSource", "MqttSourceSettings", "MqttStats", "MqttSubscription", "MqttTlsSettings"]

log = logging.getLogger(__name__)

_TOPIC_LEVEL = re.compile(r"^(\+|#|[^+#]*)$")
# CONNACK codes: 1 (3.1.1) / 0x84 (5) unsupported protocol version; 4, 5, 0x86, 0x87, 0x8C: credentials
# or authorization refused, which retrying cannot fix.
_UNSUPPORTED_PROTOCOL = frozenset({1, 0x84})
_REFUSED_AUTH = frozenset({4, 5, 0x86, 0x87, 0x8C})
_DRAIN_MAX = 512  # messages decoded per turn before yielding to the event loop


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(extra="mqtt", module="paho-mqtt") from exc
    return mqtt


class MqttTlsSettings(BaseModel):
    """TLS to the broker: server verification by a CA file (else the system store), client certificate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pairs(self) -> MqttTlsSettings:
        if self.key_file is not None and self.cert_file is None:
            msg = "key_file needs cert_file (the client certificate)"
            raise ValueError(msg)
        return self


class MqttSubscription(BaseModel):
    """A topic filter, its QoS, and how its payloads become samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = Field(min_length=1)
    qos: Literal[0, 1] = 1
    decoder: DecoderSettings

    @field_validator("topic")
    @classmethod
    def _filter(cls, topic: str) -> str:
        levels = topic.split("/")
        if any(not _TOPIC_LEVEL.match(level) for level in levels) or "#" in levels[:-1]:
            msg = f"invalid MQTT topic filter {topic!r}: '+' and '#' must fill a level, '#' only last"
            raise ValueError(msg)
        return topic


class MqttSourceSettings(BaseModel):
    """One broker connection and its subscriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    # Stable across restarts: the broker keeps the persistent session (and queued QoS 1) under it.
    client_id: str = Field(min_length=1, max_length=128)
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTlsSettings | None = None
    keepalive_s: int = Field(default=30, ge=5, le=65_535)
    # False: a persistent session (3.1.1 clean_session=0, 5 clean_start=0 + session expiry).
    clean_start: bool = False
    session_expiry_s: int = Field(default=7 * 86_400, ge=0, le=0xFFFF_FFFF)
    # Unacknowledged QoS 1 messages the broker may send us (MQTT 5 Receive Maximum) / we may send.
    max_inflight: int = Field(default=100, ge=1, le=65_535)
    queue_size: int = Field(default=1_000, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    quarantine_dir: Path = Path("quarantine/mqtt")
    # How long rejected payloads are kept (max age, max bytes of the quarantine file); what retention
    # removes is counted and recorded (EXPIRE evidence entry). What is kept of a payload follows the
    # desensitization policy (see `decoders.quarantine`).
    quarantine_retention: QuarantineRetention = QuarantineRetention()
    subscriptions: list[MqttSubscription] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSourceSettings:
        if self.password is not None and self.username is None:
            msg = "password needs username"
            raise ValueError(msg)
        if self.reconnect_max_s < self.reconnect_min_s:
            msg = "reconnect_max_s must be >= reconnect_min_s"
            raise ValueError(msg)
        return self


@dataclass
class MqttStats:
    """Counters of one MQTT source, for metrics and tests."""

    messages: int = 0
    samples: int = 0
    acked: int = 0
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    protocol: str = ""
    session_present: bool = False
    unmatched: int = 0
    backpressure_waits: int = 0
    dropped_on_stop: int = 0
    stale_acks: int = 0
    queue_depth: int = 0
    quarantine: QuarantineStats = field(default_factory=QuarantineStats)

    def as_metrics(self) -> dict[str, float]:
        """Flat name -> value pairs (rejects per reason as `rejected{reason}`)."""
        out: dict[str, float] = {
            k: float(v) for k, v in vars(self).items() if isinstance(v, int | bool) and not isinstance(v, str)
        }
        out["quarantined_payloads"] = float(self.quarantine.payloads)
        out["quarantine_expired"] = float(self.quarantine.expired)
        for reason, count in self.quarantine.rejects_by_reason.items():
            out[f"rejected{{{reason}}}"] = float(count)
        return out


@dataclass(frozen=True, slots=True)
class _Item:
    generation: int
    topic: str
    payload: bytes
    qos: int
    mid: int
    recv_us: int


class _Handoff:
    """Bounded queue from paho's thread to the event loop; the producer waits when it is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int, stats: MqttStats) -> None:
        self._loop = loop
        self._capacity = capacity
        self._stats = stats
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._signalled = False
        self._ready = asyncio.Event()
        self.closing = False

    def put(self, item: _Item) -> bool:
        """From paho's thread: queue `item`, waiting while full; False if the source is closing."""
        with self._cond:
            if len(self._items) >= self._capacity:
                self._stats.backpressure_waits += 1
                while len(self._items) >= self._capacity and not self.closing:
                    self._cond.wait(0.2)
            if self.closing:
                return False
            self._items.append(item)
            wake = not self._signalled
            self._signalled = True
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self.closing = True
            self._cond.notify_all()

    def take(self, limit: int) -> list[_Item]:
        """From the event loop: up to `limit` queued items (possibly none)."""
        with self._cond:
            n = min(limit, len(self._items))
            items = [self._items.popleft() for _ in range(n)]
            if not self._items:
                self._signalled = False
                self._ready.clear()
            self._cond.notify_all()
            self._stats.queue_depth = len(self._items)
            return items

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            pass


@dataclass(frozen=True, slots=True)
class _Signals:
    """What paho's callbacks tell the event loop about one connection."""

    connack: asyncio.Future[tuple[int, bool]]  # (reason code, session present)
    gone: asyncio.Event
    suback: asyncio.Future[list[int]]  # reason code per subscription


class _TrackingContext(ssl.SSLContext):
    """An SSLContext that remembers the socket it wrapped last (see `MqttSource._close_tls_socket`)."""

    last_socket: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.last_socket = sock
        return sock


class _Backoff:
    """Capped exponential back-off with full jitter (AWS architecture blog's 'full jitter')."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.attempt = low, high, 0

    def next(self) -> float:
        ceiling = min(self.high, self.low * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(self.low, max(self.low, ceiling))  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.attempt = 0


class MqttSource:
    """Collects MQTT subscriptions; see the module docstring for threads, acks and backpressure."""

    def __init__(
        self,
        settings: MqttSourceSettings,
        subscriptions: Sequence[MqttSubscription] | None = None,
        *,
        metrics: SourceMetrics | None = None,
        evidence: EvidenceLog | None = None,
        actor: str | None = None,
        field_policy: FieldPolicy | None = None,
    ) -> None:
        """`subscriptions` default to `settings.subscriptions`; quarantined payloads are evidenced
        (ROUTE entries, EXPIRE when retention removes them) in `evidence` when given, under `actor`.
        `field_policy` (the agent's desensitizer) decides what the quarantine keeps of a payload;
        without one (no policy configured, every value shared in clear) the payload is kept whole."""
        self._mqtt = _paho()
        self.metrics: SourceMetrics = metrics or NullSourceMetrics()
        self._evidence = evidence
        self.settings = settings
        self.subscriptions = list(settings.subscriptions if subscriptions is None else subscriptions)
        if not self.subscriptions:
            msg = f"MQTT source {settings.host}:{settings.port} ({settings.client_id}) has no subscriptions"
            raise SourceError(msg)
        self._decoders: list[Decoder] = [build_decoder(s.decoder) for s in self.subscriptions]
        self._route: dict[str, int | None] = {}
        scheme = "mqtts" if settings.tls is not None else "mqtt"
        self._name = f"{scheme}://{settings.host}:{settings.port}/{settings.client_id}"
        self.stats = MqttStats()
        self.actor = actor or f"source:{self._name}"
        self._field_policy = field_policy
        self.quarantine = PayloadQuarantine(
            settings.quarantine_dir, f"mqtt-{settings.client_id}", settings.quarantine_retention
        )
        self.stats.quarantine = self.quarantine.stats
        self._generation = 0
        self._client: Any = None
        self._ssl: ssl.SSLContext | None = None
        self._busy = False
        self.connected = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def sparkplug(self) -> list[SparkplugDecoder]:
        """The Sparkplug decoders (their stats: births, deaths, seq gaps)."""
        return [d for d in self._decoders if isinstance(d, SparkplugDecoder)]

    # ------------------------------------------------------------------ connection management

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.settings.tls
        assert tls is not None  # noqa: S101 - only called with TLS configured
        ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            if tls.ca_file is not None:
                ctx.load_verify_locations(cafile=str(tls.ca_file))
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            msg = f"{self.name}: cannot load the CA file {tls.ca_file}: {exc}"
            raise SourceError(msg) from exc
        if tls.cert_file is not None:
            password = tls.key_password.get_secret_value() if tls.key_password else None
            try:
                ctx.load_cert_chain(tls.cert_file, tls.key_file, password=password)
            except (OSError, ssl.SSLError) as exc:
                # The password is never part of the message; the files are.
                msg = (
                    f"{self.name}: cannot load the client certificate {tls.cert_file} / key {tls.key_file}: "
                    f"{type(exc).__name__} {getattr(exc, 'reason', None) or exc.args[0]}"
                )
                raise SourceError(msg) from None
        if not tls.check_hostname:
            log.warning(
                "%s: TLS host name checking is OFF (configured); the CA chain is still verified", self.name
            )
            ctx.check_hostname = False
        return ctx

    def _close_tls_socket(self) -> None:
        """paho leaves the TLS socket of a failed handshake open; close it instead of leaking it."""
        if isinstance(self._ssl, _TrackingContext) and self._ssl.last_socket is not None:
            self._ssl.last_socket.close()
            self._ssl.last_socket = None

    def _make_client(self, v5: bool) -> Any:
        mqtt = self._mqtt
        s = self.settings
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else s.clean_start,
            reconnect_on_failure=False,  # we reconnect ourselves: jitter, protocol fallback, fresh client
            manual_ack=True,
        )
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls is not None:
            if self._ssl is None:
                self._ssl = self._ssl_context()
            client.tls_set_context(self._ssl)
        return client

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Connect, subscribe and collect until `stop`; reconnect with back-off when the broker goes."""
        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop, self.settings.queue_size, self.stats)
        v5 = self.settings.protocol != "3.1.1"
        backoff = _Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        consumer = asyncio.create_task(self._consume(emit, handoff), name=f"mqtt-consume:{self.name}")
        stop_wait = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                outcome = await self._session(loop, v5, handoff, stop, consumer)
                if outcome == "fallback":
                    log.warning(
                        "%s: the broker refused MQTT 5; falling back to MQTT 3.1.1 (explicit, not silent)",
                        self.name,
                    )
                    v5 = False
                    continue
                if outcome == "stopped":
                    break
                if outcome == "lost":
                    backoff.reset()  # it was connected: start again from the short delay
                delay = backoff.next()
                log.info("%s: reconnecting in %.2f s", self.name, delay)
                await asyncio.wait(
                    _futures(stop_wait, consumer), timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                if consumer.done():
                    consumer.result()
        finally:
            handoff.close()
            stop_wait.cancel()
            consumer.cancel()
            await asyncio.gather(consumer, stop_wait, return_exceptions=True)
            # Anything still queued was received but never acknowledged: QoS 1 comes again with the
            # session; QoS 0 is lost, and said so.
            for item in handoff.take(len(handoff) + 1):
                if item.qos == 0:
                    self.stats.dropped_on_stop += 1
            if self.stats.dropped_on_stop:
                log.warning(
                    "%s: %d QoS 0 messages dropped at shutdown", self.name, self.stats.dropped_on_stop
                )

    async def _session(
        self,
        loop: asyncio.AbstractEventLoop,
        v5: bool,
        handoff: _Handoff,
        stop: asyncio.Event,
        consumer: asyncio.Task[None],
    ) -> str:
        """One connection: 'stopped', 'lost' (was connected), 'failed' or 'fallback'."""
        client = self._make_client(v5)
        self._generation += 1
        signals = self._bind_callbacks(client, loop, handoff, self._generation)
        failed = await self._connect(client, v5)
        if failed is not None:
            return failed
        self._client = None
        client.loop_start()
        try:
            refused = await self._await_connack(signals, v5)
            if refused is not None:
                return refused
            self._client = client
            self._subscribe(client, v5)
            await self._until_gone(signals, stop, consumer)
            if consumer.done():
                consumer.result()
            if signals.gone.is_set():
                log.warning("%s: connection lost", self.name)
                return "lost"
            # Stopping: let the consumer finish what was received (and ack it) before disconnecting.
            handoff.close()
            await self._drain_for_stop(handoff, consumer)
            return "stopped"
        finally:
            self.connected.clear()
            self.metrics.connected(False)
            self._client = None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            _close(client)

    def _bind_callbacks(
        self, client: Any, loop: asyncio.AbstractEventLoop, handoff: _Handoff, generation: int
    ) -> _Signals:
        """paho's callbacks (on its network thread) -> futures and events of this event loop; each
        message -> `handoff`, tagged with the connection's `generation` (acks go to that one only)."""
        signals = _Signals(loop.create_future(), asyncio.Event(), loop.create_future())

        def settle(fut: asyncio.Future[Any], value: Any) -> None:
            if not fut.done():
                fut.set_result(value)

        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
            value = (int(reason.value), bool(flags.session_present))
            loop.call_soon_threadsafe(settle, signals.connack, value)

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            loop.call_soon_threadsafe(signals.gone.set)

        def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
            loop.call_soon_threadsafe(settle, signals.suback, [int(c.value) for c in codes])

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            recv = time.time_ns() // 1000
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = msg._topic.decode("utf-8", "backslashreplace")  # noqa: SLF001 - paho has no other accessor
            if (
                not handoff.put(_Item(generation, topic, msg.payload, msg.qos, msg.mid, recv))
                and msg.qos == 0
            ):
                self.stats.dropped_on_stop += 1

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        return signals

    async def _connect(self, client: Any, v5: bool) -> str | None:
        """Open the socket and send CONNECT: None when sent, 'failed' when the broker is not
        reachable; an untrusted broker certificate raises (retrying cannot help)."""
        s = self.settings
        props = None
        if v5:
            props = _connect_properties()
            props.SessionExpiryInterval = 0 if s.clean_start else s.session_expiry_s
            props.ReceiveMaximum = s.max_inflight
        try:
            await asyncio.to_thread(
                client.connect,
                s.host,
                s.port,
                s.keepalive_s,
                clean_start=s.clean_start if v5 else self._mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
        except ssl.SSLCertVerificationError as exc:
            _close(client)
            self._close_tls_socket()
            msg = f"{self.name}: the broker's TLS certificate is not trusted: {exc.verify_message}"
            raise SourceError(msg) from None
        except (OSError, ValueError) as exc:
            _close(client)
            self._close_tls_socket()
            self.stats.connect_failures += 1
            log.warning("%s: cannot connect: %s", self.name, exc)
            return "failed"
        return None

    async def _await_connack(self, signals: _Signals, v5: bool) -> str | None:
        """Wait for the CONNACK: None once connected (counted, logged), else 'failed' or 'fallback'
        (MQTT 5 refused under `protocol: auto`); refused credentials raise."""
        s = self.settings
        connack = signals.connack
        gone_wait = asyncio.ensure_future(signals.gone.wait())
        await asyncio.wait(
            _futures(connack, gone_wait), timeout=s.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        gone_wait.cancel()
        if not connack.done():
            self.stats.connect_failures += 1
            if v5 and s.protocol == "auto" and signals.gone.is_set():
                return "fallback"
            log.warning("%s: no CONNACK within %.1f s", self.name, s.connect_timeout_s)
            return "failed"
        code, session_present = connack.result()
        if code != 0:
            self.stats.connect_failures += 1
            if v5 and s.protocol == "auto" and code in _UNSUPPORTED_PROTOCOL:
                return "fallback"
            if code in _REFUSED_AUTH:
                msg = f"{self.name}: the broker refused the connection: not authorized (reason code {code})"
                raise SourceError(msg)
            log.warning("%s: the broker refused the connection (reason code %d)", self.name, code)
            return "failed"
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
            self.metrics.reconnected()
        self.metrics.connected(True)
        self.stats.protocol = "5" if v5 else "3.1.1"
        self.stats.session_present = session_present
        log.info(
            "%s: connected (MQTT %s, session %s)",
            self.name,
            self.stats.protocol,
            "resumed" if session_present else "new",
        )
        return None

    def _subscribe(self, client: Any, v5: bool) -> None:
        topics = [(sub.topic, sub.qos) for sub in self.subscriptions]
        if v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            client.subscribe([(t, SubscribeOptions(qos=q)) for t, q in topics])
        else:
            client.subscribe(topics)

    async def _until_gone(self, signals: _Signals, stop: asyncio.Event, consumer: asyncio.Task[None]) -> None:
        """Wait for the SUBACK (then `connected` is set), then until the connection goes, `stop` is
        set or the consumer fails."""
        gone_wait = asyncio.ensure_future(signals.gone.wait())
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                _futures(signals.suback, gone_wait, stop_wait), return_when=asyncio.FIRST_COMPLETED
            )
            if signals.suback.done():
                for sub, code in zip(self.subscriptions, signals.suback.result(), strict=False):
                    if code >= 0x80:
                        log.error(
                            "%s: the broker refused the subscription to %r (code %d)",
                            self.name,
                            sub.topic,
                            code,
                        )
                self.connected.set()
            await asyncio.wait(_futures(gone_wait, stop_wait, consumer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_wait.cancel()
            stop_wait.cancel()

    async def _drain_for_stop(self, handoff: _Handoff, consumer: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 10.0
        while (len(handoff) or self._busy) and not consumer.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ decoding

    def _decoder_for(self, topic: str) -> int | None:
        index = self._route.get(topic, -1)
        if index != -1:
            return index
        matches = self._mqtt.topic_matches_sub
        found = next((i for i, s in enumerate(self.subscriptions) if matches(s.topic, topic)), None)
        if len(self._route) < 100_000:  # bounded: a broker may have endless distinct topics
            self._route[topic] = found
        return found

    async def _consume(self, emit: Emit, handoff: _Handoff) -> None:
        while True:
            await handoff.wait(0.5)
            while True:
                items = handoff.take(_DRAIN_MAX)
                if not items:
                    break
                self._busy = True
                try:
                    await self._process(emit, items)
                finally:
                    self._busy = False
                await asyncio.sleep(0)

    async def _process(self, emit: Emit, items: list[_Item]) -> None:
        samples: list[RawSample] = []
        bad: list[QuarantineRecord] = []
        decoders = self._decoders
        for item in items:
            index = self._decoder_for(item.topic)
            if index is None:
                # A resumed persistent session keeps the subscriptions of an older configuration.
                self.stats.unmatched += 1
                if (
                    self.stats.unmatched & (self.stats.unmatched - 1) == 0
                ):  # 1, 2, 4, 8, ...: loud, not flooding
                    log.warning(
                        "%s: %d messages matched no configured subscription (latest on %r); a persistent "
                        "session may hold subscriptions of an older configuration (use clean_start once)",
                        self.name,
                        self.stats.unmatched,
                        item.topic,
                    )
                continue
            got, rejects = safe_decode(decoders[index], item.topic, item.payload, item.recv_us)
            if got:
                samples.extend(got)
            if rejects:
                bad.append(self._quarantine_record(decoders[index], item, tuple(rejects)))
        self.stats.messages += len(items)
        if bad:
            try:
                expired = await asyncio.to_thread(self.quarantine.write, bad)
            except OSError as exc:
                # Not acknowledged: the broker redelivers them once the quarantine is writable again.
                msg = f"{self.name}: cannot write the quarantine file {self.quarantine.path}: {exc}"
                raise SourceError(msg) from exc
            self._evidence_quarantined(bad)
            self._evidence_expired(expired)
            for record in bad:
                self.metrics.quarantined(min(r.reason for r in record.rejects))
                log.warning(
                    "%s: quarantined a payload from %r (%s) in %s",
                    self.name,
                    record.topic,
                    ", ".join(sorted({r.reason for r in record.rejects})),
                    self.quarantine.path,
                )
        if samples:
            self.stats.samples += len(samples)
            emit(self.name, samples)
            self.metrics.samples(len(samples))
        client = self._client
        current = self._generation
        for item in items:
            if item.qos == 0:
                continue
            if client is None or item.generation != current:
                self.stats.stale_acks += 1  # its connection is gone; the broker redelivers it
                continue
            client.ack(item.mid, item.qos)
            self.stats.acked += 1

    def _quarantine_record(
        self, decoder: Decoder, item: _Item, rejects: tuple[Reject, ...]
    ) -> QuarantineRecord:
        """What the quarantine keeps of a rejected payload: with a policy, the decoder's redacted
        payload, or only its hash and the reasons when it cannot be parsed into fields."""
        if self._field_policy is None:
            return QuarantineRecord(item.topic, item.recv_us, item.payload, rejects)
        try:
            kept = decoder.redact(item.topic, item.payload, item.recv_us, self._field_policy)
        except Exception:  # noqa: BLE001 - bad input must never crash the source: keep the hash only
            log.exception("%s: cannot redact a payload from %r; keeping its hash only", self.name, item.topic)
            kept = None
        redaction: Literal["policy", "hash-only"] = "policy" if kept is not None else "hash-only"
        return QuarantineRecord(item.topic, item.recv_us, item.payload, rejects, kept, redaction)

    def _evidence_expired(self, expired: list[ExpiredRecord]) -> None:
        if not expired:
            return
        log.warning(
            "%s: quarantine retention removed %d payload(s) (%d bytes) from %s",
            self.name,
            len(expired),
            sum(e.bytes for e in expired),
            self.quarantine.path,
        )
        if self._evidence is None:
            return
        now = time.time_ns() // 1000
        self._evidence.append(
            [
                EvidenceEntry(
                    event=EventType.EXPIRE,
                    subject=e.sha256,
                    actor=self.actor,
                    time_us=now,
                    attributes={
                        "route": "quarantine",
                        "reason": f"retention.{e.why}",
                        "source": self.name,
                        "topic": e.topic,
                        "recv_us": e.recv_us,
                        "bytes": e.bytes,
                        "quarantine_file": str(self.quarantine.path),
                    },
                )
                for e in expired
            ]
        )

    def _evidence_quarantined(self, records: list[QuarantineRecord]) -> None:
        if self._evidence is None:
            return
        self._evidence.append(
            [
                EvidenceEntry(
                    event=EventType.ROUTE,
                    subject=r.sha256,
                    actor=self.actor,
                    time_us=r.recv_us,
                    attributes={
                        "route": "quarantine",
                        "source": self.name,
                        "topic": r.topic,
                        "reasons": sorted({x.reason for x in r.rejects}),
                        "bytes": len(r.payload),
                        "kept": r.redaction,
                        "quarantine_file": str(self.quarantine.path),
                    },
                )
                for r in records
            ]
        )


def _futures(*futures: asyncio.Future[Any]) -> list[asyncio.Future[Any]]:
    return list(futures)


def _connect_properties() -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    return Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]


def _close(client: Any) -> None:
    """Close the client's socket and wake-up socket pair now rather than at garbage collection."""
    client._reset_sockets()  # noqa: SLF001 - paho closes these only in __del__
