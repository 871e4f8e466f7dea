from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from tests.storage.test_read_access import ASSET, DAY1, _fill

from tidm.evidence import MemoryEvidenceLog
from tidm.evidence.api import EventType
from tidm.storage import Lake
from tidm.storage.errors import LakeError
from tidm.storage.recall import expire, recall


def _digests(lake: Lake) -> dict[str, str]:
    return {k: hashlib.sha256(lake.read_bytes(k)).hexdigest() for k in lake.list_keys("clean")}


def _check_recall(lake: Lake) -> None:
    before = _digests(lake)
    evidence = MemoryEvidenceLog()
    # From noon of day 1 to 06:00 of day 2: one whole object goes, one is cut.
    start, end = DAY1 + dt.timedelta(hours=12), DAY1 + dt.timedelta(days=1, hours=6)
    result = recall(
        lake,
        evidence,
        asset=ASSET,
        start=start,
        end=end,
        reason="provider withdrew consent",
        actor="provider:acme",
    )
    assert len(result.deleted) == 1 and len(result.rewritten) == 1
    assert result.rows_removed == 720 + 360
    after = _digests(lake)
    drops = [e.entry for e in evidence.read() if e.entry.event == EventType.DROP]
    assert {d.subject for d in drops} == {before[k] for k in result.deleted + result.rewritten}
    assert all(d.attributes["reason"] == "provider withdrew consent" for d in drops)
    (modified,) = [e.entry for e in evidence.read() if e.entry.event == EventType.CONTENT_MODIFIED]
    assert modified.subject == after[result.rewritten[0]] and modified.inputs == (
        before[result.rewritten[0]],
    )
    assert set(after) == set(before) - set(result.deleted)
    with pytest.raises(LakeError, match="needs a reason"):
        recall(lake, evidence, asset=ASSET, start=start, end=end, reason=" ", actor="x")


def test_recall_on_a_local_folder(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    _check_recall(lake)


@pytest.mark.integration
def test_recall_on_s3_leaves_no_versions(s3_config: dict[str, str], s3_bucket: str, s3_client) -> None:  # type: ignore[no-untyped-def]
    from minio.commonconfig import ENABLED
    from minio.versioningconfig import VersioningConfig

    s3_client.set_bucket_versioning(s3_bucket, VersioningConfig(ENABLED))
    lake = Lake.s3(
        bucket=s3_bucket,
        endpoint=s3_config["endpoint"],
        access_key=s3_config["access_key"],
        secret_key=s3_config["secret_key"],
        region=s3_config["region"],
    )
    _fill(lake)
    _fill(lake)  # a second write of every object: two versions each
    _check_recall(lake)
    names = {o.object_name: 0 for o in s3_client.list_objects(s3_bucket, recursive=True)}
    for version in s3_client.list_objects(s3_bucket, recursive=True, include_version=True):
        if version.object_name in names:
            names[version.object_name] += 1
        else:
            raise AssertionError(f"a version of recalled {version.object_name} is still there")
    day2 = [n for n in names if "date=2026-11-28" in n and "pump" in n]
    (rewritten,) = [n for n in day2 if n.endswith("-1440-1441.parquet")]
    (untouched,) = [n for n in day2 if n != rewritten]
    assert names[rewritten] == 1, "the rewrite left no older version with the recalled rows behind"
    assert names[untouched] == 2, "objects outside the recall keep their history"


def test_retention_expires_whole_old_days(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path / "lake")
    _fill(lake)
    before = _digests(lake)
    evidence = MemoryEvidenceLog()
    expired = expire(
        lake,
        evidence,
        retention={"clean": dt.timedelta(days=1)},
        actor="retention",
        now=DAY1 + dt.timedelta(days=2, hours=1),
    )
    assert {k.split("/date=")[1][:10] for k in expired} == {"2026-11-27"}
    assert len(expired) == 4
    entries = [e.entry for e in evidence.read()]
    assert all(e.event == EventType.EXPIRE for e in entries)
    assert {e.subject for e in entries} == {before[k] for k in expired}
