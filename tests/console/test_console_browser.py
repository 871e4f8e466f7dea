"""The console in headless chromium, as a real `tidm console` process over a lake on the S3 server:
login, the Plans table, Units charts under grants, a FETCH entry per data view."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from tests.console.browser import chromium_page, console_process, login, screenshot, token_hash
from tests.storage.test_read_access import ASSET, CATALOG, _fill

from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.semantics.catalog import CatalogEntry, SignalCatalog
from tidm.semantics.plan import load_plan
from tidm.storage import Lake, LakeSettings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
TOKEN = "browser-test-token-maint-a"  # noqa: S105 - a test token
OTHER = "urn:tidm:asset:fan-2"


@pytest.fixture
def lake_config(tmp_path: Path, s3_config: dict[str, str], s3_bucket: str) -> dict[str, object]:
    settings = LakeSettings.model_validate(
        {
            "url": f"s3://{s3_bucket}/lake",
            "endpoint": s3_config["endpoint"],
            "access_key": s3_config["access_key"],
            "secret_key": s3_config["secret_key"],
            "region": s3_config["region"],
        }
    )
    _fill(Lake.from_settings(settings))
    grants = {
        "principals": {
            "maint-a": {
                "token_sha256": [token_hash(TOKEN)],
                "grants": [{"id": "pumps", "assets": ["urn:tidm:asset:pump-*"], "ceiling": "general"}],
            }
        }
    }
    (tmp_path / "grants.yaml").write_text(yaml.safe_dump(grants))
    SignalCatalog(
        CatalogEntry(asset_id=a, signal=s, unit=i.unit, semantic_id=i.semantic_id, level=i.level)
        for (a, s), i in CATALOG.items()
    ).save(tmp_path / "catalog.json")
    return {
        "lake": {
            **settings.model_dump(mode="json"),
            **{k: s3_config[k] for k in ("access_key", "secret_key")},
        },
        "evidence": {"path": str(tmp_path / "evidence.db")},
        "read": {"grants": str(tmp_path / "grants.yaml"), "catalog": str(tmp_path / "catalog.json")},
    }


def test_login_plans_and_units_in_chromium(tmp_path: Path, lake_config: dict[str, object]) -> None:
    with console_process(tmp_path, lake_config, os.environ.copy()) as url, chromium_page() as page:
        login(page, url, TOKEN)
        assert page.text_content("#principal") == "maint-a"
        # Units: only the granted unit is offered; its chart draws one trend per granted signal.
        options = page.locator("#asset option").all_text_contents()
        assert len(options) == 1 and ASSET in options[0] and OTHER not in page.content()
        page.click("#show")
        page.wait_for_selector("body[data-charts]")
        charts = page.locator(".chart")
        assert charts.count() == 2  # flow and pressure; setpoint is above the grant's ceiling
        assert page.locator(".chart canvas").count() == 2
        assert [c.get_attribute("data-signal") for c in charts.all()] == ["flow", "pressure"]
        # each chart: the trend and the flagged marks (no rejected table is granted)
        assert [c.get_attribute("data-series") for c in charts.all()] == ["2", "2"]
        assert page.text_content("#raw-points") == str(2 * 1440)
        screenshot(page, "units")
        # Plans: the shipped pump AAS gives its plan as a table.
        page.click("a[data-view=plans]")
        page.set_input_files("#aas", str(EXAMPLES / "pump.json"))
        page.click("#make-plan")
        page.wait_for_selector("#plan-table")
        assert page.text_content("#plan-signals") == str(len(load_plan(EXAMPLES / "pump.json").rows))
        assert page.locator("#plan-table tbody tr").count() == len(load_plan(EXAMPLES / "pump.json").rows)
        screenshot(page, "plans")
        # An out-of-grant asset asked for by URL shows nothing of it, and the refusal is logged.
        page.goto(f"{url}/units?asset={OTHER}&site=plant-1&from=2026-11-27T00:00:00&to=2026-11-28T00:00:00")
        assert "refused" in (page.text_content("#error") or "")
        assert page.locator(".chart").count() == 0
    log = SqliteEvidenceLog(tmp_path / "evidence.db")
    try:
        fetches = [e.entry.attributes for e in log.read() if e.entry.event == EventType.FETCH]
    finally:
        log.close()
    assert [(f["asset"], f["decision"], f["channel"]) for f in fetches] == [
        (ASSET, "allowed", "console"),
        (OTHER, "denied", "console"),
    ]
