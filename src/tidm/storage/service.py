"""The HTTP read service (`tidm serve`): the read API over HTTP for maintenance teams' tools.

Bearer tokens identify principals; every request goes through the same grant checks and FETCH
evidence as the Python API and the CLI. Results stream in (signal, ts) order in bounded memory
(`LakeReader.stream_unit`) as Arrow IPC, CSV, JSON lines or Parquet (one row group per batch), under
per-request caps on time span and rows (400 naming the cap).

What a caller may not see does not exist for it: a unit or table no grant of the caller covers is a
404 that names nothing but what the caller asked; a 403 gives only the rules of grants that do cover
the request. The catalog is a read like any other: filtered by the caller's valid grants (scope and
classification ceiling), recorded as FETCH, and served from a short-lived cache of the lake's
inventory. Every refusal (400/401/403/404/429/5xx) is recorded as a FETCH `denied` with its reason and
status, rate-limited (`RefusalLimiter`), so a flood of bad requests costs one entry per caller, status
and endpoint per interval. Health, readiness (ready / not ready, nothing more) and Prometheus metrics
are served alongside, and FastAPI publishes the OpenAPI description at /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import polars as pl
import pyarrow as pa
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidm.semantics.classification import Level
from tidm.storage.access import AccessControl, Decision, ReadRequest
from tidm.storage.catalog import inventory
from tidm.storage.errors import (
    AccessDenied,
    LakeError,
    LedgerUnavailable,
    RequestTooLarge,
    StorageError,
)
from tidm.storage.formats import MEDIA_TYPES, Format, encode
from tidm.storage.lake import Lake
from tidm.storage.read import LakeReader, SignalInfo, UnitStream

__all__ = ["ServiceLimits", "create_app"]

log = logging.getLogger(__name__)

_MEDIA = MEDIA_TYPES
_ANONYMOUS = "anonymous"
_RETRY = {"Retry-After": "5"}


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request caps and the service's evidence pacing."""

    max_span: dt.timedelta | None = dt.timedelta(days=31)
    max_rows: int | None = 200_000_000
    catalog_cache_s: float = 30.0
    refusal_interval_s: float = 10.0


class _Refused(Exception):  # noqa: N818 - control flow inside the service, never leaves it
    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason, self.headers = status, detail, reason, headers


def _parse_time(name: str, text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"'{name}' is not an ISO 8601 time: {text[:64]!r}"
        raise _Refused(400, msg, msg) from None
    if value.tzinfo is None:
        if len(text) == 10:
            return value.replace(tzinfo=dt.UTC)
        msg = f"'{name}' needs a timezone (e.g. 2026-11-28T06:00:00Z)"
        raise _Refused(400, msg, msg)
    return value


def _match(value: str | None, patterns: tuple[str, ...]) -> bool:
    if value is None:
        return "*" in patterns
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


class _CatalogCache:
    """The lake's inventory per table, re-scanned at most every `ttl_s` seconds."""

    def __init__(self, lake: Lake, catalog: Mapping[tuple[str, str], SignalInfo], ttl_s: float) -> None:
        self._lake, self._catalog, self.ttl_s = lake, catalog, ttl_s
        self._lock = threading.Lock()
        self._frames: dict[str, tuple[float, pl.DataFrame]] = {}

    def get(self, table: str) -> pl.DataFrame:
        with self._lock:
            hit = self._frames.get(table)
            if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]
            frame = inventory(self._lake, [table], self._catalog)
            self._frames[table] = (time.monotonic(), frame)
            return frame


