"""Store and forward of evidence: local appends never wait on the topic; everything reaches it, in order,
through outages and restarts (the embedded transport stands in for Kafka; an outage is a sink that
refuses while it is "down")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tidm.evidence import EventType, EvidenceEntry, SqliteEvidenceLog
from tidm.ingest.evidence_forward import ForwardingEvidenceLog
from tidm.ingest.evidence_sink import KafkaEvidenceSink, decode_message
from tidm.ingest.transports import EmbeddedTransport


def _entry(i: int) -> EvidenceEntry:
    return EvidenceEntry(
        event=EventType.CREATE,
        subject=f"{i:064x}",
        actor="agent:a1",
        time_us=1_700_000_000_000_000 + i,
        attributes={"rows": i},
    )


def _topic_entries(folder: Path, topic: str) -> list[bytes]:
    async def read() -> list[bytes]:
        transport = EmbeddedTransport(folder)
        consumer = transport.consumer([topic], group_id=f"reader-{time.monotonic_ns()}")
        await consumer.start()
        out: list[bytes] = []
        try:
            for _ in range(20):
                fetched = await consumer.getmany(timeout_ms=100, max_records=1000)
                if not fetched:
                    break
                for messages in fetched.values():
                    for message in messages:
                        out.extend(decode_message(message))
        finally:
            await consumer.stop()
        return out

    return asyncio.run(read())


def _wait_until(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


class FlakySink(KafkaEvidenceSink):
    """The real sink over the embedded log, refusing while `down` (an unreachable broker)."""

    down = False

    def start(self) -> KafkaEvidenceSink:
        if self.down:
            raise TimeoutError("broker unreachable")
        return super().start()

    def append_canonical(self, canonical: Sequence[bytes]) -> None:
        if self.down:
            raise TimeoutError("broker unreachable")
        super().append_canonical(canonical)


Opened = tuple[ForwardingEvidenceLog, FlakySink, SqliteEvidenceLog]


def _open(tmp_path: Path, *, down: bool = False) -> Opened:
    local = SqliteEvidenceLog(tmp_path / "evidence.db", durability="process")
    sink = FlakySink(EmbeddedTransport(tmp_path / "log"), "tidm.evidence", timeout_s=5.0)
    sink.down = down  # the forwarder starts the sink: an agent may start while the broker is away
    return ForwardingEvidenceLog(local, sink, tmp_path / "evidence.db.forwarded").start(), sink, local


def test_appends_land_locally_and_reach_the_topic_in_order(tmp_path: Path) -> None:
    log, _, local = _open(tmp_path)
    try:
        for i in range(0, 30, 3):
            log.append([_entry(i), _entry(i + 1), _entry(i + 2)])
        assert log.size() == 30  # local at once
        _wait_until(lambda: log.backlog == 0)
        expected = [item.canonical for item in local.read()]
    finally:
        log.close()
    assert _topic_entries(tmp_path / "log", "tidm.evidence") == expected
    assert (tmp_path / "evidence.db.forwarded").read_text().strip() == "30"


def test_an_outage_never_blocks_appends_and_the_backlog_drains_after_it(tmp_path: Path) -> None:
    log, sink, local = _open(tmp_path, down=True)
    try:
        started = time.monotonic()
        for i in range(200):
            log.append([_entry(i)])
        assert time.monotonic() - started < 5.0  # appends are local: no wait on the topic
        _wait_until(lambda: log.failures >= 2)
        assert log.backlog == 200
        sink.down = False  # the uplink is back
        _wait_until(lambda: log.backlog == 0, timeout_s=60.0)
        expected = [item.canonical for item in local.read()]
    finally:
        log.close()
    assert _topic_entries(tmp_path / "log", "tidm.evidence") == expected


def test_a_restart_resumes_where_forwarding_stopped(tmp_path: Path) -> None:
    log, sink, _ = _open(tmp_path)
    log.append([_entry(i) for i in range(10)])
    _wait_until(lambda: log.backlog == 0)
    sink.down = True
    log.append([_entry(i) for i in range(10, 25)])
    _wait_until(lambda: log.failures >= 1)
    log.close()  # stops with 15 entries unsent: they stay in the local log
    again, _, local = _open(tmp_path)
    try:
        assert again.forwarded == 10
        _wait_until(lambda: again.backlog == 0)
        expected = [item.canonical for item in local.read()]
    finally:
        again.close()
    assert _topic_entries(tmp_path / "log", "tidm.evidence") == expected  # each entry once, in order


def test_a_lost_progress_file_sends_again_rather_than_losing_entries(tmp_path: Path) -> None:
    log, _, _ = _open(tmp_path)
    log.append([_entry(i) for i in range(5)])
    _wait_until(lambda: log.backlog == 0)
    log.close()
    (tmp_path / "evidence.db.forwarded").unlink()
    again, _, _ = _open(tmp_path)
    try:
        _wait_until(lambda: again.backlog == 0)
    finally:
        again.close()
    sent = _topic_entries(tmp_path / "log", "tidm.evidence")
    assert len(sent) == 10 and sent[:5] == sent[5:]  # duplicates the notary skips by their bytes


@pytest.mark.parametrize("value", ["", "garbage", "12x"])
def test_an_unreadable_progress_file_means_from_the_start(tmp_path: Path, value: str) -> None:
    (tmp_path / "evidence.db.forwarded").write_text(value)
    log, _, _ = _open(tmp_path)
    try:
        assert log.forwarded == 0
    finally:
        log.close()


def test_a_progress_file_ahead_of_its_log_sends_everything_again(tmp_path: Path) -> None:
    (tmp_path / "evidence.db.forwarded").write_text("99")  # about another log than this one
    log, _, local = _open(tmp_path)
    try:
        assert log.forwarded == 0
        log.append([_entry(i) for i in range(3)])
        _wait_until(lambda: log.backlog == 0)
        expected = [item.canonical for item in local.read()]
    finally:
        log.close()
    assert _topic_entries(tmp_path / "log", "tidm.evidence") == expected
