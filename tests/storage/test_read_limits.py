"""Read limits taken atomically: in one SQLite transaction, or decided by the notary's order."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.storage.test_read_access import ASSET, CATALOG, DAY1, _fill

from tidm.evidence import MemoryEvidenceLog, SqliteEvidenceLog
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.storage import Lake
from tidm.storage.access import (
    AccessControl,
    Grant,
    Principal,
    SequencedLedger,
    counts_against,
    grant_subject,
)
from tidm.storage.errors import AccessDenied
from tidm.storage.read import LakeReader

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    return lake


def _grant(**extra: object) -> Grant:
    return Grant.model_validate({"id": "g1", "assets": [ASSET], "ceiling": "general", **extra})


def _read(reader: LakeReader) -> bool:
    try:
        reader.read_unit(ASSET, DAY1, DAY1 + HOUR, ["flow"])
    except AccessDenied as exc:
        assert "read limit of 5 reached" in str(exc)
        return False
    return True


def _fetches(log: EvidenceLog) -> list[EvidenceEntry]:
    return [e.entry for e in log.read() if e.entry.event == EventType.FETCH]


@pytest.mark.parametrize("parallel", [50, 200])
def test_parallel_reads_on_sqlite_never_exceed_the_limit(lake: Lake, tmp_path: Path, parallel: int) -> None:
    # Two AccessControls on two connections to one file stand for two processes on one host.
    logs = [SqliteEvidenceLog(tmp_path / "evidence.db") for _ in range(2)]
    try:
        readers = [
            LakeReader(
                lake,
                access=AccessControl([Principal(name="maint-a", grants=(_grant(max_reads=5),))], log),
                principal="maint-a",
                catalog=CATALOG,
            )
            for log in logs
        ]
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda i: _read(readers[i % 2]), range(parallel)))
        assert results.count(True) == 5
        fetches = _fetches(logs[0])
        assert len(fetches) == parallel, "every read, allowed or refused, is in the log"
        assert sum(counts_against(f, "maint-a", "g1") for f in fetches) == 5
        assert sum(f.attributes["decision"] == "denied" for f in fetches) == parallel - 5
    finally:
        for log in logs:
            log.close()


def test_only_read_side_fetches_count(lake: Lake) -> None:
    """Entries that merely list the grant as an input (forged or of another kind) use up nothing."""
    evidence = MemoryEvidenceLog()
    subject = grant_subject("maint-a", "g1")
    forged = [
        EvidenceEntry(EventType.RECEIVE, "a" * 64, "job:x", 1, inputs=(subject,)),
        EvidenceEntry(
            EventType.FETCH,
            "b" * 64,
            "principal:maint-a",
            1,
            inputs=(subject,),
            attributes={"decision": "allowed", "principal": "maint-a", "grant": "g1"},
        ),
        EvidenceEntry(
            EventType.FETCH,
            "c" * 64,
            "principal:maint-a",
            1,
            inputs=(subject,),
            attributes={"decision": "denied", "principal": "maint-a", "grant": "g1", "served_by": "serve"},
        ),
        EvidenceEntry(
            EventType.FETCH,
            "d" * 64,
            "principal:other",
            1,
            inputs=(subject,),
            attributes={"decision": "allowed", "principal": "other", "grant": "g1", "served_by": "serve"},
        ),
    ]
    evidence.append(forged * 5)
    access = AccessControl([Principal(name="maint-a", grants=(_grant(max_reads=1),))], evidence)
    assert access.reads_used("maint-a", "g1") == 0
    reader = LakeReader(lake, access=access, principal="maint-a", catalog=CATALOG)
    reader.read_unit(ASSET, DAY1, DAY1 + HOUR, ["flow"])
    assert access.reads_used("maint-a", "g1") == 1
    with pytest.raises(AccessDenied, match="read limit of 1 reached"):
        reader.read_unit(ASSET, DAY1, DAY1 + HOUR, ["flow"])


def test_valid_until_is_checked_at_the_moment_of_the_read(lake: Lake) -> None:
    expiry = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    # The request is decided just before the expiry; the count is taken at (and after) it.
    times = iter([expiry - dt.timedelta(microseconds=1)])
    evidence = MemoryEvidenceLog()
    access = AccessControl(
        [Principal(name="maint-a", grants=(_grant(valid_until=expiry.isoformat()),))],
        evidence,
        clock=lambda: next(times, expiry),
    )
    reader = LakeReader(lake, access=access, principal="maint-a", catalog=CATALOG)
    with pytest.raises(AccessDenied, match="expired at 2026-12-01"):
        reader.read_unit(ASSET, DAY1, DAY1 + HOUR, ["flow"])
    (entry,) = _fetches(evidence)
    assert entry.attributes["decision"] == "denied" and entry.inputs == ()


class _Sequencer:
    """A stand-in for topic + notary: appends from any replica are sequenced, in arrival order, into
    one store by a single thread, some time after the append returned."""

    def __init__(self) -> None:
        self.store = MemoryEvidenceLog()
        self._queue: queue.Queue[list[EvidenceEntry] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (entries := self._queue.get()) is not None:
            self.store.append(entries)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)


class _Sink:
    def __init__(self, sequencer: _Sequencer) -> None:
        self._sequencer = sequencer

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        self._sequencer._queue.put(list(entries))  # noqa: SLF001 - the fake's own queue
        return []

    def __getattr__(self, name: str) -> object:
        return getattr(self._sequencer.store, name)


@pytest.fixture
def sequencer() -> Iterator[_Sequencer]:
    seq = _Sequencer()
    yield seq
    seq.close()


@pytest.mark.parametrize("parallel", [50, 200])
def test_replicas_share_the_limit_through_the_sequenced_log(
    lake: Lake, sequencer: _Sequencer, parallel: int
) -> None:
    readers = []
    for _ in range(2):
        sink = _Sink(sequencer)
        ledger = SequencedLedger(sink, sequencer.store, lambda: None, timeout_s=30, poll_s=0.01)  # type: ignore[arg-type]
        access = AccessControl(
            [Principal(name="maint-a", grants=(_grant(max_reads=5),))],
            sink,  # type: ignore[arg-type]
            ledger=ledger,
        )
        readers.append(LakeReader(lake, access=access, principal="maint-a", catalog=CATALOG))
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda i: _read(readers[i % 2]), range(parallel)))
    assert results.count(True) == 5
    sequencer.close()
    fetches = _fetches(sequencer.store)
    reserved = [f for f in fetches if f.attributes["decision"] == "reserved"]
    assert sum(counts_against(f, "maint-a", "g1") for f in fetches) == len(reserved) >= 5
    denied = [f for f in fetches if f.attributes["decision"] == "denied"]
    assert len(denied) == parallel - 5, "every refused read is recorded"
    # The first 5 reservations in the log's order won, each with an `allowed` outcome naming it; the
    # later ones are refused by name: the log alone tells which reads were granted.
    allowed = [f for f in fetches if f.attributes["decision"] == "allowed"]
    assert {f.attributes["reservation"] for f in allowed} == {r.subject for r in reserved[:5]}
    assert len(allowed) == 5
    refused_reservations = {f.attributes["reservation"] for f in denied if "reservation" in f.attributes}
    assert {r.subject for r in reserved[5:]} == refused_reservations
