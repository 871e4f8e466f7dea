from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import SecretStr
from tests.storage.test_read_access import _rows

from tidm.storage import Lake, LakeSettings
from tidm.storage.buckets import ensure_bucket
from tidm.storage.errors import LakeError


def test_schema_versions_are_kept_in_the_objects(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    rows = _rows("a", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 3, 0)
    lake.write_parquet("clean/x/1.parquet", rows, schema_version="clean/1")
    lake.write_parquet(
        "clean/x/2.parquet", rows.append_column("value_si", rows.column("value")), schema_version="clean/2"
    )
    lake.write_parquet("clean/x/3.parquet", rows)
    assert lake.schema_versions("clean") == {
        "clean/1": ["clean/x/1.parquet"],
        "clean/2": ["clean/x/2.parquet"],
        "unknown": ["clean/x/3.parquet"],
    }


@pytest.mark.integration
def test_bucket_setup_with_versioning_and_object_lock(
    s3_config: dict[str, str], unique_name, s3_client
) -> None:  # type: ignore[no-untyped-def]
    bucket = unique_name("lake")
    settings = LakeSettings(
        url=f"s3://{bucket}/lake",
        endpoint=s3_config["endpoint"],
        region=s3_config["region"],
        access_key=SecretStr(s3_config["access_key"]),
        secret_key=SecretStr(s3_config["secret_key"]),
    )
    try:
        state = ensure_bucket(settings, object_lock=True)
        assert state.created and state.versioning and state.object_lock
        again = ensure_bucket(settings)
        assert not again.created and again.versioning
    finally:
        for obj in s3_client.list_objects(bucket, recursive=True, include_version=True):
            s3_client.remove_object(bucket, obj.object_name, version_id=obj.version_id)
        s3_client.remove_bucket(bucket)


def test_a_folder_lake_needs_no_bucket() -> None:
    with pytest.raises(LakeError, match="not s3://bucket"):
        ensure_bucket(LakeSettings(url="lake"))
