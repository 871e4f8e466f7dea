"""The simulator's historical access: HistoryRead returns every produced value, with its source
timestamp and status; without history every node answers BadHistoryOperationUnsupported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from asyncua import Client, ua

from tidm.simulator import HistoryConfig, SignalConfig, Simulator, SimulatorConfig
from tidm.simulator.history import SignalHistory

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


async def _read_all(client: Client, node_ids: list[ua.NodeId], start: datetime, per_node: int) -> dict:
    """Forward raw reads following continuation points; node id -> DataValues."""
    out: dict[ua.NodeId, list[ua.DataValue]] = {n: [] for n in node_ids}
    points: dict[ua.NodeId, bytes | None] = dict.fromkeys(node_ids)
    pending = list(node_ids)
    for _ in range(1000):
        if not pending:
            break
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False,
            StartTime=start,
            EndTime=ua.get_win_epoch(),
            NumValuesPerNode=per_node,
            ReturnBounds=False,
        )
        params = ua.HistoryReadParameters()
        params.HistoryReadDetails = details
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.ReleaseContinuationPoints = False  # asyncua's default is True
        for n in pending:
            params.NodesToRead.append(ua.HistoryReadValueId(NodeId=n, ContinuationPoint=points[n]))
        results = await client.uaclient.history_read(params)
        nxt = []
        for n, res in zip(pending, results, strict=True):
            assert res.StatusCode.is_good(), res.StatusCode
            out[n].extend(res.HistoryData.DataValues)
            points[n] = res.ContinuationPoint
            if res.ContinuationPoint:
                nxt.append(n)
        pending = nxt
    return out


async def test_history_read_returns_every_produced_sample_with_timestamp_and_status() -> None:
    # Gaps with a bad status make sure status codes travel through history as written.
    template = SignalConfig(gap_probability=0.2, gap_length=2, gap_mode="bad_status")
    config = SimulatorConfig.fleet(
        2,
        3,
        period_ms=50,
        signal=template,
        max_ticks=40,
        history=HistoryConfig(enabled=True, max_samples_per_signal=1000),
    )
    async with Simulator(config) as sim:
        await sim.wait_ticks(40)
        produced = sim.produced
        async with Client(sim.endpoint) as client:
            ns = sim.namespace_index
            ids = {
                k: ua.NodeId.from_string(v.replace(f"nsu={sim.namespace_uri}", f"ns={ns}"))
                for k, v in sim.node_ids().items()
            }
            node = client.get_node(next(iter(ids.values())))
            access = await node.read_attribute(ua.AttributeIds.AccessLevel)
            assert access.Value.Value & ua.AccessLevel.HistoryRead.mask
            got = await _read_all(client, list(ids.values()), _EPOCH + timedelta(seconds=1), per_node=7)
    by_node = {k: got[n] for k, n in ids.items()}
    expected: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for p in produced:
        expected.setdefault((p.asset_id, p.signal), []).append((p.ts_us, p.status_code))
    for key, values in by_node.items():
        assert [(_us(dv.SourceTimestamp), int(dv.StatusCode.value)) for dv in values] == expected[key]
    assert any(status != 0 for v in expected.values() for _, status in v), "the run had bad-status samples"


async def test_history_start_time_is_inclusive_and_history_survives_a_restart() -> None:
    config = SimulatorConfig.fleet(1, 2, period_ms=50, history=HistoryConfig(enabled=True))
    async with Simulator(config) as sim:
        await sim.wait_ticks(5)
        await sim.restart(extra_namespaces_before=["urn:other"])
        await sim.wait_ticks(10)
        sim.pause()
        produced = [p for p in sim.produced if p.signal == "Signal001"]
        ns = sim.namespace_index
        nid = ua.NodeId.from_string(f"ns={ns};s=Asset0001.Signal001")
        async with Client(sim.endpoint) as client:
            start = _EPOCH + timedelta(microseconds=produced[3].ts_us)
            got = await _read_all(client, [nid], start, per_node=0)
    assert [_us(dv.SourceTimestamp) for dv in got[nid]] == [p.ts_us for p in produced[3:]]


async def test_without_history_every_node_is_unsupported() -> None:
    async with Simulator(SimulatorConfig.fleet(1, 2, period_ms=50)) as sim:
        await sim.wait_ticks(3)
        nid = ua.NodeId.from_string(f"ns={sim.namespace_index};s=Asset0001.Signal001")
        async with Client(sim.endpoint) as client:
            params = ua.HistoryReadParameters(ReleaseContinuationPoints=False)
            params.HistoryReadDetails = ua.ReadRawModifiedDetails(IsReadModified=False, NumValuesPerNode=10)
            params.NodesToRead.append(ua.HistoryReadValueId(NodeId=nid))
            (result,) = await client.uaclient.history_read(params)
    assert result.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported


def test_signal_history_keeps_the_newest_and_reads_both_ways() -> None:
    h = SignalHistory(limit=5)
    for t in range(1, 21):
        h.append(t, t, float(t), 0)
    assert len(h) == 5
    values, cont = h.read(None, None, 100)
    assert [v.Value.Value for v in values] == [16.0, 17.0, 18.0, 19.0, 20.0] and cont is None
    values, cont = h.read(17, None, 2)
    assert [v.Value.Value for v in values] == [17.0, 18.0] and cont == 19
    # Backward: start after end, newest first.
    values, cont = h.read(19, 16, 2)
    assert [v.Value.Value for v in values] == [19.0, 18.0] and cont == 17
    values, cont = h.read(None, 18, 10)
    assert [v.Value.Value for v in values] == [18.0, 17.0, 16.0] and cont is None
