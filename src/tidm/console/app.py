"""The console's web application: login, then the Fleet, Units, Evidence and Plans views.

Pages are rendered on the server (Jinja2, autoescaped); the only script is the Units chart code
(uPlot, vendored) reading the series the page embeds as JSON. A strict Content-Security-Policy
allows scripts from the console itself only.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from tidm.console.audit import evidence_report, verify_object, verify_whole_log
from tidm.console.config import ConsoleSection
from tidm.console.fleet import Fleet, by_kind, totals
from tidm.console.plans import MAX_UPLOAD, plan_from_upload
from tidm.console.session import COOKIE, LOGIN_COOKIE, csrf_matches, csrf_token, login_nonce
from tidm.console.units import UnitRef, read_series, visible_units
from tidm.semantics.classification import Level
from tidm.storage.access import AccessControl, Principal, ReadRequest
from tidm.storage.errors import AccessDenied, LakeError
from tidm.storage.lake import Lake
from tidm.storage.read import LakeReader, SignalInfo, to_us

__all__ = ["create_console"]

_HERE = Path(__file__).parent
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_VIEWS = (("fleet", "Fleet"), ("units", "Units"), ("evidence", "Evidence"), ("plans", "Plans"))


class _Redirect(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, to: str) -> None:
        super().__init__(to)
        self.to = to


def _parse_time(name: str, text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"'{name}' is not an ISO 8601 time: {text[:64]!r}"
        raise LakeError(msg) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # the form's datetime-local fields are UTC
    return value


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _script_json(data: object) -> str:
    """JSON safe inside a <script type="application/json"> element (no `</script>`, no entities)."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def create_console(
    lake: Lake,
    access: AccessControl,
    catalog: Mapping[tuple[str, str], SignalInfo] | None = None,
    *,
    settings: ConsoleSection | None = None,
    default_level: Level = Level.CORE,
    checkpoint: Callable[[], str | None] = lambda: None,
) -> FastAPI:
    """The console application over `lake`, under the grants of `access` (those of `tidm serve`).

    `checkpoint` gives the evidence log's latest signed checkpoint (the Evidence view verifies the log
    and objects against it with `settings.verifier_keys`)."""
    settings = settings or ConsoleSection()
    catalog = dict(catalog or {})
    app = FastAPI(title="TIDM console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    templates = Jinja2Templates(directory=_HERE / "templates")

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await call_next(request)
        except _Redirect as redirect:  # pragma: no cover - handled by the exception handler
            response = RedirectResponse(redirect.to, status_code=303)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(_Redirect)
    async def _redirect(request: Request, exc: _Redirect) -> Response:
        return RedirectResponse(exc.to, status_code=303)

    def session(request: Request) -> tuple[Principal, str]:
        token = request.cookies.get(COOKIE)
        if not token:
            to = "/login"
            raise _Redirect(to)
        try:
            return access.authenticate(token), token
        except AccessDenied:
            to = "/login?expired=1"
            raise _Redirect(to) from None

    def page(
        request: Request, name: str, context: dict[str, Any], *, status: int = 200, token: str | None = None
    ) -> HTMLResponse:
        base = {"views": _VIEWS, "csrf": csrf_token(token) if token else ""}
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def reader(principal: str) -> LakeReader:
        return LakeReader(
            lake,
            access=access,
            principal=principal,
            catalog=catalog,
            channel="console",
            default_level=default_level,
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, expired: int = 0) -> HTMLResponse:
        nonce = login_nonce()
        response = page(
            request, "login.html", {"nonce": nonce, "error": "session ended" if expired else None}
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=settings.secure_cookie,
            max_age=600,
            path="/login",
        )
        return response

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form()
        nonce = request.cookies.get(LOGIN_COOKIE)
        sent = form.get("nonce")
        if not nonce or not isinstance(sent, str) or sent != nonce:
            return page(
                request, "login.html", {"nonce": "", "error": "the login form expired; reload"}, status=400
            )
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        try:
            access.authenticate(token)
        except AccessDenied:
            fresh = login_nonce()
            refused = page(request, "login.html", {"nonce": fresh, "error": "invalid token"}, status=401)
            refused.set_cookie(
                LOGIN_COOKIE,
                fresh,
                httponly=True,
                samesite="strict",
                secure=settings.secure_cookie,
                max_age=600,
                path="/login",
            )
            return refused
        done = RedirectResponse("/units", status_code=303)
        done.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=settings.secure_cookie, path="/"
        )
        done.delete_cookie(LOGIN_COOKIE, path="/login")
        return done

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        _, token = session(request)
        form = await request.form()
        sent = form.get("csrf")
        if not csrf_matches(token, sent if isinstance(sent, str) else None):
            return Response("CSRF token missing or wrong", status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    def index(request: Request) -> Response:
        session(request)
        return RedirectResponse("/units", status_code=303)

    # --- Plans -----------------------------------------------------------------------------------

    @app.get("/plans", response_class=HTMLResponse)
    def plans_form(request: Request) -> HTMLResponse:
        principal, token = session(request)
        return page(
            request, "plans.html", {"active": "plans", "who": principal.name, "plan": None}, token=token
        )

    @app.post("/plans", response_class=HTMLResponse)
    async def plans_upload(request: Request) -> Response:
        principal, token = session(request)
        length = int(request.headers.get("content-length") or 0)
        if length > 2 * MAX_UPLOAD:
            return Response("upload too large", status_code=413)
        async with request.form(max_files=2, max_fields=4) as form:
            sent = form.get("csrf")
            if not csrf_matches(token, sent if isinstance(sent, str) else None):
                return Response("CSRF token missing or wrong", status_code=403)
            aas = form.get("aas")
            mapping = form.get("mapping")
            if not isinstance(aas, UploadFile) or not aas.filename:
                view = plan_from_upload("", b"")
                view.error = "choose an AAS file (.json, .xml or .aasx)"
            else:
                mapping_bytes = (
                    await mapping.read() if isinstance(mapping, UploadFile) and mapping.filename else None
                )
                view = plan_from_upload(aas.filename, await aas.read(), mapping_bytes)
        return page(
            request,
            "plans.html",
            {"active": "plans", "who": principal.name, "plan": view},
            status=200 if view.error is None else 422,
            token=token,
        )

    # --- Units -----------------------------------------------------------------------------------

    def _unit_args(request: Request, units: list[UnitRef]) -> dict[str, Any]:
        q = request.query_params
        asset = q.get("asset")
        site = q.get("site") or None
        chosen = next((u for u in units if u.asset == asset and (site is None or u.site == site)), None)
        signals = [s for s in q.get("signals", "").split(",") if s] or None
        start = _parse_time("from", q["from"]) if q.get("from") else None
        end = _parse_time("to", q["to"]) if q.get("to") else None
        if chosen is not None:
            start = start or dt.datetime.fromtimestamp(chosen.first_us / 1e6, tz=dt.UTC)
            end = end or dt.datetime.fromtimestamp((chosen.last_us + 1_000_000) / 1e6, tz=dt.UTC)
        return {
            "asset": asset,
            "site": site,
            "chosen": chosen,
            "signals": signals,
            "start": start,
            "end": end,
        }

    def _may_read(principal: str, table: str, args: dict[str, Any]) -> bool:
        request = ReadRequest(
            site=args["site"],
            asset=args["asset"],
            table=table,
            start_us=to_us(args["start"]),
            end_us=to_us(args["end"]),
            signals=None,
            channel="console",
        )
        return access.decide(principal, request, {}).allowed

    @app.get("/units", response_class=HTMLResponse)
    def units(request: Request) -> HTMLResponse:
        principal, token = session(request)
        visible = visible_units(lake, access, principal.name, catalog, default_level=default_level)
        context: dict[str, Any] = {"active": "units", "who": principal.name, "units": visible, "series": None}
        try:
            args = _unit_args(request, visible)
        except LakeError as exc:
            return page(request, "units.html", {**context, "error": str(exc)}, status=400, token=token)
        context.update(args)
        if args["asset"] is None:
            return page(request, "units.html", context, token=token)
        if args["start"] is None or args["end"] is None:
            # Not among the visible units and no range given: nothing to show, and no read to make.
            return page(
                request,
                "units.html",
                {**context, "error": f"unit {args['asset']!r} not found"},
                status=404,
                token=token,
            )
        raw = request.query_params.get("resolution") == "raw"
        width = request.query_params.get("width", "")
        buckets = min(settings.max_buckets, max(16, int(width))) if width.isdigit() else 1200
        try:
            series = read_series(
                reader(principal.name),
                asset=args["asset"],
                site=args["site"],
                start=args["start"],
                end=args["end"],
                signals=args["signals"],
                catalog=catalog,
                buckets=None if raw else buckets,
                rejected_reader=reader(principal.name)
                if _may_read(principal.name, "rejected", args)
                else None,
            )
        except AccessDenied as exc:
            return page(request, "units.html", {**context, "error": str(exc)}, status=403, token=token)
        except LakeError as exc:
            return page(request, "units.html", {**context, "error": str(exc)}, status=400, token=token)
        if raw and sum(s.trend.raw_points for s in series) > settings.max_raw_points:
            msg = f"more than {settings.max_raw_points} samples: raw resolution refused, use the default"
            return page(request, "units.html", {**context, "error": msg}, status=413, token=token)
        data = {
            "asset": args["asset"],
            "site": args["site"],
            "from": to_us(args["start"]) / 1e6,
            "to": to_us(args["end"]) / 1e6,
            "series": [s.to_json() for s in series],
        }
        context.update(
            series=series,
            data=_script_json(data),
            from_text=args["start"].strftime("%Y-%m-%dT%H:%M:%S"),
            to_text=args["end"].strftime("%Y-%m-%dT%H:%M:%S"),
            query=request.url.query,
        )
        return page(request, "units.html", context, token=token)

    @app.get("/units/download")
    def units_download(request: Request) -> Response:
        principal, _ = session(request)
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "parquet"):
            return Response("format must be csv or parquet", status_code=400)
        visible = visible_units(lake, access, principal.name, catalog, default_level=default_level)
        try:
            args = _unit_args(request, visible)
            if args["asset"] is None or args["start"] is None or args["end"] is None:
                return Response("asset, from and to are required", status_code=400)
            frame = reader(principal.name).read_unit(
                args["asset"],
                args["start"],
                args["end"],
                args["signals"],
                "clean",
                site=args["site"],
                with_metadata=True,
            )
        except AccessDenied as exc:
            return Response(str(exc), status_code=403)
        except LakeError as exc:
            return Response(str(exc), status_code=400)
        data = frame.with_columns(pl.col(pl.Categorical).cast(pl.String)).sort("signal", "ts").collect()
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{args['asset']}-{_iso(to_us(args['start']))}")[-120:]
        sink = io.BytesIO()
        if fmt == "parquet":
            data.write_parquet(sink, compression="zstd")
            media = "application/vnd.apache.parquet"
        else:
            data.write_csv(sink)
            media = "text/csv"
        headers = {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'}
        return StreamingResponse(iter([sink.getvalue()]), media_type=media, headers=headers)

    # --- Fleet -----------------------------------------------------------------------------------

    fleet = Fleet(settings.fleet, timeout_s=settings.fleet_timeout_s)

    @app.get("/fleet", response_class=HTMLResponse)
    def fleet_view(request: Request) -> HTMLResponse:
        principal, token = session(request)
        views = fleet.scrape()
        note = checkpoint()
        lines = note.split("\n") if note else []
        context = {
            "active": "fleet",
            "who": principal.name,
            "kinds": by_kind(views),
            "agents_up": sum(1 for v in views if v.kind == "agent" and v.up),
            "agents": sum(1 for v in views if v.kind == "agent"),
            "samples_in": totals(views, "agent", "samples in"),
            "rows_landed": totals(views, "job", "rows landed"),
            "objects": totals(views, "job", "objects"),
            "log_size": access.evidence.size(),
            "checkpoint_size": int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None,
        }
        return page(request, "fleet.html", context, token=token)

    # --- Evidence --------------------------------------------------------------------------------

    @app.get("/evidence", response_class=HTMLResponse)
    def evidence(request: Request) -> HTMLResponse:
        principal, token = session(request)
        context: dict[str, Any] = {"active": "evidence", "who": principal.name, "report": None}
        now_us = to_us(dt.datetime.now(dt.UTC))
        # The log is read like a table: a grant on table `evidence` (all assets) lets an auditor in.
        asked = ReadRequest(
            site=None, asset="*", table="evidence", start_us=0, end_us=now_us, signals=None, channel="console"
        )
        decision = access.admit(principal.name, asked, {}, [])
        if not decision.allowed:
            msg = (
                f"the evidence log is not readable under your grants: {decision.public_reason or 'no grant'}"
            )
            return page(request, "evidence.html", {**context, "error": msg}, status=403, token=token)
        log = access.evidence
        note = checkpoint()
        keys = settings.verifier_keys
        context["report"] = evidence_report(log, note, keys)
        if request.query_params.get("verify"):
            context["verdict"] = verify_whole_log(log, note, keys)
        key = request.query_params.get("object", "").strip()
        if key:
            context["object"] = verify_object(log, note, keys, key[:1024], lake.read_bytes)
        return page(request, "evidence.html", context, token=token)

    return app
