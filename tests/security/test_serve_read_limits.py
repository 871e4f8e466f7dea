"""Attack: many parallel reads against `max_reads: 5`, on one `tidm serve` and on two replicas that
share evidence through real Kafka and the real notary. Exactly 5 succeed in total."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr
from tests.cli.process_support import start, stop
from tests.storage.test_read_access import ASSET, DAY1, _fill

from tidm.cli.main import cli
from tidm.evidence import SqliteEvidenceLog
from tidm.evidence.api import EventType, EvidenceEntry
from tidm.evidence.objectstore import S3ObjectStore, S3StoreSettings
from tidm.evidence.tiles import TileEvidenceLog
from tidm.storage import Lake
from tidm.storage.access import counts_against

TOKENS = {"limited-a": "token-a", "limited-b": "token-b"}  # two principals, one grant each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _grants(root: Path) -> Path:
    doc = {
        "principals": {
            name: {
                "token_sha256": [hashlib.sha256(token.encode()).hexdigest()],
                "grants": [{"id": "limited", "assets": [ASSET], "ceiling": "core", "max_reads": 5}],
            }
            for name, token in TOKENS.items()
        }
    }
    path = root / "grants.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _serve(root: Path, name: str, config: dict[str, Any], env: dict[str, str]) -> tuple[str, Any, Path]:
    port = _free_port()
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "serve": {"port": port}}))
    log = root / f"{name}.log"
    proc = start(["serve", "--config", str(path)], log, env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, proc, log
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)


def _hammer(urls: list[str], principal: str, parallel: int) -> list[int]:
    params = {"from": DAY1.isoformat(), "to": (DAY1 + dt.timedelta(hours=1)).isoformat(), "signals": "flow"}
    headers = {"Authorization": f"Bearer {TOKENS[principal]}"}

    def one(i: int) -> int:
        r = httpx.get(
            f"{urls[i % len(urls)]}/v1/units/{ASSET}/samples", params=params, headers=headers, timeout=120
        )
        if r.status_code == 200:
            assert r.content, "an allowed read carries data"
        else:
            assert "read limit of 5 reached" in r.json()["detail"], r.text
        return r.status_code

    with ThreadPoolExecutor(max_workers=min(parallel, 64)) as pool:
        return list(pool.map(one, range(parallel)))


def _check_log(entries: list[EvidenceEntry], principal: str, parallel: int) -> None:
    fetches = [e for e in entries if e.event == EventType.FETCH and e.attributes["principal"] == principal]
    counted = [e for e in fetches if counts_against(e, principal, "limited")]
    denied = [e for e in fetches if e.attributes["decision"] == "denied"]
    # Refusals are rate-limited: an entry stands for itself, or for `repeats` refusals in an interval.
    assert sum(e.attributes.get("repeats", 1) for e in denied) == parallel - 5, "every refusal is counted"
    assert all("read limit of 5 reached" in e.attributes["reason"] for e in denied)
    assert len(counted) >= 5
    winners = {e.subject for e in counted} - {e.attributes.get("reservation") for e in denied}
    assert len(winners) == 5, "the log alone says which 5 reads were granted"
    reserved = [e for e in counted if e.attributes["decision"] == "reserved"]
    if reserved:  # through the notary: each winner's reservation has an `allowed` outcome
        outcomes = [
            e for e in fetches if e.attributes["decision"] == "allowed" and "reservation" in e.attributes
        ]
        assert {e.attributes["reservation"] for e in outcomes} == winners
    else:  # SQLite: the allowed entries are the reads
        assert all(e.attributes["decision"] == "allowed" for e in counted) and len(counted) == 5


def test_parallel_reads_on_one_serve_with_sqlite(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    config = {
        "lake": {"url": str(tmp_path / "lake")},
        "evidence": {"path": str(tmp_path / "evidence.db")},
        "read": {"grants": str(_grants(tmp_path))},
    }
    url, proc, log = _serve(tmp_path, "serve", config, dict(os.environ))
    try:
        codes = _hammer([url], "limited-a", 100)
    finally:
        stop(proc, log)
    assert codes.count(200) == 5 and codes.count(403) == 95
    store = SqliteEvidenceLog(tmp_path / "evidence.db")
    try:
        _check_log([e.entry for e in store.read()], "limited-a", 100)
    finally:
        store.close()


@pytest.mark.integration
@pytest.mark.parametrize("kafka", ["broker", "cluster"])
def test_parallel_reads_on_one_and_two_replicas_through_kafka_and_the_notary(
    kafka: str,
    s3_config: dict[str, str],
    s3_bucket: str,
    unique_name: Callable[..., str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """On the shared broker and on the 3-node cluster (evidence topic RF 3, min.insync.replicas 2)."""
    if kafka == "cluster":
        kafka_bootstrap = str(request.getfixturevalue("kafka_cluster").bootstrap)
    else:
        kafka_bootstrap = str(request.getfixturevalue("kafka_bootstrap"))
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    topic = unique_name("evidence")
    tiles = {
        "endpoint": s3_config["endpoint"],
        "bucket": s3_bucket,
        "prefix": "evidence",
        "region": s3_config["region"],
        "create_bucket": False,
    }
    env = {
        **os.environ,
        "TIDM_TRANSPORT__BOOTSTRAP": kafka_bootstrap,
        "TIDM_STORE__S3__ACCESS_KEY": s3_config["access_key"],
        "TIDM_STORE__S3__SECRET_KEY": s3_config["secret_key"],
        "TIDM_EVIDENCE__STORE__ACCESS_KEY": s3_config["access_key"],
        "TIDM_EVIDENCE__STORE__SECRET_KEY": s3_config["secret_key"],
    }
    key = tmp_path / "notary.key"
    out = CliRunner().invoke(cli, ["notary", "keygen", "--name", "tidm.test/serve", "--out", str(key)])
    assert out.exit_code == 0, out.output
    (tmp_path / "notary.yaml").write_text(
        yaml.safe_dump(
            {
                "notary": {"topic": topic, "group_id": unique_name("notary"), "key_file": str(key)},
                "transport": {"kind": "kafka"},
                "store": {"kind": "s3", "s3": tiles},
            }
        )
    )
    notary_log = tmp_path / "notary.log"
    notary = start(["notary", "run", "--config", str(tmp_path / "notary.yaml")], notary_log, env)
    config = {
        "lake": {"url": str(tmp_path / "lake")},
        "evidence": {"kind": "kafka", "topic": topic, "store": tiles},
        "transport": {"kind": "kafka"},
        "read": {"grants": str(_grants(tmp_path))},
    }
    servers = []
    try:
        servers = [_serve(tmp_path, f"serve-{i}", config, env) for i in range(2)]
        one = _hammer([servers[0][0]], "limited-a", 50)
        both = _hammer([s[0] for s in servers], "limited-b", 200)
    finally:
        for _, proc, log in servers:
            stop(proc, log)
        stop(notary, notary_log)
    assert one.count(200) == 5 and one.count(403) == 45
    assert both.count(200) == 5 and both.count(403) == 195
    store = TileEvidenceLog(
        S3ObjectStore(
            S3StoreSettings(
                **tiles,
                access_key=SecretStr(s3_config["access_key"]),
                secret_key=SecretStr(s3_config["secret_key"]),
            )
        )
    )
    try:
        entries = [e.entry for e in store.read()]
    finally:
        store.close()
    _check_log(entries, "limited-a", 50)
    _check_log(entries, "limited-b", 200)
