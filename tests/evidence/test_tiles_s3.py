"""The tile log on the real S3 server (SeaweedFS): same proofs as in memory, Object Lock on tiles."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator

import pytest
from minio import Minio
from minio.commonconfig import GOVERNANCE
from minio.error import S3Error
from pydantic import SecretStr
from tests.evidence._support import make_entry

from tidm.evidence import MemoryEvidenceLog, Signer, verify_log
from tidm.evidence.objectstore import S3ObjectStore, S3StoreSettings
from tidm.evidence.tiles import TileEvidenceLog, tile_path

pytestmark = pytest.mark.integration

_LOCK_S = 4


def _settings(s3_config: dict[str, str], bucket: str, **extra: object) -> S3StoreSettings:
    return S3StoreSettings(
        endpoint=s3_config["endpoint"],
        bucket=bucket,
        prefix="evidence",
        access_key=SecretStr(s3_config["access_key"]),
        secret_key=SecretStr(s3_config["secret_key"]),
        region=s3_config["region"],
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def lock_bucket(s3_client: Minio, unique_name: Callable[..., str]) -> Iterator[str]:
    """A bucket created with Object Lock; objects are kept under a retention of a few seconds only, so the
    test can wait it out and clean up (GOVERNANCE bypass is not in the minio client)."""
    bucket = unique_name("lock")
    s3_client.make_bucket(bucket, object_lock=True)
    yield bucket
    deadline = time.monotonic() + 30
    while True:
        left = list(s3_client.list_objects(bucket, recursive=True, include_version=True))
        for obj in left:
            try:
                s3_client.remove_object(bucket, obj.object_name or "", version_id=obj.version_id)
            except S3Error:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    try:
        s3_client.remove_bucket(bucket)
    except S3Error:
        pass


def test_tiles_on_s3_serve_the_same_tree_and_verify(
    s3_config: dict[str, str], s3_bucket: str, signer: Signer
) -> None:
    log = TileEvidenceLog(S3ObjectStore(_settings(s3_config, s3_bucket, create_bucket=False)))
    memory = MemoryEvidenceLog()
    number = 0
    for size in (3, 300, 1):
        batch = [make_entry(number + i) for i in range(size)]
        number += size
        log.append(batch)
        memory.append(batch)
    note = log.checkpoint(signer)
    log.close()
    reopened = TileEvidenceLog(S3ObjectStore(_settings(s3_config, s3_bucket, create_bucket=False)))
    try:
        assert reopened.size() == number
        assert reopened.root() == memory.root()
        assert reopened.inclusion_proof(150, 200) == memory.inclusion_proof(150, 200)
        assert reopened.consistency_proof(10, number) == memory.consistency_proof(10, number)
        assert reopened.latest_checkpoint() == note
        assert verify_log(reopened, [signer.verifier], note).ok
        assert [i.index for i in reopened.find(make_entry(42).subject)] == [42]
    finally:
        reopened.close()


def test_tiles_get_object_lock_retention_where_the_bucket_offers_it(
    s3_config: dict[str, str], s3_client: Minio, lock_bucket: str, signer: Signer
) -> None:
    # Seconds, not days, so the fixture can remove the objects after the test.
    store = S3ObjectStore(_settings(s3_config, lock_bucket, retention_days=_LOCK_S / 86400))
    assert store.locked, "SeaweedFS offers Object Lock on buckets created with it"
    log = TileEvidenceLog(store)
    try:
        log.append([make_entry(i) for i in range(5)])
        log.checkpoint(signer)
        key = tile_path(0, 0, 5)
        found = store.retention(key)
        assert found is not None and found[0] == GOVERNANCE
        assert found[1] > dt.datetime.now(dt.UTC)
        assert store.retention("checkpoint") is None  # the one object that is replaced is not locked
        name = f"evidence/{key}"
        version = s3_client.stat_object(lock_bucket, name).version_id
        with pytest.raises(S3Error):
            s3_client.remove_object(lock_bucket, name, version_id=version)
        assert store.get(key) is not None
    finally:
        log.close()
