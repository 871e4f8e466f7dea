"""Attacks on `tidm serve` itself: catalog snooping, probing for what a grant does not cover, floods of
refused requests, slow headers, oversized reads, readiness leaks. Each runs against the real server."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from tests.cli.process_support import start, stop
from tests.security.test_serve_read_limits import _free_port
from tests.storage.test_read_access import ASSET, DAY1, _fill, _rows

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType, EvidenceEntry
from tidm.semantics.catalog import CATALOG_VERSION
from tidm.storage import Lake, object_key

TOKEN = "token-of-team-a"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HIDDEN = "urn:tidm:asset:secret-press"
BROKEN = DAY1 + dt.timedelta(days=10)  # the day whose object (in table "trial") is damaged


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("serve-attacks")
    lake = Lake.local(root / "lake")
    _fill(lake)
    key = object_key(
        "clean", site="plant-secret", asset=HIDDEN, date=DAY1.date(), topic="t", partition=9, first=0, last=1
    )
    lake.write_parquet(key, _rows(HIDDEN, DAY1, 30, 0))
    damaged = object_key(
        "trial", site="plant-1", asset=ASSET, date=BROKEN.date(), topic="t", partition=0, first=9, last=9
    )
    lake.write_bytes(damaged, b"PAR1 this is not a parquet file PAR1")
    catalog = {
        "version": CATALOG_VERSION,
        "signals": [
            {"asset_id": ASSET, "signal": "pressure", "unit": "bar", "level": "general"},
            {"asset_id": ASSET, "signal": "flow", "unit": "m3/h", "level": "general"},
            {"asset_id": ASSET, "signal": "setpoint", "unit": "bar", "level": "important"},
        ],
    }
    (root / "catalog.json").write_text(json.dumps(catalog))
    grants = {
        "principals": {
            "team-a": {
                "token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()],
                "grants": [
                    {
                        "id": "pumps",
                        "sites": ["plant-1"],
                        "assets": ["urn:tidm:asset:pump-*"],
                        "tables": ["clean", "trial"],
                    }
                ],
            }
        }
    }
    (root / "grants.yaml").write_text(yaml.safe_dump(grants))
    port = _free_port()
    config = {
        "lake": {"url": str(root / "lake")},
        "evidence": {"path": str(root / "evidence.db")},
        "read": {"grants": str(root / "grants.yaml"), "catalog": str(root / "catalog.json")},
        "serve": {
            "port": port,
            "max_span": "P2D",
            "max_rows": 1000,
            "header_timeout_s": 1.0,
            "refusal_interval_s": 3600,
        },
    }
    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    log = root / "serve.log"
    proc = start(["serve", "--config", str(root / "serve.yaml")], log, dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    try:
        yield url, root
    finally:
        stop(proc, log)


def _entries(root: Path) -> list[EvidenceEntry]:
    log = SqliteEvidenceLog(root / "evidence.db")
    try:
        return [e.entry for e in log.read() if e.entry.event == EventType.FETCH]
    finally:
        log.close()


def _params(**extra: str) -> dict[str, str]:
    return {
        "from": DAY1.isoformat(),
        "to": (DAY1 + dt.timedelta(days=1)).isoformat(),
        "signals": "flow",
        **extra,
    }


def test_catalog_shows_only_what_the_grants_cover_and_is_recorded(server: tuple[str, Path]) -> None:
    url, root = server
    r = httpx.get(f"{url}/v1/catalog", headers=AUTH)
    assert r.status_code == 200, r.text
    rows = r.json()
    assert rows and {row["asset"] for row in rows} == {ASSET}
    assert {row["signal"] for row in rows} == {"pressure", "flow"}, "important signal above the ceiling"
    assert "plant-secret" not in r.text and HIDDEN not in r.text and "fan-2" not in r.text
    # A table no grant covers does not exist for this caller.
    r = httpx.get(f"{url}/v1/catalog", params={"table": "rejected"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"] == "no table 'rejected'"
    assert httpx.get(f"{url}/v1/catalog").status_code == 401
    fetches = [e for e in _entries(root) if e.attributes.get("endpoint") == "catalog"]
    allowed = [e for e in fetches if e.attributes["decision"] == "allowed"]
    assert allowed and allowed[0].attributes["catalog_rows"] == len(rows)
    assert allowed[0].inputs == (), "a catalog read uses up no read count"
    assert any(e.attributes["decision"] == "denied" and e.attributes["status"] == 404 for e in fetches)


def test_out_of_scope_is_not_found_and_names_nothing(server: tuple[str, Path]) -> None:
    url, root = server
    r = httpx.get(f"{url}/v1/units/{HIDDEN}/samples", params=_params(), headers=AUTH)
    assert r.status_code == 404
    assert "plant-secret" not in r.text and "scope" not in r.text and "pumps" not in r.text
    # Asking for an above-ceiling signal of a covered unit is a 403 with that grant's rule only.
    r = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=_params(signals="setpoint"), headers=AUTH)
    assert r.status_code == 403 and "above its classification ceiling" in r.json()["detail"]
    reasons = [e.attributes.get("reason", "") for e in _entries(root)]
    assert any("outside its scope" in why and "plant-secret" in why for why in reasons), "the log has it all"


def test_every_refusal_is_recorded_and_a_flood_costs_one_entry(server: tuple[str, Path]) -> None:
    url, root = server
    before = _entries(root)
    for _ in range(300):
        assert httpx.get(f"{url}/v1/units/{ASSET}/samples", params=_params()).status_code == 401
    bad_time = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=_params(**{"from": "soon"}), headers=AUTH)
    assert bad_time.status_code == 400 and "'from' is not an ISO 8601 time" in bad_time.json()["detail"]
    invalid = httpx.get(f"{url}/v1/units/{ASSET}/samples", params={"from": "x"}, headers=AUTH)
    assert invalid.status_code == 422
    after = _entries(root)[len(before) :]
    unauthenticated = [e for e in after if e.attributes.get("status") == 401]
    assert len(unauthenticated) == 1, "the first of a flood is logged, the rest counted in the interval"
    assert unauthenticated[0].attributes["principal"] == "anonymous"
    statuses = {e.attributes.get("status") for e in after}
    assert {400, 422} <= statuses


def test_caps_on_span_and_rows_are_clear_400s(server: tuple[str, Path]) -> None:
    url, _ = server
    wide = _params(to=(DAY1 + dt.timedelta(days=3)).isoformat())
    r = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=wide, headers=AUTH)
    assert r.status_code == 400 and "above the per-request cap of 2 days" in r.json()["detail"]
    many = _params(to=(DAY1 + dt.timedelta(days=2)).isoformat(), signals="flow,pressure")
    r = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=many, headers=AUTH)
    assert r.status_code == 400 and "holds 1920 rows, above the per-request cap of 1000" in r.json()["detail"]


def test_readiness_says_only_ready(server: tuple[str, Path]) -> None:
    url, root = server
    r = httpx.get(f"{url}/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    assert str(root) not in r.text


def test_a_slow_header_connection_is_closed(server: tuple[str, Path]) -> None:
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 20
        closed = False
        while time.monotonic() < deadline:
            try:
                conn.sendall(b"X-Slow: 1\r\n")  # a header line now and then, never the end
            except OSError:
                closed = True
                break
            conn.settimeout(0.5)
            try:
                if conn.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
        assert closed, "the server closed the connection whose headers never completed"
    # An honest client right after is served.
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_server_side_failure_is_a_recorded_500_that_reveals_nothing(server: tuple[str, Path]) -> None:
    url, root = server
    params = _params(
        **{"from": BROKEN.isoformat(), "to": (BROKEN + dt.timedelta(days=1)).isoformat(), "table": "trial"}
    )
    r = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=params, headers=AUTH)
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    failures = [e for e in _entries(root) if e.attributes.get("status") == 500]
    assert failures and failures[-1].attributes["reason"].startswith("internal error (")
    assert str(root) not in failures[-1].attributes["reason"]
    assert httpx.get(f"{url}/healthz").status_code == 200, "the server keeps serving"
