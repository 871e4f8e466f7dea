"""The read API for maintenance teams: one unit's samples over a time range, as a polars LazyFrame.

Partition pruning happens here (only the site/asset/date folders that can hold the range are
listed); predicate pushdown (time range, signals) is left to polars, which uses the row-group
statistics the writer keeps (objects are sorted by signal, then time). Every read goes through
`LakeReader`, which checks the caller's grants and records the read in the evidence log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tidm.semantics.classification import Level
from tidm.storage.access import AccessControl, Decision, ReadRequest
from tidm.storage.errors import AccessDenied, LakeError, RequestTooLarge
from tidm.storage.lake import Lake, partition_segment, partition_value
from tidm.storage.stream import count_rows, merged_batches, output_schema, plan_objects

__all__ = ["LakeReader", "SignalInfo", "UnitObjects", "UnitStream", "to_us", "unit_objects"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_US = 2**53


def to_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        msg = f"time {value.isoformat()} has no timezone; pass UTC times (e.g. 2026-11-28T00:00:00Z)"
        raise LakeError(msg)
    delta = value - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    # Samples are after 1970, and evidence entries keep times as exact JSON integers (< 2**53 µs,
    # the year 2255): anything outside is a mistake, not a query.
    if not 0 <= us < _MAX_US:
        msg = f"time {value.isoformat()} is outside the lake's range (1970-01-01 to 2255-06-05 UTC)"
        raise LakeError(msg)
    return us


@dataclass(frozen=True)
class SignalInfo:
    """Catalog metadata joined onto reads on request."""

    unit: str | None = None
    semantic_id: str | None = None
    level: Level = Level.GENERAL


@dataclass
class UnitStream:
    """A streamed read: the output schema, the batches (a generator: close it to stop early), the
    objects read and the grant decision that allowed it."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    objects: list[str]
    decision: Decision

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class UnitObjects:
    keys: list[str]
    sites: list[str]


def unit_objects(
    lake: Lake, *, table: str, asset: str, start: dt.datetime, end: dt.datetime, site: str | None = None
) -> UnitObjects:
    """Keys of the objects of `table` that may hold rows of `asset` with start <= ts < end."""
    first_day, last_day = (
        start.astimezone(dt.UTC).date(),
        (end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).date(),
    )
    sites = (
        [site]
        if site is not None
        else [v for v in (partition_value(d, "site") for d in lake.list_dirs(table)) if v is not None]
    )
    keys: list[str] = []
    found_sites: list[str] = []
    for s in sites:
        asset_prefix = f"{table}/{partition_segment('site', s)}/{partition_segment('asset', asset)}"
        days = [d for d in lake.list_dirs(asset_prefix) if d.startswith("date=")]
        hit = False
        for day_dir in days:
            try:
                day = dt.date.fromisoformat(day_dir[len("date=") :])
            except ValueError:
                continue
            if first_day <= day <= last_day:
                keys.extend(k for k in lake.list_keys(f"{asset_prefix}/{day_dir}") if k.endswith(".parquet"))
                hit = True
        if hit:
            found_sites.append(s)
    return UnitObjects(sorted(keys), found_sites)


def _union_schema(lake: Lake, keys: Sequence[str]) -> pa.Schema:
    schemas = [pq.read_schema(lake.path(k), filesystem=lake.filesystem) for k in keys]
    return pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")


