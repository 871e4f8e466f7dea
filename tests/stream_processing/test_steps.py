import math

import numpy as np
import pyarrow as pa

from tidm.semantics import samples_table
from tidm.stream_processing.steps import Flag, drop_bad_samples, sort_for_lake


def _table() -> pa.Table:
    return samples_table(
        ts_us=[5, 4, 3, 2, 1, 0],
        recv_ts_us=[0] * 6,
        asset_id=["a"] * 6,
        signal=["y", "x", "y", "x", "t", "x"],
        value=[1.0, math.nan, 2.0, None, None, 3.0],
        value_text=[None, None, None, None, "RUN", None],
        quality=[0, 0, 2, 0, 0, 1],
        status_code=[0, 0, 0x80000000, 0, 0, 0x40000000],
        seq=list(range(6)),
    )


def test_drop_bad_samples_keeps_good_values_and_text_and_counts_the_rest() -> None:
    result = drop_bad_samples(_table())
    assert result.kept.column("seq").to_pylist() == [0, 4]
    assert result.rejected.column("seq").to_pylist() == [1, 2, 3, 5]
    flags = dict(
        zip(
            result.rejected.column("seq").to_pylist(),
            result.rejected.column("flags").to_pylist(),
            strict=True,
        )
    )
    assert flags == {1: Flag.NAN_VALUE, 2: Flag.BAD_QUALITY, 3: Flag.NAN_VALUE, 5: Flag.BAD_QUALITY}
    assert result.counts == {"rows_in": 6, "rows_kept": 2, "bad_quality": 2, "nan_value": 2}
    assert result.kept.num_rows + result.rejected.num_rows == 6
    assert set(result.kept.column("flags").to_pylist()) == {0}


def test_empty_table_passes_through() -> None:
    result = drop_bad_samples(_table().slice(0, 0))
    assert result.kept.num_rows == 0 and result.rejected.num_rows == 0


def test_sort_for_lake_orders_by_signal_then_time() -> None:
    table = sort_for_lake(drop_bad_samples(_table()).rejected)
    keys = list(zip(table.column("signal").to_pylist(), table.column("ts").to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert np.all(np.diff(table.column("seq").to_numpy()[:0]) >= 0)
