"""`tidm notary run` as its own OS process: settings from YAML + environment, SIGTERM drains and signs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.evidence._support import landed_lineage

from tidm.cli.main import cli
from tidm.evidence import Verifier, open_checkpoint, trace
from tidm.evidence.objectstore import FolderObjectStore
from tidm.evidence.tiles import TileEvidenceLog
from tidm.ingest.evidence_sink import KafkaEvidenceSink
from tidm.ingest.transports import KafkaTransport

TIDM = [sys.executable, "-m", "tidm.cli.main"]


def test_new_commands_have_help() -> None:
    runner = CliRunner()
    for args in (
        ["notary"],
        ["notary", "run"],
        ["notary", "keygen"],
        ["evidence", "prove"],
        ["evidence", "report"],
        ["evidence", "prov"],
    ):
        out = runner.invoke(cli, [*args, "--help"])
        assert out.exit_code == 0, (args, out.output)


@pytest.mark.integration
def test_notary_process_sequences_the_topic_into_tiles(
    kafka_bootstrap: str, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    key = tmp_path / "notary.key"
    out = CliRunner().invoke(cli, ["notary", "keygen", "--name", "tidm.test/notary", "--out", str(key)])
    assert out.exit_code == 0, out.output
    vkey = out.output.strip()
    topic = unique_name("evidence")
    config = tmp_path / "notary.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "notary": {
                    "topic": topic,
                    "group_id": unique_name("notary"),
                    "key_file": str(key),
                    "checkpoint_interval_s": 0.5,
                },
                "transport": {"kind": "kafka"},
                "store": {"kind": "tiles", "path": str(tmp_path / "tiles")},
            }
        )
    )
    env = {**os.environ, "TIDM_TRANSPORT__BOOTSTRAP": kafka_bootstrap}
    log = tmp_path / "notary.log"
    with log.open("wb") as sink_out:
        proc = subprocess.Popen(
            [*TIDM, "notary", "run", "--config", str(config)],
            stdout=sink_out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        subject, lineage = landed_lineage()
        with KafkaEvidenceSink(KafkaTransport(kafka_bootstrap, client_id="sink"), topic) as sink:
            sink.append(lineage[:4])
            sink.append(lineage[4:])
        deadline = time.monotonic() + 60
        store = TileEvidenceLog(FolderObjectStore(tmp_path / "tiles"))
        while time.monotonic() < deadline and store.size() < len(lineage):
            time.sleep(0.3)
            store.refresh()
        assert store.size() == len(lineage), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert "notary stopped: 8 entries appended" in log.read_text()
    store = TileEvidenceLog(FolderObjectStore(tmp_path / "tiles"))
    note = store.latest_checkpoint()
    assert note is not None
    checkpoint, _ = open_checkpoint(note, [Verifier.from_vkey(vkey)])
    assert checkpoint.size == len(lineage)
    assert trace(store, subject).ok
    store.close()
    verified = CliRunner().invoke(
        cli, ["evidence", "verify", "--log", str(tmp_path / "tiles"), "--vkey", vkey]
    )
    assert verified.exit_code == 0, verified.output
