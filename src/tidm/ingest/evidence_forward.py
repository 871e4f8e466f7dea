"""Store and forward for evidence: appends land in a local log, a thread sends them on to the topic.

An edge agent must keep collecting while the uplink is down (its spool holds the batches); an append
that waited on the broker would stop it exactly then. `ForwardingEvidenceLog` appends to a local log
(durable, never waiting on the network) and a background thread forwards the entries in log order to
the evidence topic through a `KafkaEvidenceSink`, retrying with capped back-off while the broker is
away. How far it got is kept in a small file beside the local log; after a crash the entries since
are sent again, and the notary skips those whose exact bytes it already sequenced. Reads are the
local log's: the agent reads only its own entries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tidm.evidence.api import EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Signer
from tidm.ingest.evidence_sink import KafkaEvidenceSink

__all__ = ["ForwardingEvidenceLog"]

log = logging.getLogger(__name__)

_BATCH = 500
_RETRY_INITIAL_S = 0.5
_RETRY_MAX_S = 30.0


class ForwardingEvidenceLog:
    """An `EvidenceLog` that appends locally and forwards to the evidence topic in the background."""

    def __init__(
        self,
        local: EvidenceLog,
        sink: KafkaEvidenceSink,
        progress: Path,
        *,
        batch: int = _BATCH,
        drain_s: float = 5.0,
    ) -> None:
        self._local = local
        self._sink = sink
        self._progress = progress
        self._batch = batch
        self._drain_s = drain_s
        self.forwarded = _read_progress(progress)
        if self.forwarded > local.size():
            # The local log is not the one the progress was about (replaced or restored): send it all
            # again rather than skip entries; the notary drops the ones it already holds.
            log.warning("evidence: %s is ahead of its log; forwarding from the start", progress.name)
            self.forwarded = 0
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ForwardingEvidenceLog:
        """Start forwarding (the thread starts the sink, retrying while the broker is away); entries
        appended before are sent first."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="evidence-forward", daemon=True)
            self._thread.start()
        return self

    @property
    def backlog(self) -> int:
        """Entries appended locally and not yet acknowledged by the evidence topic."""
        return max(self._local.size() - self.forwarded, 0)

    def close(self) -> None:
        """Forward what is left for up to `drain_s` seconds, then close the sink and the local log.
        Entries still unsent stay in the local log and go at the next start."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=self._drain_s + self._sink.timeout_s)
        left = self.backlog
        try:
            self._sink.close()
        finally:
            self._local.close()
        if left:
            log.warning("evidence: %d entries not forwarded yet; they go at the next start", left)

    # -- forwarding -------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = _RETRY_INITIAL_S
        stopping_at: float | None = None
        while True:
            if self._stop.is_set():
                if stopping_at is None:
                    stopping_at = time.monotonic() + self._drain_s
                if self.backlog == 0 or time.monotonic() >= stopping_at:
                    return
            try:
                sent = self._forward_some()
            except Exception as exc:  # noqa: BLE001 - an uplink failure: retry; never stop the agent
                self.failures += 1
                log.warning(
                    "evidence: forwarding to %s failed (%s); %d entries wait, retrying in %.1f s",
                    self._sink.topic,
                    type(exc).__name__,
                    self.backlog,
                    delay,
                )
                if self._stop.wait(delay):
                    return  # stopping while the topic is away: the rest goes at the next start
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            delay = _RETRY_INITIAL_S
            if not sent:
                if self._stop.is_set():
                    return
                self._wake.wait(1.0)
                self._wake.clear()

    def _forward_some(self) -> int:
        size = self._local.size()
        if self.forwarded >= size:
            return 0
        self._sink.start()  # at once when started; a failure is retried like a failed send
        end = min(size, self.forwarded + self._batch)
        canonical = [item.canonical for item in self._local.read(self.forwarded, end)]
        self._sink.append_canonical(canonical)
        self.forwarded = end
        _write_progress(self._progress, end)
        return len(canonical)

    # -- the EvidenceLog: appends locally, reads locally ------------------------------------------

    def append(self, entries: Sequence[EvidenceEntry]) -> list[LoggedEntry]:
        out = self._local.append(entries)
        self._wake.set()
        return out

    def append_once(self, entry: EvidenceEntry) -> LoggedEntry:
        out = self._local.append_once(entry)
        self._wake.set()
        return out

    def sync(self) -> None:
        """Make the local appends survive a power cut (the topic gets them when it can)."""
        sync = getattr(self._local, "sync", None)
        if sync is not None:
            sync()

    def size(self) -> int:
        return self._local.size()

    def read(self, start: int = 0, end: int | None = None) -> Iterator[LoggedEntry]:
        return self._local.read(start, end)

    def find(self, subject: str) -> list[LoggedEntry]:
        return self._local.find(subject)

    def by_input(self, subject: str) -> list[LoggedEntry]:
        return self._local.by_input(subject)

    def root(self, size: int | None = None) -> bytes:
        return self._local.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return self._local.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self._local.consistency_proof(old_size, new_size)

    def checkpoint(self, signer: Signer | Sequence[Signer], origin: str | None = None) -> str:
        return self._local.checkpoint(signer, origin)


def _read_progress(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0  # unreadable: send everything again (the notary dedups)


def _write_progress(path: Path, forwarded: int) -> None:
    # Not fsynced: if it is lost, entries are sent again and the notary skips them.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{forwarded}\n", encoding="ascii")
    os.replace(tmp, path)
