"""The health endpoint and the metrics interface sources feed, without a running agent."""

from __future__ import annotations

import asyncio

from tidm.edge_agent.health import HealthServer
from tidm.edge_agent.metrics import AgentMetrics


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


async def test_readiness_follows_sources_and_metrics_are_exposed() -> None:
    metrics = AgentMetrics()
    opcua, mqtt = metrics.source("opc.tcp://plc:4840"), metrics.source("mqtt://broker:1883")
    depth = [3]
    metrics.gauge("tidm_agent_queue_depth", "queued", lambda: depth[0])
    metrics.counter("tidm_agent_batches_published", "published", lambda: 7)
    publisher = [True]

    def readiness() -> dict[str, bool]:
        return {
            **{f"source:{n}": up for n, up in metrics.sources_connected().items()},
            "publisher": publisher[0],
        }

    server = HealthServer(host="127.0.0.1", port=0, readiness=readiness, metrics=metrics.exposition)
    await server.start()
    try:
        assert await _get(server.port, "/healthz") == (200, "ok\n")
        status, body = await _get(server.port, "/readyz")
        assert status == 503 and '"source:opc.tcp://plc:4840": false' in body
        opcua.connected(True)
        mqtt.connected(True)
        assert (await _get(server.port, "/readyz"))[0] == 200
        publisher[0] = False
        assert (await _get(server.port, "/readyz"))[0] == 503

        opcua.samples(120)
        opcua.reconnected()
        mqtt.quarantined("bad-json", 2)
        opcua.nodes("poll", 4)
        status, text = await _get(server.port, "/metrics")
        assert status == 200
        for line in (
            'tidm_agent_samples_total{source="opc.tcp://plc:4840"} 120.0',
            'tidm_agent_source_reconnects_total{source="opc.tcp://plc:4840"} 1.0',
            'tidm_agent_quarantined_payloads_total{reason="bad-json",source="mqtt://broker:1883"} 2.0',
            'tidm_agent_source_nodes{mode="poll",source="opc.tcp://plc:4840"} 4.0',
            "tidm_agent_queue_depth 3.0",
            "tidm_agent_batches_published_total 7.0",
        ):
            assert line in text, line
        assert (await _get(server.port, "/other"))[0] == 404
        assert (await _get(server.port, "/healthz", "POST"))[0] == 405
    finally:
        await server.close()
