"""The console application in-process (httpx over ASGI): login, CSRF, Plans and Units under
grants, with a FETCH entry per data view."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.storage.test_read_access import ASSET, CATALOG, _fill

from tidm.console import ConsoleSection, create_console
from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.semantics.plan import load_plan
from tidm.storage import Lake
from tidm.storage.access import AccessControl, Grant, Principal

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
TOKEN = "console-test-token-maint-a"  # noqa: S105 - a test token
OTHER = "urn:tidm:asset:fan-2"


def _sha(token: str) -> tuple[str, ...]:
    return (hashlib.sha256(token.encode()).hexdigest(),)


@pytest.fixture
def evidence() -> MemoryEvidenceLog:
    return MemoryEvidenceLog()


def _client(app: object, base_url: str = "http://console.test") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=base_url, follow_redirects=False)


@pytest.fixture
async def client(tmp_path: Path, evidence: MemoryEvidenceLog) -> AsyncIterator[httpx.AsyncClient]:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    grants = (
        Grant(id="pumps", assets=("urn:tidm:asset:pump-*",), tables=("clean",), ceiling="general"),  # type: ignore[arg-type]
    )
    access = AccessControl([Principal(name="maint-a", token_sha256=_sha(TOKEN), grants=grants)], evidence)
    app = create_console(lake, access, CATALOG, settings=ConsoleSection(secure_cookie=False))
    async with _client(app) as c:
        yield c


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def _login(client: httpx.AsyncClient, token: str = TOKEN) -> None:
    page = await client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    response = await client.post("/login", data={"nonce": nonce.group(1), "token": token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/units"


def _fetches(evidence: MemoryEvidenceLog) -> list[dict[str, object]]:
    return [e.entry.attributes for e in evidence.read() if e.entry.event == EventType.FETCH]


async def test_pages_need_a_login_and_the_cookie_is_http_only_strict_and_secure(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path / "lake")
    access = AccessControl(
        [Principal(name="maint-a", token_sha256=_sha(TOKEN), grants=())], MemoryEvidenceLog()
    )
    async with _client(create_console(lake, access), "https://console.test") as client:
        for path in ("/", "/units", "/plans"):
            response = await client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/login"
        page = await client.get("/login")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce
        wrong = await client.post("/login", data={"nonce": nonce.group(1), "token": "not-a-token"})
        assert wrong.status_code == 401 and "invalid token" in wrong.text
        assert "tidm_console=" not in wrong.headers.get("set-cookie", "")
        nonce = re.search(r'name="nonce" value="([^"]+)"', wrong.text)
        assert nonce
        ok = await client.post("/login", data={"nonce": nonce.group(1), "token": TOKEN})
        assert ok.status_code == 303
        cookie = next(c for c in ok.headers.get_list("set-cookie") if c.startswith("tidm_console="))
        attributes = {a.strip().lower() for a in cookie.split(";")}
        assert {"httponly", "samesite=strict", "secure", "path=/"} <= attributes


async def test_a_login_without_the_form_nonce_is_refused(client: httpx.AsyncClient) -> None:
    await client.get("/login")
    response = await client.post("/login", data={"nonce": "forged", "token": TOKEN})
    assert response.status_code == 400
    assert (await client.get("/units")).status_code == 303


async def test_logout_needs_the_csrf_token(client: httpx.AsyncClient) -> None:
    await _login(client)
    page = await client.get("/plans")
    assert page.status_code == 200
    assert (await client.post("/logout", data={"csrf": "0" * 64})).status_code == 403
    assert (await client.get("/plans")).status_code == 200
    response = await client.post("/logout", data={"csrf": _csrf(page.text)})
    assert response.status_code == 303
    assert (await client.get("/plans")).status_code == 303


async def test_plans_view_shows_the_plan_of_an_uploaded_aas(client: httpx.AsyncClient) -> None:
    await _login(client)
    csrf = _csrf((await client.get("/plans")).text)
    aas = EXAMPLES / "pump.json"
    response = await client.post(
        "/plans", data={"csrf": csrf}, files={"aas": ("pump.json", aas.read_bytes())}
    )
    assert response.status_code == 200, response.text
    plan = load_plan(aas)
    signals = re.search(r'id="plan-signals">(\d+)<', response.text)
    assert signals and int(signals.group(1)) == len(plan.rows)
    rows = re.findall(r"<tr class=\"(?:problem)?\">", response.text)
    assert len(rows) == len(plan.rows)
    for row in plan.rows:
        assert f"<td>{row.signal}</td>" in response.text


async def test_plans_view_marks_a_broken_file_and_refuses_a_forged_form(client: httpx.AsyncClient) -> None:
    await _login(client)
    csrf = _csrf((await client.get("/plans")).text)
    broken = await client.post(
        "/plans", data={"csrf": csrf}, files={"aas": ("pump.json", b'{"assetAdministrationShells": 5}')}
    )
    assert broken.status_code == 422
    error = re.search(r'id="plan-error">([^<]+)<', broken.text)
    assert error and "pump.json" in error.group(1)
    assert "tidm-console-plan-" not in broken.text  # no server paths in what the user sees
    wrong_kind = await client.post("/plans", data={"csrf": csrf}, files={"aas": ("pump.txt", b"x")})
    assert wrong_kind.status_code == 422 and "must end in .json, .xml or .aasx" in wrong_kind.text
    forged = await client.post("/plans", data={"csrf": "f" * 64}, files={"aas": ("pump.json", b"{}")})
    assert forged.status_code == 403


def _series(html: str) -> dict[str, object]:
    found = re.search(r'<script type="application/json" id="series-data">(.*?)</script>', html, re.S)
    assert found
    data: dict[str, object] = json.loads(found.group(1))
    return data


async def test_units_view_shows_only_granted_units_and_signals_and_logs_a_fetch(
    client: httpx.AsyncClient, evidence: MemoryEvidenceLog
) -> None:
    await _login(client)
    listing = await client.get("/units")
    assert listing.status_code == 200
    assert ASSET in listing.text and OTHER not in listing.text
    assert _fetches(evidence) == []  # listing what one may ask for is not a read
    view = await client.get("/units", params={"asset": ASSET, "site": "plant-1", "width": "600"})
    assert view.status_code == 200, view.text
    data = _series(view.text)
    series = data["series"]
    assert isinstance(series, list)
    # setpoint is 'important', above the grant's 'general' ceiling: withheld.
    assert [s["signal"] for s in series] == ["flow", "pressure"]
    # _fill writes 3 days x 1440 rows of pump-1, one signal in three each.
    assert [s["raw_points"] for s in series] == [1440, 1440]
    assert all(s["points"] <= 2 * 600 for s in series)
    assert all(len(s["trend"][0]) == s["points"] for s in series)
    fetches = _fetches(evidence)
    assert len(fetches) == 1
    assert fetches[0]["channel"] == "console" and fetches[0]["decision"] == "allowed"
    assert fetches[0]["principal"] == "maint-a" and fetches[0]["asset"] == ASSET


async def test_an_out_of_grant_unit_is_refused_and_the_refusal_logged(
    client: httpx.AsyncClient, evidence: MemoryEvidenceLog
) -> None:
    await _login(client)
    response = await client.get(
        "/units",
        params={
            "asset": OTHER,
            "site": "plant-1",
            "from": "2026-11-27T00:00:00",
            "to": "2026-11-28T00:00:00",
        },
    )
    assert response.status_code == 403
    assert "series-data" not in response.text
    fetches = _fetches(evidence)
    assert len(fetches) == 1 and fetches[0]["decision"] == "denied" and fetches[0]["asset"] == OTHER


async def test_download_gives_the_rows_shown_and_is_a_fetch(
    client: httpx.AsyncClient, evidence: MemoryEvidenceLog
) -> None:
    await _login(client)
    params = {"asset": ASSET, "site": "plant-1", "from": "2026-11-27T00:00:00", "to": "2026-11-28T00:00:00"}
    response = await client.get("/units/download", params={**params, "format": "csv"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["signal"] for r in rows} == {"flow", "pressure"}
    assert len(rows) == 2 * 480
    assert {r["unit"] for r in rows} == {"bar", "m3/h"}
    parquet = await client.get("/units/download", params={**params, "format": "parquet"})
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
    assert [f["decision"] for f in _fetches(evidence)] == ["allowed", "allowed"]
    assert (await client.get("/units/download", params={**params, "format": "xlsx"})).status_code == 400
