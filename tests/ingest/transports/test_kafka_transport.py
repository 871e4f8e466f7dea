"""What only the Kafka transport does: error translation, the missing extra, topic settings, rebalances."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable

import pytest
from tests.ingest.transports.helpers import running, wait_assigned

from tidm.errors import MissingExtraError, Terminal, Transient
from tidm.ingest.transports import (
    CommitFailedError,
    CorruptLogError,
    KafkaSecurity,
    KafkaTransport,
    MessageTooLargeError,
    TopicPartition,
    TransportConfigError,
    TransportError,
    TransportFailure,
    TransportUnavailable,
    UnknownTopicError,
)
from tidm.ingest.transports.kafka import _translate

aiokafka_errors = pytest.importorskip("aiokafka.errors")


def test_without_aiokafka_construction_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiokafka", None)  # makes `import aiokafka` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'tidm\[kafka\]'"):
        KafkaTransport("127.0.0.1:9092", client_id="x")


@pytest.mark.parametrize(
    ("error", "ours", "mixin"),
    [
        (aiokafka_errors.MessageSizeTooLargeError(), MessageTooLargeError, Terminal),
        (aiokafka_errors.RecordTooLargeError(), MessageTooLargeError, Terminal),
        (aiokafka_errors.UnknownTopicOrPartitionError(), UnknownTopicError, Transient),
        (aiokafka_errors.CommitFailedError(), CommitFailedError, Transient),
        (aiokafka_errors.RebalanceInProgressError(), CommitFailedError, Transient),
        (aiokafka_errors.CorruptRecordException(), CorruptLogError, Terminal),
        (aiokafka_errors.TopicAuthorizationFailedError(), TransportConfigError, Terminal),
        (aiokafka_errors.SaslAuthenticationFailed(), TransportConfigError, Terminal),
        (aiokafka_errors.KafkaConnectionError(), TransportUnavailable, Transient),
        (aiokafka_errors.KafkaTimeoutError(), TransportUnavailable, Transient),
        (aiokafka_errors.NotLeaderForPartitionError(), TransportUnavailable, Transient),  # retriable
        (aiokafka_errors.NotEnoughReplicasError(), TransportUnavailable, Transient),
        (ConnectionResetError(), TransportUnavailable, Transient),
        (aiokafka_errors.OutOfOrderSequenceNumber(), TransportFailure, Terminal),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_aiokafka_errors_become_ours(error: BaseException, ours: type[TransportError], mixin: type) -> None:
    translated = _translate(error, "telemetry[3]@42")
    assert type(translated) is ours
    assert isinstance(translated, mixin)
    assert str(translated).startswith("telemetry[3]@42: ")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_cluster_is_transient_and_leaks_nothing() -> None:
    transport = KafkaTransport(f"127.0.0.1:{_closed_port()}", client_id="nobody", request_timeout_ms=2000)
    with pytest.raises(TransportUnavailable, match="producer start"):
        await transport.producer().start()
    with pytest.raises(TransportUnavailable, match="group 'g' start"):
        await transport.consumer(["t"], group_id="g").start()
    with pytest.raises(TransportUnavailable, match=r"ensure_topics\(t\)"):
        await transport.ensure_topics(["t"], partitions=1)
    # unclosed sockets would fail this test: pytest turns their ResourceWarnings into errors


def test_security_settings_are_checked_and_the_password_is_not_shown() -> None:
    secret = os.urandom(8).hex()
    sasl = KafkaSecurity(protocol="SASL_PLAINTEXT", username="agent", password=secret)
    assert secret not in repr(sasl)
    assert sasl.client_options()["sasl_plain_password"] == secret
    with pytest.raises(TransportConfigError, match="username and a password"):
        KafkaSecurity(protocol="SASL_SSL", username="agent").client_options()
    assert KafkaSecurity().client_options() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.integration
async def test_members_share_partitions_and_callbacks_see_each_rebalance(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    transport = KafkaTransport(kafka_bootstrap, client_id="rebalance-test")
    topic, group = unique_name("rebalance"), unique_name("g")
    await transport.ensure_topics([topic], partitions=2)
    both = frozenset({TopicPartition(topic, 0), TopicPartition(topic, 1)})
    events: list[tuple[str, frozenset[TopicPartition]]] = []

    async def on_assign(tps: frozenset[TopicPartition]) -> None:
        events.append(("assign", tps))

    async def on_revoke(tps: frozenset[TopicPartition]) -> None:
        events.append(("revoke", tps))

    first = transport.consumer([topic], group_id=group, on_assign=on_assign, on_revoke=on_revoke)
    async with running(first):
        assert await wait_assigned(first) == both
        async with running(transport.consumer([topic], group_id=group)) as second:
            # the first member must keep polling to take part in the rebalance
            mine = await _until(lambda: len(first.assignment()) == 1, first, second)
            assert mine and first.assignment() | second.assignment() == both
        await _until(lambda: first.assignment() == both, first)
    assert events[0] == ("assign", both)
    assert ("revoke", both) in events  # eager: everything is revoked before the split


async def _until(condition: Callable[[], bool], *consumers: object, timeout_s: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the group did not settle"
        for consumer in consumers:
            await consumer.getmany(timeout_ms=100)  # type: ignore[attr-defined]
    return True


@pytest.mark.integration
async def test_a_callback_error_surfaces_from_getmany(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    transport = KafkaTransport(kafka_bootstrap, client_id="callback-test")
    topic = unique_name("callback")
    await transport.ensure_topics([topic], partitions=1)

    async def broken(tps: frozenset[TopicPartition]) -> None:
        raise RuntimeError("rewind failed")

    async with running(transport.consumer([topic], group_id=unique_name("g"), on_assign=broken)) as consumer:
        with pytest.raises(RuntimeError, match="rewind failed"):
            for _ in range(300):
                await consumer.getmany(timeout_ms=100)
