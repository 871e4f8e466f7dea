"""The lake's inventory for `tidm catalog`: what is there (sites, assets, signals), since when,
how many rows, joined with the signal catalog's unit, semantic id and classification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import polars as pl

from tidm.storage.lake import Lake
from tidm.storage.read import SignalInfo

__all__ = ["inventory"]

_COLUMNS: dict[str, Any] = {
    "table": pl.String,
    "site": pl.String,
    "asset": pl.String,
    "signal": pl.String,
    "unit": pl.String,
    "semantic_id": pl.String,
    "level": pl.String,
    "rows": pl.UInt64,
    "first_ts": pl.Datetime("us", "UTC"),
    "last_ts": pl.Datetime("us", "UTC"),
    "objects": pl.UInt32,
}


def inventory(
    lake: Lake, tables: Sequence[str], catalog: Mapping[tuple[str, str], SignalInfo]
) -> pl.DataFrame:
    """One row per (table, site, asset, signal); catalog signals with no data yet show zero rows."""
    parts = []
    for table in tables:
        keys = [k for k in lake.list_keys(table) if k.endswith(".parquet")]
        if not keys:
            continue
        scanned = (
            pl.scan_parquet(
                [lake.uri(k) for k in keys],
                storage_options=lake.storage_options,
                include_file_paths="path",
                hive_partitioning=False,
                missing_columns="insert",
                extra_columns="ignore",
            )
            .select(pl.col("signal").cast(pl.String), "ts", "path")
            .with_columns(
                pl.col("path").str.extract(r"/site=([^/]+)/").str.replace_all("%20", " ").alias("site_enc"),
                pl.col("path").str.extract(r"/asset=([^/]+)/").alias("asset_enc"),
            )
            .group_by("site_enc", "asset_enc", "signal")
            .agg(
                pl.len().cast(pl.UInt64).alias("rows"),
                pl.col("ts").min().alias("first_ts"),
                pl.col("ts").max().alias("last_ts"),
                pl.col("path").n_unique().cast(pl.UInt32).alias("objects"),
            )
            .collect()
        )
        parts.append(
            scanned.with_columns(
                pl.lit(table).alias("table"),
                pl.col("site_enc").map_elements(unquote, return_dtype=pl.String).alias("site"),
                pl.col("asset_enc").map_elements(unquote, return_dtype=pl.String).alias("asset"),
            ).drop("site_enc", "asset_enc")
        )
    data = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(
            schema={k: v for k, v in _COLUMNS.items() if k not in ("unit", "semantic_id", "level")}
        )
    )
    meta = pl.DataFrame(
        {
            "asset": [a for a, _ in catalog],
            "signal": [s for _, s in catalog],
            "unit": [i.unit for i in catalog.values()],
            "semantic_id": [i.semantic_id for i in catalog.values()],
            "level": [i.level.gbt for i in catalog.values()],
        },
        schema={
            "asset": pl.String,
            "signal": pl.String,
            "unit": pl.String,
            "semantic_id": pl.String,
            "level": pl.String,
        },
    )
    joined = data.join(meta, on=["asset", "signal"], how="full", coalesce=True)
    joined = joined.with_columns(
        pl.col("rows").fill_null(0),
        pl.col("objects").fill_null(0),
        pl.col("table").fill_null("-"),
        pl.col("level").fill_null("unclassified"),
    )
    return joined.select(list(_COLUMNS)).sort("table", "site", "asset", "signal", nulls_last=True)
