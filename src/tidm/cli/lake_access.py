"""Wiring of the read side: lake, evidence, grants and catalog, from `LakeAccessSettings`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tidm.cli.settings import ConfigError, LakeAccessSettings
from tidm.cli.wiring import OpenEvidenceLog, open_evidence
from tidm.semantics.classification import Level
from tidm.storage import Lake
from tidm.storage.access import AccessControl, ReadLedger, SequencedLedger, load_access
from tidm.storage.read import LakeReader, SignalInfo

__all__ = ["ReadSide", "load_signal_infos", "open_read_side", "parse_time"]


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 with a timezone, or a date (midnight UTC), or 'now'."""
    if text == "now":
        return dt.datetime.now(dt.UTC)
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        if len(text) == 10:
            return value.replace(tzinfo=dt.UTC)
        msg = f"time {text!r} needs a timezone (e.g. 2026-11-28T06:00:00Z) or be a date"
        raise ValueError(msg)
    return value


def load_signal_infos(path: Path | None) -> dict[tuple[str, str], SignalInfo]:
    """The signal catalog (JSON written from the AAS plan) as read-side metadata."""
    if path is None:
        return {}
    from tidm.semantics.catalog import SignalCatalog

    catalog = SignalCatalog.load(path)
    return {
        (entry.asset_id, entry.signal): SignalInfo(
            unit=entry.unit, semantic_id=entry.semantic_id, level=entry.level
        )
        for entry in catalog
    }


@dataclass
class ReadSide:
    lake: Lake
    evidence: OpenEvidenceLog
    access: AccessControl
    catalog: dict[tuple[str, str], SignalInfo]
    settings: LakeAccessSettings

    def reader(self, principal: str | None = None, *, channel: str) -> LakeReader:
        return LakeReader(
            self.lake,
            access=self.access,
            principal=principal or self.settings.read.principal,
            catalog=self.catalog,
            channel=channel,
            default_level=Level.CORE,
        )


def _ledger(evidence: OpenEvidenceLog, settings: LakeAccessSettings) -> ReadLedger | None:
    """Through Kafka, read counts are decided by the notary's order (shared by every replica)."""
    from tidm.ingest.evidence_sink import KafkaEvidenceSink

    if not isinstance(evidence, KafkaEvidenceSink) or not evidence.can_read:
        return None
    view = evidence.reader
    refresh = getattr(view, "refresh", None)
    if refresh is None:
        msg = f"evidence store {view!r} cannot be refreshed, so read counts could not follow the notary"
        raise ConfigError(msg)
    return SequencedLedger(evidence, view, refresh, timeout_s=settings.read.count_timeout_s)


@contextmanager
def open_read_side(settings: LakeAccessSettings, *, reads_for: str | None = None) -> Iterator[ReadSide]:
    """Lake, evidence, grants and catalog. `reads_for` names the command when it reads the evidence log
    (grant read limits count earlier reads there): with `evidence.kind: kafka` it then needs
    `evidence.store`, and fails up front naming it when that is missing."""
    evidence = open_evidence(
        settings.evidence, settings.transport, client_id="tidm-lake-access", reads_for=reads_for
    )
    try:
        yield ReadSide(
            lake=Lake.from_settings(settings.lake),
            evidence=evidence,
            access=load_access(
                settings.read.grants,
                evidence,
                ledger=_ledger(evidence, settings) if reads_for is not None else None,
                served_by=settings.read.served_by,
            ),
            catalog=load_signal_infos(settings.read.catalog),
            settings=settings,
        )
    finally:
        evidence.close()
