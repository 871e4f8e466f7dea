"""The Units view's work: which units a principal may see, and one unit's range as chart series.

Reads go through the read service's `LakeReader` (grants, classification ceilings, FETCH evidence),
so the console never reads the lake any other way than `tidm serve` and `tidm query` do.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from tidm.console.downsample import Trend, downsample
from tidm.semantics.classification import Level
from tidm.storage.access import AccessControl, ReadRequest
from tidm.storage.catalog import inventory
from tidm.storage.lake import Lake
from tidm.storage.read import LakeReader, SignalInfo, to_us

__all__ = ["UnitRef", "UnitSeries", "read_series", "visible_units"]


@dataclass(frozen=True)
class UnitRef:
    """A (site, asset) the principal may read, with its signals (above-ceiling ones left out)."""

    site: str
    asset: str
    signals: tuple[str, ...]
    rows: int
    first_us: int
    last_us: int


def visible_units(
    lake: Lake,
    access: AccessControl,
    principal: str,
    catalog: Mapping[tuple[str, str], SignalInfo],
    *,
    table: str = "clean",
    default_level: Level = Level.CORE,
) -> list[UnitRef]:
    """The units of `table` the principal's grants allow, by the same decision a read takes (not
    recorded: listing what one may ask for is not a read of it)."""
    frame = inventory(lake, [table], catalog).filter(pl.col("rows") > 0)
    out = []
    for (site, asset), group in frame.group_by("site", "asset", maintain_order=True):
        signals = sorted(str(s) for s in group["signal"].to_list())
        levels = {s: catalog.get((str(asset), s), SignalInfo(level=default_level)).level for s in signals}
        first = group["first_ts"].min()
        last = group["last_ts"].max()
        assert isinstance(first, dt.datetime)  # noqa: S101 - rows > 0, so a time exists
        assert isinstance(last, dt.datetime)  # noqa: S101
        request = ReadRequest(
            site=str(site),
            asset=str(asset),
            table=table,
            start_us=to_us(first),
            end_us=to_us(last) + 1,
            signals=None,
            channel="console",
        )
        decision = access.decide(principal, request, levels)
        if not decision.allowed:
            continue
        shown = tuple(s for s in signals if levels[s] <= decision.ceiling)
        if not shown:
            continue
        rows = int(group.filter(pl.col("signal").is_in(shown))["rows"].sum())
        out.append(UnitRef(str(site), str(asset), shown, rows, request.start_us, request.end_us))
    return sorted(out, key=lambda u: (u.site, u.asset))


@dataclass(frozen=True)
class UnitSeries:
    """One signal's chart: the cleaned trend, flagged and rejected samples as marks."""

    signal: str
    unit: str | None
    level: str
    trend: Trend
    flagged: Trend
    rejected: Trend | None

    def to_json(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "unit": self.unit,
            "level": self.level,
            "raw_points": self.trend.raw_points,
            "points": self.trend.points,
            "gaps": self.trend.gaps,
            "flagged_raw": self.flagged.raw_points,
            "rejected_raw": self.rejected.raw_points if self.rejected is not None else None,
            "trend": _xy(self.trend),
            "flagged": _xy(self.flagged),
            "rejected": _xy(self.rejected) if self.rejected is not None else None,
        }


def _xy(trend: Trend) -> list[list[float | None]]:
    """[x seconds, y] for uPlot; NaN (a break) becomes null."""
    xs = (trend.ts_us / 1e6).tolist()
    ys = [None if math.isnan(y) else y for y in trend.value.tolist()]
    return [xs, ys]


def _columns(frame: pl.DataFrame, signal: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    part = frame.filter(pl.col("signal") == signal)
    ts = part["ts"].dt.epoch("us").to_numpy()
    value = part["value"].cast(pl.Float64).to_numpy()
    flags = part["flags"].to_numpy() if "flags" in part.columns else np.zeros(part.height, dtype=np.uint32)
    return ts, value, flags


def _trend(
    ts: np.ndarray, value: np.ndarray, start_us: int, end_us: int, buckets: int | None, gaps: bool = True
) -> Trend:
    if buckets is None:  # raw: every sample, for comparison and small ranges
        return downsample(ts, value, start_us=start_us, end_us=end_us, buckets=max(1, ts.size))
    gap = None if gaps else 2**62
    return downsample(ts, value, start_us=start_us, end_us=end_us, buckets=buckets, gap_us=gap)


def read_series(
    reader: LakeReader,
    *,
    asset: str,
    site: str | None,
    start: dt.datetime,
    end: dt.datetime,
    signals: Sequence[str] | None,
    catalog: Mapping[tuple[str, str], SignalInfo],
    buckets: int | None,
    rejected_reader: LakeReader | None = None,
) -> list[UnitSeries]:
    """Read the range (one FETCH, or two with the rejected table) and make one chart per signal."""
    start_us, end_us = to_us(start), to_us(end)
    columns = ["ts", "signal", "value", "flags"]
    lazy = reader.read_unit(asset, start, end, signals, "clean", site=site)
    frame = _select(lazy, columns).collect()
    rejected: pl.DataFrame | None = None
    if rejected_reader is not None:
        rejected = _select(
            rejected_reader.read_unit(asset, start, end, signals, "rejected", site=site), columns
        ).collect()
    names = sorted(set(frame["signal"].to_list()) | set(signals or ()))
    out = []
    for name in names:
        ts, value, flags = _columns(frame, name)
        marked = flags != 0
        info = catalog.get((asset, name), SignalInfo())
        rej = None
        if rejected is not None:
            rts, rvalue, _ = _columns(rejected, name)
            rej = _trend(rts, rvalue, start_us, end_us, buckets, gaps=False)
        out.append(
            UnitSeries(
                signal=name,
                unit=info.unit,
                level=info.level.gbt,
                trend=_trend(ts, value, start_us, end_us, buckets),
                flagged=_trend(ts[marked], value[marked], start_us, end_us, buckets, gaps=False),
                rejected=rej,
            )
        )
    return out


def _select(frame: pl.LazyFrame, columns: Sequence[str]) -> pl.LazyFrame:
    have = frame.collect_schema().names()
    exprs: list[pl.Expr] = []
    for c in columns:
        if c in have:
            exprs.append(pl.col(c).cast(pl.String) if c == "signal" else pl.col(c))
        elif c == "flags":
            exprs.append(pl.lit(0, dtype=pl.UInt32).alias("flags"))
        elif c == "value":
            exprs.append(pl.lit(None, dtype=pl.Float64).alias("value"))
    return frame.select(exprs).sort("signal", "ts")
