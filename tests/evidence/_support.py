"""Helpers shared by the evidence tests: digests, entries, and the Go note package's example keys."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tidm.evidence import EventType, EvidenceEntry, SqliteEvidenceLog

# The example key pair of golang.org/x/mod/sumdb/note (note.go docs and note_test.go).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)


REPLAYED_FROM = 1_000_000


def digest(label: str) -> str:
    """A stable fake object digest."""
    return hashlib.sha256(label.encode()).hexdigest()


def make_entry(
    number: int,
    *,
    inputs: tuple[str, ...] = (),
    event: EventType = EventType.RECEIVE,
    actor: str = "agent-1",
) -> EvidenceEntry:
    """Entry number `number` about object `object-<number>`."""
    return EvidenceEntry(
        event=event,
        subject=digest(f"object-{number}"),
        actor=actor,
        time_us=1_700_000_000_000_000 + number,
        inputs=inputs,
        attributes={"topic": "samples", "partition": number % 4, "offset": number},
    )


def append_worker(path: str, worker: int, batches: int, batch_size: int, start_together: Any) -> None:
    """Run in a child process: append `batches` batches to the shared SQLite log, interleaved with
    `append_once` calls that every worker makes for the same 10 entries (a replay racing a replay)."""
    log = SqliteEvidenceLog(path, timeout=60.0)
    start_together.wait()
    try:
        for batch in range(batches):
            start = (worker * batches + batch) * batch_size
            log.append([make_entry(n, actor=f"worker-{worker}") for n in range(start, start + batch_size)])
            log.append_once(make_entry(REPLAYED_FROM + batch % 10, actor="replayer"))
            time.sleep(0.005)  # some work between batches, so the writers take turns
    finally:
        log.close()


def landed_lineage(
    key: str = "clean/site=plant-1/asset=a1/date=2026-01-01/t-0-0-9.parquet",
    file_digest: str | None = None,
    *,
    batches: int = 2,
    tag: str = "",
) -> tuple[str, list[EvidenceEntry]]:
    """The entries the pipeline writes for one landed object: per batch agent CREATE + SEND and job
    RECEIVE (verified), then the clean step and the landing SEND. Returns (object digest, entries)."""
    now = 1_700_000_000_000_000
    batch_digests = [digest(f"batch-{tag}{key}-{n}") for n in range(batches)]
    entries: list[EvidenceEntry] = []
    for n, batch in enumerate(batch_digests):
        entries += [
            EvidenceEntry(EventType.CREATE, batch, "agent:a1", now + n, (), {"batch_id": f"b{n}"}),
            EvidenceEntry(EventType.SEND, batch, "agent:a1", now + n, (batch,), {"topic": "t", "offset": n}),
            EvidenceEntry(
                EventType.RECEIVE,
                batch,
                "job:clean",
                now + n,
                (batch,),
                {"verified": "sha256+ed25519", "topic": "t", "offset": n},
            ),
        ]
    clean = digest(f"clean-{tag}{key}")
    landed = file_digest or digest(f"file-{tag}{key}")
    entries += [
        EvidenceEntry(
            EventType.CONTENT_MODIFIED, clean, "job:clean", now + 10, tuple(batch_digests), {"rows": 5}
        ),
        EvidenceEntry(
            EventType.SEND, landed, "job:clean", now + 11, (clean,), {"object": key, "lake": "test"}
        ),
    ]
    return landed, entries
