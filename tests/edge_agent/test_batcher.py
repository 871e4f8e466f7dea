"""Batcher: columns stay aligned, and a sample that cannot be batched undoes its whole delivery."""

from __future__ import annotations

import pytest

from tidm.edge_agent.batcher import Batcher
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.sources.base import RawSample


def _s(asset: str, signal: str, ts: object, status: object = 0, value: float | None = 1.5) -> RawSample:
    return RawSample(asset, signal, ts, 2_000, value, None, status)  # type: ignore[arg-type]


def test_take_gives_the_columns_in_order_with_seq_per_source() -> None:
    b = Batcher(max_rows=3, max_age_ms=1_000)
    assert b.add("src", [_s("A", "x", 10), _s("A", "y", 11, status=0x80000000), _s("B", "x", 12)]) == []
    assert b.add("src", [_s("A", "x", 13, value=None)]) == ["A"]
    a = b.take("A")
    assert a is not None
    t = a.table
    assert t["ts"].cast("int64").to_pylist() == [10, 11, 13]
    assert t["seq"].to_pylist() == [0, 1, 3]
    assert t["status_code"].to_pylist() == [0, 0x80000000, 0]
    assert t["quality"].to_pylist() == [0, 2, 0]
    assert t["value"].to_pylist() == [1.5, 1.5, None]
    assert (a.seq_first, a.seq_last, a.sources) == (0, 3, ("src",))


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (_s("A", "z", 20, status=-1), "status"),
        (_s("A", "z", 20.5), "float time"),
        (_s("A", "z", 2**63), "time"),
    ],
)
def test_a_sample_that_cannot_be_batched_undoes_its_delivery(bad: RawSample, kind: str) -> None:
    b = Batcher(max_rows=100, max_age_ms=1_000)
    b.add("src", [_s("A", "x", 1), _s("A", "y", 2)])
    with pytest.raises(SourceError, match=r"source src: a sample of A/z cannot be batched") as err:
        b.add("src", [_s("A", "x", 3), _s("B", "x", 4), _s("C", "x", 5), _s("A", "w", 6), bad])
    assert "none of the 5 samples" in str(err.value), kind
    # Nothing of the failed delivery stayed, in any column of any batch; seq continues as before it.
    b.add("src", [_s("A", "x", 7)])
    a = b.take("A")
    assert a is not None
    assert a.table["ts"].cast("int64").to_pylist() == [1, 2, 7]
    assert a.table["seq"].to_pylist() == [0, 1, 2]
    assert b.take("B") is None and b.take("C") is None