def create_app(
    lake: Lake,
    access: AccessControl,
    catalog: Mapping[tuple[str, str], SignalInfo] | None = None,
    *,
    default_level: Level = Level.CORE,
    batch_rows: int = 100_000,
    limits: ServiceLimits | None = None,
) -> FastAPI:
    """The FastAPI application serving `lake` under `access`."""
    limits = limits or ServiceLimits()
    catalog = dict(catalog or {})
    refusals = access.limit_refusals(limits.refusal_interval_s)
    cache = _CatalogCache(lake, catalog, limits.catalog_cache_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def pace() -> None:
            while True:
                await asyncio.sleep(limits.refusal_interval_s)
                await asyncio.to_thread(refusals.flush_due)

        task = asyncio.create_task(pace())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(refusals.flush)

    app = FastAPI(
        title="TIDM lake read service",
        version="1",
        description="Cleaned per-unit industrial data, read under grants; every read is in the evidence log.",
        lifespan=lifespan,
    )
    registry = CollectorRegistry()
    requests = Counter("tidm_read_requests", "Read requests by outcome", ["outcome"], registry=registry)
    rows_served = Counter("tidm_read_rows", "Rows served", registry=registry)
    open_streams = Gauge("tidm_read_streams_open", "Responses streaming now", registry=registry)
    Gauge("tidm_arrow_allocated_bytes", "Bytes Arrow holds now", registry=registry).set_function(
        pa.total_allocated_bytes
    )

    def refuse(
        status: int,
        detail: str,
        *,
        reason: str,
        principal: str | None,
        endpoint: str,
        asset: str = "-",
        table: str = "-",
        headers: dict[str, str] | None = None,
    ) -> HTTPException:
        """Record the refusal (rate-limited) and return the HTTP error to raise."""
        requests.labels(str(status)).inc()
        request = ReadRequest(None, asset[:256], table[:64], 0, 0, None, "http")
        decision = Decision(principal or _ANONYMOUS, None, False, reason)
        try:
            access.record(decision, request, [], extra={"status": status, "endpoint": endpoint})
        except Exception:  # the refusal stands even if its evidence could not be written
            log.exception("could not record a refused request in the evidence log")
        return HTTPException(status, detail, headers=headers)

    def principal_of(authorization: str | None, endpoint: str) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise refuse(
                401,
                "a bearer token is required",
                reason="no bearer token",
                principal=None,
                endpoint=endpoint,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return access.authenticate(authorization[7:].strip()).name
        except AccessDenied:
            raise refuse(
                401,
                "invalid bearer token",
                reason="invalid bearer token",
                principal=None,
                endpoint=endpoint,
                headers={"WWW-Authenticate": "Bearer"},
            ) from None

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
        )[:500]
        await asyncio.to_thread(
            refuse,
            422,
            problems,
            reason=f"invalid request: {problems}",
            principal=None,
            endpoint="validation",
        )
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405) and request.scope.get("route") is None:
            # No such route: refused as well, recorded like any other refusal.
            await asyncio.to_thread(
                refuse,
                exc.status_code,
                str(exc.detail),
                reason="no such route",
                principal=None,
                endpoint="route",
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Logged here with its traceback; the caller and the evidence get only the kind of failure.
        log.error("request failed: %s", type(exc).__name__, exc_info=exc)
        await asyncio.to_thread(
            refuse,
            500,
            "internal error",
            reason=f"internal error ({type(exc).__name__})",
            principal=None,
            endpoint=request.url.path.split("/")[2] if request.url.path.startswith("/v1/") else "other",
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        try:
            lake.list_dirs("")
        except StorageError:
            log.warning("not ready: the lake does not answer", exc_info=True)
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/catalog", tags=["lake"], responses={401: {}, 404: {}})
    def get_catalog(
        authorization: Annotated[str | None, Header()] = None,
        table: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = "clean",
    ) -> Response:
        principal = principal_of(authorization, "catalog")
        grants = [g for g in access.valid_grants(principal) if _match(table, g.tables)]
        if not grants:
            raise refuse(
                404,
                f"no table {table!r}",
                reason=f"catalog of table {table!r}: no valid grant covers it",
                principal=principal,
                endpoint="catalog",
                table=table,
            )
        try:
            frame = cache.get(table)
        except StorageError:
            log.warning("catalog scan failed", exc_info=True)
            raise refuse(
                503,
                "the lake is unavailable; retry later",
                reason="lake unavailable",
                principal=principal,
                endpoint="catalog",
                table=table,
            ) from None

        def visible(row: dict[str, Any]) -> bool:
            asset, signal = row["asset"], row["signal"]
            info = catalog.get((asset, signal))
            level = info.level if info is not None else default_level
            site = row["site"]
            return any(
                _match(asset, g.assets) and (site is None or _match(site, g.sites)) and level <= g.ceiling
                for g in grants
            )

        rows = [r for r in frame.iter_rows(named=True) if visible(r)]
        shown = pl.DataFrame(rows, schema=frame.schema) if rows else frame.clear()
        request = ReadRequest(None, "*", table, 0, 0, None, "http")
        access.record(
            Decision(principal, None, True, "allowed"),
            request,
            [],
            extra={"endpoint": "catalog", "catalog_rows": shown.height},
        )
        requests.labels("catalog").inc()
        return Response(shown.write_json(), media_type="application/json")

    @app.get(
        "/v1/units/{asset}/samples",
        tags=["lake"],
        responses={200: {"content": {m: {} for m in _MEDIA.values()}}, 400: {}, 401: {}, 403: {}, 404: {}},
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
        principal = principal_of(authorization, "samples")

        def fail(
            status: int, detail: str, reason: str, headers: dict[str, str] | None = None
        ) -> HTTPException:
            return refuse(
                status,
                detail,
                reason=reason,
                principal=principal,
                endpoint="samples",
                asset=asset,
                table=table,
                headers=headers,
            )

        try:
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
            stream = reader.stream_unit(
                asset,
                t0,
                t1,
                wanted,
                table,
                site=site,
                with_metadata=metadata,
                batch_rows=batch_rows,
                max_span=limits.max_span,
                max_rows=limits.max_rows,
            )
        except _Refused as exc:
            raise fail(exc.status, exc.detail, exc.reason) from None
        except AccessDenied as exc:
            # Recorded by the grant check itself (with the full reason); the caller learns only what
            # its own grants say, and nothing at all about what none of them covers.
            requests.labels("denied").inc()
            if not exc.visible:
                raise HTTPException(404, f"no unit {asset!r} in table {table!r}") from None
            raise HTTPException(403, f"read refused: {exc.public}") from None
        except RequestTooLarge as exc:
            raise fail(400, str(exc), str(exc)) from None
        except LedgerUnavailable:
            raise fail(
                503, "the read could not be counted now; retry later", "read count unavailable", _RETRY
            ) from None
        except LakeError as exc:
            raise fail(400, str(exc), str(exc)) from None
        except StorageError:
            log.warning("read failed", exc_info=True)
            raise fail(503, "the lake is unavailable; retry later", "lake unavailable", _RETRY) from None
        requests.labels("allowed").inc()
        return StreamingResponse(_body(_encode(stream, format)), media_type=_MEDIA[format])

    def _encode(stream: UnitStream, fmt: Format) -> Iterator[bytes]:
        def counted() -> Iterator[pa.RecordBatch]:
            for batch in stream.batches:
                rows_served.inc(batch.num_rows)
                yield batch

        open_streams.inc()
        try:
            yield from encode(stream.schema, counted(), fmt)
        finally:
            stream.close()
            open_streams.dec()
            # Give the batches' memory back to the system now, not when the allocator gets to it.
            pa.default_memory_pool().release_unused()

    async def _body(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        """The chunks, produced in a worker thread; closed as soon as the response ends, also when the
        client went away early (not whenever the garbage collector finds the generator)."""
        try:
            async for chunk in iterate_in_threadpool(chunks):
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return app
