"""`tidm query unit`, `tidm catalog`, `tidm recall` and `tidm lake expire` on a local lake."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from click.testing import CliRunner
from tests.storage.test_read_access import ASSET, _fill

from tidm.cli.main import cli
from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType
from tidm.storage import Lake


def _setup(tmp_path: Path, ceiling: str = "core") -> Path:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    grants = {
        "principals": {
            "ops": {
                "token_sha256": [hashlib.sha256(b"t").hexdigest()],
                "grants": [{"id": "all", "ceiling": ceiling, "tables": ["clean"]}],
            }
        }
    }
    (tmp_path / "grants.yaml").write_text(yaml.safe_dump(grants))
    config = {
        "lake": {"url": str(tmp_path / "lake")},
        "evidence": {"path": str(tmp_path / "evidence.db")},
        "read": {"grants": str(tmp_path / "grants.yaml"), "principal": "ops", "retention_days": {"clean": 0}},
    }
    path = tmp_path / "read.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _events(tmp_path: Path) -> list[EventType]:
    log = SqliteEvidenceLog(tmp_path / "evidence.db")
    try:
        return [e.entry.event for e in log.read()]
    finally:
        log.close()


def test_query_unit_formats_and_logging(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    runner = CliRunner()
    args = ["query", "unit", ASSET, "--from", "2026-11-27", "--to", "2026-11-28", "--config", str(config)]
    out = runner.invoke(cli, [*args, "--signals", "flow", "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].startswith("ts,recv_ts,asset_id,signal,value")
    assert len(out.output.splitlines()) == 1 + 2 * 720 // 3
    target = tmp_path / "export.parquet"
    out = runner.invoke(cli, [*args, "--format", "parquet", "--out", str(target)])
    assert out.exit_code == 0, out.output
    assert pq.read_table(target).num_rows == 2 * 720
    assert runner.invoke(cli, args).exit_code == 0
    assert _events(tmp_path) == [EventType.FETCH] * 3


def test_query_refusal_is_an_error_with_the_reason(tmp_path: Path) -> None:
    config = _setup(tmp_path, ceiling="general")
    out = CliRunner().invoke(
        cli,
        [
            "query",
            "unit",
            ASSET,
            "--from",
            "2026-11-27",
            "--to",
            "2026-11-28",
            "--table",
            "rejected",
            "--config",
            str(config),
        ],
    )
    assert out.exit_code != 0
    assert "outside its scope" in str(out.exception)
    assert _events(tmp_path) == [EventType.FETCH]


def test_bad_time_names_the_option(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    out = CliRunner().invoke(
        cli, ["query", "unit", ASSET, "--from", "yesterday-ish", "--to", "now", "--config", str(config)]
    )
    assert out.exit_code == 2 and "--from" in out.output


def test_catalog_recall_and_expire(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli, ["catalog", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "pump-1" in out.output and "fan-2" in out.output
    out = runner.invoke(
        cli,
        [
            "recall",
            "--asset",
            ASSET,
            "--from",
            "2026-11-28",
            "--to",
            "2026-11-29",
            "--reason",
            "contract ended",
            "--config",
            str(config),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "2 objects deleted" in out.output
    out = runner.invoke(cli, ["lake", "expire", "--config", str(config)])
    assert out.exit_code == 0, out.output
    events = _events(tmp_path)
    assert events.count(EventType.DROP) == 2
    assert events.count(EventType.EXPIRE) >= 2, "the fixed 2026-11-27 data is older than today"


def test_catalog_joins_the_signal_catalog(tmp_path: Path) -> None:
    from tidm.semantics.catalog import CatalogEntry, SignalCatalog
    from tidm.semantics.classification import Level

    config = _setup(tmp_path)
    SignalCatalog(
        [
            CatalogEntry(
                ASSET, "pressure", unit="bar", semantic_id="0173-1#02-AAB663#003", level=Level.GENERAL
            ),
            CatalogEntry(ASSET, "vibration", unit="mm/s", level=Level.IMPORTANT),
        ]
    ).save(tmp_path / "catalog.json")
    doc = yaml.safe_load(config.read_text())
    doc["read"]["catalog"] = str(tmp_path / "catalog.json")
    config.write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(cli, ["catalog", "--format", "json", "--config", str(config)])
    assert out.exit_code == 0, out.output
    import json

    rows = {(r["asset"], r["signal"]): r for r in json.loads(out.output)}
    assert rows[(ASSET, "pressure")]["unit"] == "bar" and rows[(ASSET, "pressure")]["rows"] == 3 * 480
    assert rows[(ASSET, "pressure")]["level"] == "general"
    assert rows[(ASSET, "vibration")]["rows"] == 0, "catalogued but no data yet"
    assert rows[(ASSET, "flow")]["level"] == "unclassified"
