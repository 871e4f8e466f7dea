"""Tamper tests on a real pipeline run's artefacts: `tidm evidence verify` names what changed and where.

One embedded pipeline run (simulator -> agent -> embedded transport -> clean job -> folder lake, SQLite
evidence) is made per module; each test works on its own copy of the artefacts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tidm.cli.main import cli
from tidm.cli.pipeline import run_pipeline
from tidm.edge_agent import AgentSettings, BatchSettings, OpcUaSourceSettings
from tidm.evidence import EventType, EvidenceEntry, Signer, SqliteEvidenceLog, save_signer, sha256_hex
from tidm.evidence.objectstore import FolderObjectStore
from tidm.evidence.tiles import TileEvidenceLog
from tidm.ingest import AgentIdentity, FolderQuarantine
from tidm.ingest.transports import EmbeddedTransport
from tidm.simulator import SimulatorConfig
from tidm.storage import Lake
from tidm.stream_processing import JobSettings


@dataclass(frozen=True)
class Run:
    root: Path
    signer: Signer
    objects: tuple[str, ...]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("run")
    evidence = SqliteEvidenceLog(root / "evidence.db")
    lake = Lake.local(root / "lake")
    result = asyncio.run(
        run_pipeline(
            sim_config=SimulatorConfig.fleet(2, 5, 100, seed=3, max_ticks=20),
            agent_settings=AgentSettings(
                agent_id="agent-tamper",
                site="plant-1",
                topic="tidm.samples",
                batch=BatchSettings(max_rows=40, max_age_ms=200),
                opcua=[OpcUaSourceSettings(endpoint="opc.tcp://set-by-pipeline", security="none")],
            ),
            identity=AgentIdentity.generate("agent-tamper"),
            transport=EmbeddedTransport(root / "log", partitions=2),
            lake=lake,
            evidence=evidence,
            quarantine=lambda _p: FolderQuarantine(root / "quarantine", evidence, actor="job:tamper"),
            job_settings=JobSettings(
                name="tamper", topics=("tidm.samples",), group_id="tamper", max_records=5
            ),
        )
    )
    assert result.job.objects >= 2
    signer = Signer.generate("tidm.test/tamper")
    save_signer(signer, root / "notary.key")
    (root / "checkpoint").write_text(evidence.checkpoint(signer), encoding="utf-8")
    # The same entries as a tlog-tiles log, as the notary would have written them.
    tiles = TileEvidenceLog(FolderObjectStore(root / "tiles"))
    tiles.append([item.entry for item in evidence.read()])
    tiles.checkpoint(signer)
    tiles.close()
    evidence.close()
    keys = tuple(k for k in lake.list_keys("") if k.endswith(".parquet"))
    return Run(root, signer, keys)


@pytest.fixture
def run(pipeline_run: Run, tmp_path: Path) -> Run:
    for name in ("evidence.db", "checkpoint", "lake", "tiles", "notary.key"):
        source = pipeline_run.root / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return Run(tmp_path, pipeline_run.signer, pipeline_run.objects)


def _verify(run: Run, *extra: str, log: str = "evidence.db", lake: bool = True) -> Result:
    args = ["evidence", "verify", "--log", str(run.root / log), "--vkey", run.signer.verifier.vkey, *extra]
    if lake:
        args += ["--lake", str(run.root / "lake")]
    return CliRunner().invoke(cli, args)


def _db(run: Run) -> sqlite3.Connection:
    return sqlite3.connect(run.root / "evidence.db", isolation_level=None)


def test_untouched_artefacts_verify(run: Run) -> None:
    out = _verify(run, "--state", str(run.root / "state.json"))
    assert out.exit_code == 0, out.output
    assert f"{len(run.objects)} objects proven back to agent batches" in out.output
    assert json.loads((run.root / "state.json").read_text())["origin"] == "tidm.test/tamper"
    tiles = _verify(run, log="tiles")
    assert tiles.exit_code == 0, tiles.output


def test_one_byte_of_a_landed_parquet_file(run: Run) -> None:
    key = run.objects[0]
    path = run.root / "lake" / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    out = _verify(run)
    assert out.exit_code == 1
    assert f"FAILED: object {key}: content changed" in out.output
    assert sum("FAILED" in line for line in out.output.splitlines()) == 1


def test_one_byte_of_an_entry(run: Run) -> None:
    with closing(_db(run)) as db:
        canonical = db.execute("SELECT canonical FROM entries WHERE idx = 5").fetchone()[0]
        data = bytearray(canonical)
        at = data.index(b'"subject":"') + len(b'"subject":"')
        data[at] = ord("0") if data[at] != ord("0") else ord("1")  # still valid JSON, another digest
        changed = bytes(data)
        db.execute("UPDATE entries SET canonical = ? WHERE idx = 5", (changed,))
    out = _verify(run, lake=False)
    assert out.exit_code == 1
    assert "index=5" in out.output and "entry bytes changed" in out.output


def test_one_byte_of_a_tile(run: Run) -> None:
    tile = next(p for p in sorted((run.root / "tiles/tile/0").rglob("*")) if p.is_file())
    tile.chmod(0o644)
    data = bytearray(tile.read_bytes())
    data[32 * 3] ^= 0x80
    tile.write_bytes(bytes(data))
    out = _verify(run, log="tiles", lake=False)
    assert out.exit_code == 1
    relative = tile.relative_to(run.root / "tiles").as_posix()
    assert "index=3" in out.output and relative in out.output


def test_one_byte_of_a_checkpoint(run: Run) -> None:
    checkpoint = run.root / "checkpoint"
    text = checkpoint.read_text()
    lines = text.split("\n")
    lines[2] = ("A" if lines[2][0] != "A" else "B") + lines[2][1:]
    checkpoint.write_text("\n".join(lines))
    out = _verify(run, "--checkpoint", str(checkpoint), lake=False)
    assert out.exit_code == 1
    assert f"FAILED: checkpoint ({checkpoint})" in out.output and "signature" in out.output


def test_a_deleted_entry(run: Run) -> None:
    with closing(_db(run)) as db:
        db.execute("DELETE FROM entries WHERE idx = 7")
    out = _verify(run, lake=False)
    assert out.exit_code == 1
    assert "entry is missing" in out.output and "index=7" in out.output


def test_two_reordered_entries(run: Run) -> None:
    with closing(_db(run)) as db:
        rows = {
            idx: row
            for idx, *row in db.execute(
                "SELECT idx, canonical, leaf_hash, event, subject, actor, time_us FROM entries "
                "WHERE idx IN (3, 4)"
            )
        }
        db.execute("DELETE FROM entries WHERE idx IN (3, 4)")
        db.execute("INSERT INTO entries VALUES (3, ?, ?, ?, ?, ?, ?)", rows[4])
        db.execute("INSERT INTO entries VALUES (4, ?, ?, ?, ?, ?, ?)", rows[3])
    out = _verify(run, lake=False)
    assert out.exit_code == 1
    assert "moved, swapped or replaced" in out.output and "index=3" in out.output


def _drop(run: Run, key: str, *, record: bool) -> None:
    path = run.root / "lake" / key
    digest = sha256_hex(path.read_bytes())
    path.unlink()
    log = SqliteEvidenceLog(run.root / "evidence.db")
    if record:
        log.append(
            [
                EvidenceEntry(
                    EventType.DROP,
                    digest,
                    "user:ops",
                    time.time_ns() // 1000,
                    (),
                    {"object": key, "reason": "retention"},
                )
            ]
        )
    log.checkpoint(run.signer)
    log.close()


def test_a_recorded_deletion_is_reported_as_a_deletion(run: Run) -> None:
    key = run.objects[-1]
    _drop(run, key, record=True)
    out = _verify(run)
    assert out.exit_code == 0, out.output
    assert f"DELETED: object {key}: deleted, as recorded: DROP" in out.output
    assert "reason: retention" in out.output and "1 recorded deletions" in out.output


def test_an_unrecorded_deletion_fails(run: Run) -> None:
    key = run.objects[-1]
    _drop(run, key, record=False)
    out = _verify(run)
    assert out.exit_code == 1
    assert f"FAILED: object {key}: landed" in out.output and "no DROP/EXPIRE" in out.output


def test_a_rolled_back_log_fails_against_the_state_file(run: Run) -> None:
    state = str(run.root / "state.json")
    log = SqliteEvidenceLog(run.root / "evidence.db")
    log.append([EvidenceEntry(EventType.FETCH, sha256_hex(b"x"), "user:u", 1, (), {})])
    log.checkpoint(run.signer)
    log.close()
    assert _verify(run, "--state", state, lake=False).exit_code == 0
    with closing(_db(run)) as db:
        db.execute("DELETE FROM entries WHERE idx = (SELECT MAX(idx) FROM entries)")
        db.execute("DELETE FROM checkpoints WHERE id = (SELECT MAX(id) FROM checkpoints)")
    out = _verify(run, "--state", state, lake=False)
    assert out.exit_code == 1 and "the log shrank" in out.output


def test_prove_writes_a_bundle_that_verifies_in_a_fresh_process(run: Run) -> None:
    key = run.objects[0]
    bundle = run.root / "bundle.json"
    out = CliRunner().invoke(
        cli,
        [
            "evidence",
            "prove",
            key,
            "--log",
            str(run.root / "evidence.db"),
            "--lake",
            str(run.root / "lake"),
            "--out",
            str(bundle),
        ],
    )
    assert out.exit_code == 0, out.output
    fresh = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidm.cli.main",
            "evidence",
            "verify",
            "--bundle",
            str(bundle),
            "--vkey",
            run.signer.verifier.vkey,
            "--file",
            str(run.root / "lake" / key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "ok:" in fresh.stdout and "agent batches" in fresh.stdout
    document = json.loads(bundle.read_text())
    document["entries"][0]["entry"] = document["entries"][0]["entry"].replace("agent", "agenT", 1)
    bundle.write_text(json.dumps(document))
    bad = CliRunner().invoke(
        cli, ["evidence", "verify", "--bundle", str(bundle), "--vkey", run.signer.verifier.vkey]
    )
    assert bad.exit_code == 1 and "entries[0]" in bad.output


def test_report_and_prov(run: Run) -> None:
    html, doc, prov = run.root / "report.html", run.root / "report.json", run.root / "prov.json"
    key = run.objects[0]
    out = CliRunner().invoke(
        cli,
        [
            "evidence",
            "report",
            "--log",
            str(run.root / "evidence.db"),
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--object",
            key,
            "--lake",
            str(run.root / "lake"),
            "--html",
            str(html),
            "--json",
            str(doc),
            "--vkey",
            run.signer.verifier.vkey,
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(doc.read_text())
    assert report["lineage"]["ok"] and report["log"]["checkpoint"]["signature_verified"]
    assert "<svg" in html.read_text()
    out = CliRunner().invoke(
        cli, ["evidence", "prov", "--log", str(run.root / "evidence.db"), "--out", str(prov)]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(prov.read_text())["entity"]
