"""The HTTP read service as a real server process (`tidm serve`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.storage.test_read_access import ASSET, DAY1, _fill

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.storage import Lake

TOKEN = "token-of-maintenance-team-a"  # noqa: S105 - a test token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("serve")
    lake = Lake.local(root / "lake")
    _fill(lake)
    grants = {
        "principals": {
            "maint-a": {
                "token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()],
                "grants": [{"id": "pumps", "assets": ["urn:tidm:asset:pump-*"], "ceiling": "core"}],
            }
        }
    }
    (root / "grants.yaml").write_text(yaml.safe_dump(grants))
    port = _free_port()
    config = {
        "lake": {"url": str(root / "lake")},
        "evidence": {"path": str(root / "evidence.db")},
        "read": {"grants": str(root / "grants.yaml")},
        "serve": {"port": port, "max_rows_per_page": 500},
    }
    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidm.cli.main", "serve", "--config", str(root / "serve.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((root / "serve.log").read_text())
            time.sleep(0.2)
        yield url, root
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _params(**extra: str) -> dict[str, str]:
    return {"from": DAY1.isoformat(), "to": (DAY1 + dt.timedelta(days=3)).isoformat(), **extra}


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_auth_is_required(server: tuple[str, Path]) -> None:
    url, root = server
    r = httpx.get(f"{url}/v1/units/{ASSET}/samples", params=_params())
    assert r.status_code == 401
    r = httpx.get(
        f"{url}/v1/units/{ASSET}/samples", params=_params(), headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
    r = httpx.get(f"{url}/v1/units/urn:tidm:asset:fan-2/samples", params=_params(), headers=AUTH)
    # Out of scope is not found: the answer names neither the site nor the grant's scope ...
    assert r.status_code == 404 and r.json()["detail"] == "no unit 'urn:tidm:asset:fan-2' in table 'clean'"
    # ... while the evidence log keeps the full reason.
    log = SqliteEvidenceLog(root / "evidence.db")
    try:
        denied = [e.entry for e in log.read() if e.entry.attributes.get("decision") == "denied"]
    finally:
        log.close()
    assert any(
        "outside its scope" in e.attributes["reason"] and e.attributes["asset"] == "urn:tidm:asset:fan-2"
        for e in denied
    )


def test_formats_carry_the_same_rows(server: tuple[str, Path]) -> None:
    url, _ = server
    got = {}
    for fmt in ("arrow", "parquet", "csv", "json"):
        r = httpx.get(
            f"{url}/v1/units/{ASSET}/samples", params=_params(format=fmt, signals="flow"), headers=AUTH
        )
        assert r.status_code == 200, r.text
        got[fmt] = r.content
    arrow = pa.ipc.open_stream(got["arrow"]).read_all()
    import pyarrow.parquet as pq

    parquet = pq.read_table(pa.py_buffer(got["parquet"]))
    assert arrow.num_rows == parquet.num_rows == 3 * 2 * 720 // 3
    assert got["csv"].decode().count("\n") == arrow.num_rows + 1
    assert got["json"].decode().count("\n") == arrow.num_rows
    assert arrow.schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_a_large_result_streams_in_batches(server: tuple[str, Path]) -> None:
    url, root = server
    with httpx.stream("GET", f"{url}/v1/units/{ASSET}/samples", params=_params(), headers=AUTH) as r:
        assert r.status_code == 200
        chunks = [c for c in r.iter_raw() if c]
    reader = pa.ipc.open_stream(b"".join(chunks))
    batches = list(reader)
    assert sum(b.num_rows for b in batches) == 3 * 2 * 720
    assert len(batches) >= 8, "served in several batches of at most 500 rows"
    log = SqliteEvidenceLog(root / "evidence.db")
    try:
        fetches = [e.entry for e in log.read() if e.entry.event == EventType.FETCH]
    finally:
        log.close()
    assert fetches and all(f.attributes["channel"] == "http" for f in fetches)


def test_health_readiness_metrics_and_openapi(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    assert "tidm_read_requests" in httpx.get(f"{url}/metrics").text
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/units/{asset}/samples" in spec["paths"]


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_TIMES = st.one_of(
    _TEXT,
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.just(dt.UTC),
    ).map(lambda d: d.isoformat()),
    st.dates().map(lambda d: d.isoformat()),
)


@given(
    asset=st.one_of(st.just(ASSET), _TEXT.filter(lambda a: a not in ("", ".", ".."))),
    start=_TIMES,
    end=_TIMES,
    signals=st.one_of(st.none(), _TEXT, st.just("flow,pressure,setpoint")),
    table=st.one_of(st.just("clean"), _TEXT),
    fmt=st.one_of(st.sampled_from(["arrow", "parquet", "csv", "json"]), _TEXT),
    metadata=st.sampled_from(["true", "false", "maybe"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_queries_never_fail_the_server(
    server: tuple[str, Path],
    asset: str,
    start: str,
    end: str,
    signals: str | None,
    table: str,
    fmt: str,
    metadata: str,
) -> None:
    url, _ = server
    params = {"from": start, "to": end, "table": table, "format": fmt, "metadata": metadata}
    if signals is not None:
        params["signals"] = signals
    path = "/v1/units/" + quote(asset, safe="") + "/samples"
    r = httpx.get(url + path, params=params, headers=AUTH, timeout=30)
    assert r.status_code < 500, (asset, params, r.text[:300])
    assert r.status_code in (200, 400, 403, 404, 422)


def test_a_client_that_stops_early_leaves_no_stream_open(server: tuple[str, Path]) -> None:
    url, _ = server
    with httpx.stream(
        "GET", f"{url}/v1/units/{ASSET}/samples", params=_params(format="csv"), headers=AUTH
    ) as r:
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"ts,")

    def open_streams() -> float:
        text = httpx.get(f"{url}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("tidm_read_streams_open "))
        return float(line.split()[1])

    deadline = time.monotonic() + 30
    while open_streams() != 0:
        assert time.monotonic() < deadline, "the abandoned stream was never closed"
        time.sleep(0.1)
    assert "tidm_arrow_allocated_bytes" in httpx.get(f"{url}/metrics").text
