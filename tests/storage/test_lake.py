import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from tidm.storage import Lake, LakeError, LakeSettings, LandingIntent, object_key


def test_object_key_follows_the_layout_and_encodes_ids() -> None:
    key = object_key(
        "clean",
        site="plant 1",
        asset="urn:tidm:asset:pump-001",
        date=dt.date(2026, 11, 28),
        topic="tidm.samples",
        partition=3,
        first=10,
        last=19,
    )
    assert key == (
        "clean/site=plant%201/asset=urn%3Atidm%3Aasset%3Apump-001/date=2026-11-28/tidm.samples-3-10-19.parquet"
    )


def _exercise(lake: Lake) -> None:
    table = pa.table({"x": [1, 2, 3]})
    landed = lake.write_parquet("clean/a/1.parquet", table)
    data = lake.read_bytes("clean/a/1.parquet")
    assert landed.sha256 == hashlib.sha256(data).hexdigest()
    assert landed.rows == 3 and landed.size == len(data)
    again = lake.write_parquet("clean/a/1.parquet", table)
    assert again.sha256 == landed.sha256, "same rows give the same bytes, so a replay overwrites identically"
    assert lake.list_keys("clean") == ["clean/a/1.parquet"]
    assert lake.read_table("clean").num_rows == 3
    intent = LandingIntent("t.x", 0, 5, 9, ("clean/a/1.parquet",))
    lake.write_intent(intent)
    assert lake.pending_intents("t.x", 0) == [intent]
    assert lake.pending_intents("t.x", 1) == []
    lake.clear_intent(intent)
    assert lake.pending_intents("t.x", 0) == []
    lake.delete("clean/a/1.parquet")
    assert not lake.exists("clean/a/1.parquet")
    with pytest.raises(LakeError, match="not found"):
        lake.read_bytes("clean/a/1.parquet")


def test_local_lake(tmp_path: Path) -> None:
    lake = Lake.from_settings(LakeSettings(url=str(tmp_path / "lake")))
    _exercise(lake)
    assert not list((tmp_path / "lake").rglob("*.tmp"))


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(LakeError, match="unsupported scheme 'gs'"):
        Lake.from_settings(LakeSettings(url="gs://bucket/x"))


@pytest.mark.integration
def test_s3_lake(s3_config: dict[str, str], s3_bucket: str) -> None:
    from pydantic import SecretStr

    lake = Lake.from_settings(
        LakeSettings(
            url=f"s3://{s3_bucket}/lake",
            endpoint=s3_config["endpoint"],
            access_key=SecretStr(s3_config["access_key"]),
            secret_key=SecretStr(s3_config["secret_key"]),
            region=s3_config["region"],
        )
    )
    _exercise(lake)
