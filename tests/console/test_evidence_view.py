"""The Evidence view over a real run (`tidm demo`'s flow: simulator, agent, job, lake, evidence):
the same verdict as `tidm evidence verify`, an object proven back to agent batches, reads per
principal, and the view itself a FETCH under an `evidence` grant."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tests.console.test_app import _client

from tidm.cli.demo import DemoResult, run_demo
from tidm.cli.main import cli
from tidm.console import ConsoleSection, create_console
from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.storage import Lake
from tidm.storage.access import AccessControl, Grant, Principal

AUDITOR = "console-test-token-auditor"  # noqa: S105 - test tokens
MAINT = "console-test-token-maint"  # noqa: S105


@pytest.fixture
async def demo(tmp_path: Path) -> DemoResult:
    return await run_demo(tmp_path, duration_s=2, assets=1, signals=3, period_ms=100)


def _sha(token: str) -> tuple[str, ...]:
    return (hashlib.sha256(token.encode()).hexdigest(),)


async def _login(client: httpx.AsyncClient, token: str) -> None:
    page = await client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    assert (await client.post("/login", data={"nonce": nonce.group(1), "token": token})).status_code == 303


def _text(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert found, element_id
    return found.group(1).strip()


async def test_evidence_view_matches_the_cli_and_proves_an_object(demo: DemoResult) -> None:
    run = demo.run_dir
    log = SqliteEvidenceLog(run / "evidence.db")
    principals = [
        Principal(
            name="auditor",
            token_sha256=_sha(AUDITOR),
            grants=(Grant(id="audit", tables=("evidence", "clean")),),
        ),
        Principal(name="maint", token_sha256=_sha(MAINT), grants=(Grant(id="read", tables=("clean",)),)),
    ]
    lake = Lake.local(demo.lake_path)
    vkey = (run / "notary.vkey").read_text().strip()
    note = (run / "checkpoint").read_text()
    app = create_console(
        lake,
        AccessControl(principals, log),
        settings=ConsoleSection(secure_cookie=False, verifier_keys=(vkey,)),
        checkpoint=lambda: note,
    )
    key = next(k for k in lake.list_keys("clean") if k.endswith(".parquet"))
    try:
        async with _client(app) as client:
            await _login(client, MAINT)
            refused = await client.get("/evidence")
            assert refused.status_code == 403 and "log-size" not in refused.text
        async with _client(app) as client:
            await _login(client, AUDITOR)
            page = await client.get("/evidence", params={"verify": "1", "object": key})
            assert page.status_code == 200, page.text
            html = page.text
        size = log.size()
        fetches = [e.entry for e in log.read() if e.entry.event == EventType.FETCH]
    finally:
        log.close()
    assert [
        (f.attributes["principal"], f.attributes["table"], f.attributes["decision"]) for f in fetches
    ] == [
        ("maint", "evidence", "denied"),
        ("auditor", "evidence", "allowed"),
    ]
    assert int(_text(html, "log-size")) == size
    assert _text(html, "checkpoint-signature") == "verified"
    cli_out = CliRunner().invoke(
        cli,
        ["evidence", "verify", "--log", str(run / "evidence.db"), "--vkey-file", str(run / "notary.vkey")],
    )
    assert cli_out.exit_code == 0, cli_out.output
    assert _text(html, "verify-result") == cli_out.output.strip().splitlines()[-1]
    assert _text(html, "object-status").startswith("ok:")
    assert int(_text(html, "lineage-sources")) >= 1
    assert "<svg" in html
    reads = re.search(r'id="reads".*?</table>', html, re.S)
    assert reads and "principal:maint" in reads.group(0) and "principal:auditor" in reads.group(0)
