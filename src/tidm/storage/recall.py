"""Recall and retention: the data provider withdraws data, or it ages out; either way the deletion
is written to the evidence log (DROP for a recall, EXPIRE for retention), naming the SHA-256 of the
bytes that were deleted, so verification reports a recorded deletion rather than tampering.

An object partly inside a recalled range is rewritten without the recalled rows under the same
key; the log then holds a DROP of the old bytes and a CONTENT_MODIFIED of the new ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.storage.errors import LakeError
from tidm.storage.lake import Lake, partition_value
from tidm.storage.read import to_us, unit_objects

__all__ = ["RecallResult", "expire", "recall"]


@dataclass
class RecallResult:
    deleted: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    rows_removed: int = 0


def _now_us() -> int:
    return time.time_ns() // 1000


def recall(
    lake: Lake,
    evidence: EvidenceLog,
    *,
    asset: str,
    start: dt.datetime,
    end: dt.datetime,
    reason: str,
    actor: str,
    tables: Sequence[str] = ("clean", "rejected"),
    site: str | None = None,
) -> RecallResult:
    """Delete every row of `asset` with start <= ts < end from `tables`, with DROP evidence."""
    if not reason.strip():
        msg = "a recall needs a reason (it is written to the evidence log)"
        raise LakeError(msg)
    to_us(start), to_us(end)  # in the lake's range, or a clear error
    if end <= start:
        msg = f"empty recall range: {start.isoformat()} is not before {end.isoformat()}"
        raise LakeError(msg)
    lo = pa.scalar(start.astimezone(dt.UTC), pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(end.astimezone(dt.UTC), pa.timestamp("us", tz="UTC"))
    result = RecallResult()
    for table_name in tables:
        for key in unit_objects(lake, table=table_name, asset=asset, start=start, end=end, site=site).keys:
            data = lake.read_bytes(key)
            table = pq.read_table(io.BytesIO(data))
            ts = table.column("ts")
            inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
            removed = pc.sum(pc.cast(inside, pa.int64())).as_py() or 0
            if removed == 0:
                continue
            old = hashlib.sha256(data).hexdigest()
            common = {
                "object": key,
                "asset": asset,
                "reason": reason,
                "rows": removed,
                "start_us": int(lo.value),
                "end_us": int(hi.value),
                "lake": lake.description,
            }
            entries = [EvidenceEntry(EventType.DROP, old, actor, _now_us(), (), {**common, "recall": True})]
            if removed == table.num_rows:
                lake.purge(key)
                result.deleted.append(key)
            else:
                kept = table.filter(pc.invert(inside))
                lake.purge(key)  # older versions hold the recalled rows too
                landed = lake.write_parquet(key, kept)
                entries.append(
                    EvidenceEntry(
                        EventType.CONTENT_MODIFIED,
                        landed.sha256,
                        actor,
                        _now_us(),
                        (old,),
                        {"object": key, "step": "recall", "rows": landed.rows, "rows_removed": removed},
                    )
                )
                result.rewritten.append(key)
            evidence.append(entries)
            result.rows_removed += removed
    return result


def expire(
    lake: Lake,
    evidence: EvidenceLog,
    *,
    retention: Mapping[str, dt.timedelta],
    actor: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """Delete whole days older than each table's retention, with an EXPIRE entry per object."""
    now = now or dt.datetime.now(dt.UTC)
    expired: list[str] = []
    for table_name, keep in retention.items():
        cutoff = (now - keep).date()
        for key in lake.list_keys(table_name):
            day = next(
                (partition_value(seg, "date") for seg in key.split("/") if seg.startswith("date=")), None
            )
            if day is None or dt.date.fromisoformat(day) >= cutoff:
                continue
            digest = hashlib.sha256(lake.read_bytes(key)).hexdigest()
            lake.purge(key)
            evidence.append(
                [
                    EvidenceEntry(
                        EventType.EXPIRE,
                        digest,
                        actor,
                        _now_us(),
                        (),
                        {
                            "object": key,
                            "table": table_name,
                            "retention_days": keep.days,
                            "lake": lake.description,
                        },
                    )
                ]
            )
            expired.append(key)
    return expired