class LakeReader:
    """Reads for one principal: checked against grants, recorded as FETCH evidence."""

    def __init__(
        self,
        lake: Lake,
        *,
        access: AccessControl,
        principal: str,
        catalog: Mapping[tuple[str, str], SignalInfo] | None = None,
        channel: str = "api",
        default_level: Level = Level.CORE,
    ) -> None:
        self._lake = lake
        self._access = access
        self._principal = principal
        self._catalog = dict(catalog or {})
        self._channel = channel
        # Signals the catalog doesn't know count as this level; core (the default) denies them to
        # every grant below core, so an incomplete catalog never widens access.
        self._default_level = default_level

    def _levels(self, asset: str, signals: Sequence[str] | None) -> dict[str, Level]:
        """Catalog levels of the asset's signals (and of any asked-for signal the catalog lacks)."""
        levels = {s: info.level for (a, s), info in self._catalog.items() if a == asset}
        for signal in signals or ():
            levels.setdefault(signal, self._default_level)
        return levels

    def _authorize(
        self,
        asset: str,
        start: dt.datetime,
        end: dt.datetime,
        signals: Sequence[str] | None,
        table: str,
        site: str | None,
    ) -> tuple[int, int, UnitObjects, Decision, list[str] | None, list[str]]:
        """Check the range, list the objects, decide and count the read (recorded as FETCH).

        Returns (start_us, end_us, objects, decision, signals to keep or None for all, to drop)."""
        start_us, end_us = to_us(start), to_us(end)
        if end_us <= start_us:
            msg = f"empty time range: {start.isoformat()} is not before {end.isoformat()}"
            raise LakeError(msg)
        found = unit_objects(self._lake, table=table, asset=asset, start=start, end=end, site=site)
        request = ReadRequest(
            site=site if site is not None else (found.sites[0] if len(found.sites) == 1 else None),
            asset=asset,
            table=table,
            start_us=start_us,
            end_us=end_us,
            signals=tuple(signals) if signals is not None else None,
            channel=self._channel,
        )
        levels = self._levels(asset, signals)
        decision = self._access.admit(self._principal, request, levels, found.keys)
        if not decision.allowed:
            msg = f"read of {asset!r} ({table}) by {self._principal!r} refused: {decision.reason}"
            raise AccessDenied(msg, visible=decision.visible, public=decision.public_reason)
        keep: list[str] | None = list(signals) if signals is not None else None
        drop: list[str] = list(decision.withheld)
        if signals is None and self._default_level > decision.ceiling:
            keep = sorted(s for s, level in levels.items() if level <= decision.ceiling)
        return start_us, end_us, found, decision, keep, drop

    def read_unit(
        self,
        asset: str,
        start: dt.datetime,
        end: dt.datetime,
        signals: Sequence[str] | None = None,
        table: str = "clean",
        *,
        site: str | None = None,
        with_metadata: bool = False,
    ) -> pl.LazyFrame:
        """Samples of `asset` with start <= ts < end (UTC), optionally only `signals`, as a LazyFrame.

        Raises AccessDenied (recorded in the evidence log) when no grant of the principal allows it.
        With `with_metadata`, unit and semantic id from the catalog are joined as columns. For large
        results use `stream_unit`, which reads in bounded memory.
        """
        start_us, end_us, found, _, keep, drop = self._authorize(asset, start, end, signals, table, site)
        return self._scan(found.keys, start_us, end_us, keep, drop, asset, with_metadata)

    def stream_unit(
        self,
        asset: str,
        start: dt.datetime,
        end: dt.datetime,
        signals: Sequence[str] | None = None,
        table: str = "clean",
        *,
        site: str | None = None,
        with_metadata: bool = False,
        batch_rows: int = 100_000,
        max_span: dt.timedelta | None = None,
        max_rows: int | None = None,
    ) -> UnitStream:
        """The same read as `read_unit`, streamed in (signal, ts) order in bounded memory.

        The caps are checked before the read is counted: a span above `max_span` or more than
        `max_rows` matching rows raise `RequestTooLarge`. Objects are opened (footers read) before
        this returns, so an unavailable lake fails here, not in the middle of a response.
        """
        if max_span is not None and end - start > max_span:
            to_us(start), to_us(end)  # a bad time is named as such first
            msg = (
                f"time range of {end - start} is above the per-request cap of {max_span}; "
                "split it into several reads"
            )
            raise RequestTooLarge(msg)
        if max_rows is not None:
            self._check_rows(asset, start, end, signals, table, site, max_rows)
        start_us, end_us, found, decision, keep, drop = self._authorize(
            asset, start, end, signals, table, site
        )
        plans = plan_objects(self._lake, found.keys, start_us, end_us, keep)
        schema = output_schema([p.file.schema_arrow for p in plans], with_metadata)
        meta = (
            {s: (i.unit, i.semantic_id) for (a, s), i in self._catalog.items() if a == asset}
            if with_metadata
            else None
        )
        batches = merged_batches(
            plans, schema, start_us, end_us, keep=keep, drop=drop, batch_rows=batch_rows, metadata=meta
        )
        return UnitStream(schema=schema, batches=batches, objects=found.keys, decision=decision)

    def _check_rows(
        self,
        asset: str,
        start: dt.datetime,
        end: dt.datetime,
        signals: Sequence[str] | None,
        table: str,
        site: str | None,
        max_rows: int,
    ) -> None:
        """Refuse a read of more than `max_rows` rows, from the footers when they decide it (the
        rows of the row groups that can match), else from the ts and signal columns."""
        start_us, end_us = to_us(start), to_us(end)
        if end_us <= start_us:
            return  # named by _authorize
        found = unit_objects(self._lake, table=table, asset=asset, start=start, end=end, site=site)
        plans = plan_objects(self._lake, found.keys, start_us, end_us, signals)
        if sum(p.rows_bound for p in plans) <= max_rows:
            return
        rows = count_rows(plans, start_us, end_us, signals, ())
        if rows > max_rows:
            msg = (
                f"the read holds {rows} rows, above the per-request cap of {max_rows}; "
                "narrow the time range or the signals"
            )
            raise RequestTooLarge(msg)

    def _scan(
        self,
        keys: Sequence[str],
        start_us: int,
        end_us: int,
        keep: list[str] | None,
        drop: list[str],
        asset: str,
        with_metadata: bool,
    ) -> pl.LazyFrame:
        if not keys:
            frame = pl.LazyFrame(
                schema={"ts": pl.Datetime("us", "UTC"), "asset_id": pl.String, "signal": pl.String}
            )
        else:
            schema = pl.from_arrow(_union_schema(self._lake, keys).empty_table())
            assert isinstance(schema, pl.DataFrame)  # noqa: S101 - from_arrow of a table is a frame
            frame = pl.scan_parquet(
                [self._lake.uri(k) for k in keys],
                storage_options=self._lake.storage_options,
                schema=schema.schema,
                missing_columns="insert",
                extra_columns="ignore",
                hive_partitioning=False,
            )
        lo = pl.lit(start_us).cast(pl.Datetime("us", "UTC"))
        hi = pl.lit(end_us).cast(pl.Datetime("us", "UTC"))
        frame = frame.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
        if keep is not None:
            frame = frame.filter(pl.col("signal").cast(pl.String).is_in(keep))
        if drop:
            frame = frame.filter(~pl.col("signal").cast(pl.String).is_in(drop))
        if with_metadata:
            meta = pl.LazyFrame(
                {
                    "signal": [s for (a, s) in self._catalog if a == asset],
                    "unit": [i.unit for (a, _s), i in self._catalog.items() if a == asset],
                    "semantic_id": [i.semantic_id for (a, _s), i in self._catalog.items() if a == asset],
                },
                schema={"signal": pl.String, "unit": pl.String, "semantic_id": pl.String},
            )
            frame = frame.with_columns(pl.col("signal").cast(pl.String)).join(meta, on="signal", how="left")
        return frame
