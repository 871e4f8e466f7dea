"""Evidence through the transport: parts append to the evidence topic, the notary sequences it.

Unit tests run on the embedded transport and a tiles folder; the integration test on real Kafka and
tiles on S3.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from tests.evidence._support import landed_lineage, make_entry

from tidm.evidence import (
    EventType,
    EvidenceLog,
    Signer,
    SqliteEvidenceLog,
    open_checkpoint,
    trace,
    verify_log,
)
from tidm.evidence.objectstore import FolderObjectStore, S3ObjectStore, S3StoreSettings
from tidm.evidence.tiles import TileEvidenceLog
from tidm.ingest.evidence_sink import KafkaEvidenceSink, Notary
from tidm.ingest.transports import EmbeddedTransport, KafkaTransport, Transport

TOPIC = "tidm.evidence"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("tidm.test/notary")


async def _notarise(
    transport: Transport, topic: str, store: EvidenceLog, signer: Signer, group: str
) -> Notary:
    """Run a notary until the topic is drained (bounded), then stop it."""
    notary = Notary(
        transport, topic, store, signer, group_id=group, checkpoint_every=50, checkpoint_interval_s=0.5
    )
    stop = asyncio.Event()
    task = asyncio.create_task(notary.run(stop))
    await asyncio.wait_for(notary.ready.wait(), 60)
    idle = 0
    for _ in range(200):
        before = notary.stats.messages
        await asyncio.sleep(0.1)
        idle = idle + 1 if notary.stats.messages == before else 0
        if idle >= 10:
            break
    stop.set()
    await asyncio.wait_for(task, 60)
    return notary


async def test_sink_appends_reach_the_store_in_order_and_replays_are_not_logged_twice(
    tmp_path: Path, signer: Signer
) -> None:
    transport = EmbeddedTransport(tmp_path / "log", partitions=1)
    store = TileEvidenceLog(FolderObjectStore(tmp_path / "tiles"))
    subject, lineage = landed_lineage()
    with KafkaEvidenceSink(transport, TOPIC, reader=store) as sink:
        assert isinstance(sink, EvidenceLog)
        pending = sink.append(lineage)
        assert [p.index for p in pending] == [-1] * len(lineage)
        sink.append([make_entry(n) for n in range(300)])
        assert sink.sent_messages == 2
        first = await _notarise(transport, TOPIC, store, signer, "notary")
        assert first.stats.appended == len(lineage) + 300
        assert store.size() == len(lineage) + 300
        assert [i.entry for i in store.read(0, len(lineage))] == [
            e for e in (i.entry for i in sink.read(0, len(lineage)))
        ]
        assert trace(sink, subject).ok
        # the store already has it: append_once answers from the store without sending
        created = sink.append_once(lineage[0])
        assert created.index == 0 and sink.sent_messages == 2
    # a replay of the whole topic (another group: offsets from 0) logs nothing twice
    replay = await _notarise(transport, TOPIC, store, signer, "notary-replay")
    assert replay.stats.appended == 0 and replay.stats.duplicates == len(lineage) + 300
    note = first.stats.last_checkpoint
    assert note is not None
    checkpoint, _ = open_checkpoint(note, [signer.verifier])
    assert checkpoint.size == store.size()
    assert verify_log(store, [signer.verifier], note).ok
    store.close()


async def test_notary_quarantines_an_invalid_message_with_an_entry(tmp_path: Path, signer: Signer) -> None:
    transport = EmbeddedTransport(tmp_path / "log", partitions=1)
    await transport.ensure_topics([TOPIC], partitions=1)
    producer = transport.producer()
    await producer.start()
    await producer.send(TOPIC, b'\x00\x05{"no"', headers=[("tidm-evidence", b"1")])
    await producer.stop()
    store = SqliteEvidenceLog(tmp_path / "evidence.db")
    notary = await _notarise(transport, TOPIC, store, signer, "notary")
    assert notary.stats.rejected == 1
    (entry,) = [i.entry for i in store.read()]
    assert entry.event == EventType.ROUTE and entry.attributes["reason"] == "invalid_evidence_message"
    assert entry.attributes["offset"] == 0
    store.close()


def test_a_sink_without_a_reader_says_so(tmp_path: Path) -> None:
    sink = KafkaEvidenceSink(EmbeddedTransport(tmp_path / "log"), TOPIC)
    with pytest.raises(Exception, match="only appends"):
        sink.size()


@pytest.mark.integration
async def test_sink_and_notary_on_kafka_with_tiles_on_s3(
    kafka_bootstrap: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Callable[..., str],
    signer: Signer,
) -> None:
    topic = unique_name("evidence")
    transport = KafkaTransport(kafka_bootstrap, client_id="sink-test")
    store = TileEvidenceLog(
        S3ObjectStore(
            S3StoreSettings(
                endpoint=s3_config["endpoint"],
                bucket=s3_bucket,
                prefix="evidence",
                access_key=SecretStr(s3_config["access_key"]),
                secret_key=SecretStr(s3_config["secret_key"]),
                region=s3_config["region"],
                create_bucket=False,
            )
        )
    )
    subject, lineage = landed_lineage()
    with KafkaEvidenceSink(transport, topic, reader=store) as sink:
        for entry in lineage:
            sink.append([entry])
    notary = await _notarise(transport, topic, store, signer, unique_name("notary"))
    assert notary.stats.appended == len(lineage)
    assert [i.entry for i in store.read()] == lineage
    assert trace(store, subject).ok
    note = store.latest_checkpoint()
    assert note is not None and verify_log(store, [signer.verifier], note).ok
    store.close()
