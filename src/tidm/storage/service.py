"""The HTTP read service (`tidm serve`): the read API over HTTP for maintenance teams' tools.

Bearer tokens identify principals; every request goes through the same grant checks and FETCH
evidence as the Python API and the CLI. Results stream as Arrow IPC, CSV or JSON lines in batches,
or come whole as Parquet. Health, readiness and Prometheus metrics are served alongside, and
FastAPI publishes the OpenAPI description at /openapi.json.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import polars as pl
import pyarrow as pa
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest

from tidm.semantics.classification import Level
from tidm.storage.access import AccessControl
from tidm.storage.catalog import inventory
from tidm.storage.errors import AccessDenied, LakeError, StorageError
from tidm.storage.lake import Lake
from tidm.storage.read import LakeReader, SignalInfo

__all__ = ["create_app"]

Format = Literal["arrow", "parquet", "csv", "json"]
_MEDIA = {
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "json": "application/x-ndjson",
}


def _parse_time(name: str, text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"'{name}' is not an ISO 8601 time: {text[:64]!r}") from None
    if value.tzinfo is None:
        if len(text) == 10:
            return value.replace(tzinfo=dt.UTC)
        raise HTTPException(400, f"'{name}' needs a timezone (e.g. 2026-11-28T06:00:00Z)")
    return value


def _plain(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col(pl.Categorical).cast(pl.String))


def create_app(
    lake: Lake,
    access: AccessControl,
    catalog: Mapping[tuple[str, str], SignalInfo] | None = None,
    *,
    default_level: Level = Level.CORE,
    batch_rows: int = 100_000,
) -> FastAPI:
    """The FastAPI application serving `lake` under `access`."""
    app = FastAPI(
        title="TIDM lake read service",
        version="1",
        description="Cleaned per-unit industrial data, read under grants; every read is in the evidence log.",
    )
    registry = CollectorRegistry()
    requests = Counter("tidm_read_requests", "Read requests by outcome", ["outcome"], registry=registry)
    rows_served = Counter("tidm_read_rows", "Rows served", registry=registry)
    catalog = dict(catalog or {})

    def principal_of(authorization: str | None) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            requests.labels("unauthenticated").inc()
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            return access.authenticate(authorization[7:].strip()).name
        except AccessDenied:
            requests.labels("unauthenticated").inc()
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}) from None

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        try:
            lake.list_dirs("")
        except StorageError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/catalog", tags=["lake"])
    def get_catalog(
        authorization: Annotated[str | None, Header()] = None,
        table: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = "clean",
    ) -> Response:
        principal_of(authorization)
        frame = inventory(lake, [table], catalog)
        return Response(frame.write_json(), media_type="application/json")

    @app.get(
        "/v1/units/{asset}/samples",
        tags=["lake"],
        responses={200: {"content": {m: {} for m in _MEDIA.values()}}, 401: {}, 403: {}, 400: {}},
    )
    def samples(
        asset: str,
        start: Annotated[str, Query(alias="from", max_length=40)],
        end: Annotated[str, Query(alias="to", max_length=40)],
        authorization: Annotated[str | None, Header()] = None,
        signals: Annotated[str | None, Query(max_length=4096)] = None,
        table: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = "clean",
        site: Annotated[str | None, Query(max_length=256)] = None,
        format: Annotated[Format, Query()] = "arrow",  # noqa: A002 - the public parameter name
        metadata: bool = False,
    ) -> Response:
        principal = principal_of(authorization)
        t0, t1 = _parse_time("from", start), _parse_time("to", end)
        wanted = [s for s in signals.split(",") if s] if signals else None
        reader = LakeReader(
            lake,
            access=access,
            principal=principal,
            catalog=catalog,
            channel="http",
            default_level=default_level,
        )
        try:
            frame = reader.read_unit(asset, t0, t1, wanted, table, site=site, with_metadata=metadata)
        except AccessDenied as exc:
            requests.labels("denied").inc()
            raise HTTPException(403, str(exc)) from None
        except LakeError as exc:
            requests.labels("bad_request").inc()
            raise HTTPException(400, str(exc)) from None
        requests.labels("allowed").inc()
        frame = frame.sort("signal", "ts")
        if format == "parquet":
            data = frame.collect()
            rows_served.inc(data.height)
            sink = io.BytesIO()
            data.write_parquet(sink, compression="zstd")
            return Response(sink.getvalue(), media_type=_MEDIA["parquet"])
        return StreamingResponse(_stream(frame, format), media_type=_MEDIA[format])

    def _stream(frame: pl.LazyFrame, fmt: Format) -> Iterator[bytes]:
        drain = _Drain()
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        first = True
        for batch in frame.collect_batches(chunk_size=batch_rows):
            rows_served.inc(batch.height)
            if fmt == "arrow":
                table = batch.to_arrow()
                if writer is None:
                    writer = pa.ipc.new_stream(drain, table.schema)
                writer.write_table(table)
                yield drain.take()
            elif fmt == "csv":
                out = io.BytesIO()
                _plain(batch).write_csv(out, include_header=first)
                first = False
                yield out.getvalue()
            else:
                out = io.BytesIO()
                _plain(batch).write_ndjson(out)
                yield out.getvalue()
        if fmt == "arrow":
            if writer is None:
                writer = pa.ipc.new_stream(drain, frame.limit(0).collect().to_arrow().schema)
            writer.close()
            yield drain.take()

    return app


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out after each batch, so Arrow IPC can stream."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out
