import pyarrow as pa
import pytest

from tidm.semantics import (
    SAMPLES_SCHEMA,
    Quality,
    SchemaError,
    check_samples,
    quality_from_status,
    samples_table,
)


def _table(n: int = 3) -> pa.Table:
    return samples_table(
        ts_us=[1_700_000_000_000_000 + i for i in range(n)],
        recv_ts_us=[1_700_000_000_000_100 + i for i in range(n)],
        asset_id=["a"] * n,
        signal=["s"] * n,
        value=[float(i) for i in range(n)],
        value_text=[None] * n,
        quality=[0] * n,
        status_code=[0] * n,
        seq=list(range(n)),
    )


def test_schema_matches_the_architecture_contract() -> None:
    types = {f.name: f.type for f in SAMPLES_SCHEMA}
    assert types["ts"] == pa.timestamp("us", tz="UTC")
    assert types["recv_ts"] == pa.timestamp("us", tz="UTC")
    assert types["asset_id"] == pa.dictionary(pa.int32(), pa.string())
    assert types["signal"] == pa.dictionary(pa.int32(), pa.string())
    assert types["value"] == pa.float64()
    assert types["value_text"] == pa.string()
    assert types["quality"] == pa.uint8()
    assert types["status_code"] == pa.uint32()
    assert types["seq"] == pa.uint64()


def test_samples_table_builds_the_schema() -> None:
    table = _table()
    assert table.schema == SAMPLES_SCHEMA
    assert check_samples(table, where="t") is table


def test_check_samples_names_where_and_what() -> None:
    bad = _table().drop_columns(["seq"])
    with pytest.raises(SchemaError, match=r"topic\[0\]@5: columns"):
        check_samples(bad, where="topic[0]@5")
    wrong_type = _table().set_column(4, "value", pa.array(["x", "y", "z"]))
    with pytest.raises(SchemaError, match="column 'value' has type string"):
        check_samples(wrong_type, where="here")


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (0, Quality.GOOD),
        (0x40000000, Quality.UNCERTAIN),
        (0x80000000, Quality.BAD),
        (0x80310000, Quality.BAD),
    ],
)
def test_quality_from_status_uses_severity_bits(status: int, quality: Quality) -> None:
    assert quality_from_status(status) is quality
