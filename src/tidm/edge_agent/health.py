"""The agent's health endpoint: a tiny HTTP/1.1 server on asyncio streams.

`/healthz` (liveness: the event loop answers), `/readyz` (readiness: every source connected and
the publisher alive; the body says which check fails) and `/metrics` (Prometheus text format).
One request per connection, GET only, bounded reads: it is meant for 127.0.0.1 and a kubelet or
Prometheus scraper, not for the open internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

_MAX_REQUEST = 8192
_READ_TIMEOUT_S = 5.0
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves liveness, readiness and metrics until `close()`.

    `readiness` returns named checks (True = ok); `metrics` returns the exposition bytes.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        readiness: Callable[[], Mapping[str, bool]],
        metrics: Callable[[], bytes],
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            msg = "the health server is not listening"
            raise RuntimeError(msg)
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; the port is known afterwards."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("health endpoint on http://%s:%d (/healthz /readyz /metrics)", self._host, self.port)

    async def close(self) -> None:
        """Stop listening and wait for open connections to finish."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_REQUEST:
                await self._reply(writer, 431, "text/plain", b"request too large\n")
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                await self._reply(writer, 405, "text/plain", b"GET only\n")
                return
            path = parts[1].split("?", 1)[0]
            status, ctype, body = self._route(path)
            await self._reply(writer, status, ctype, b"" if parts[0] == "HEAD" else body)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            checks = dict(self._readiness())
            ready = bool(checks) and all(checks.values())
            body = json.dumps({"ready": ready, "checks": checks}, sort_keys=True).encode() + b"\n"
            return (200 if ready else 503), "application/json", body
        if path == "/metrics":
            return 200, _PROMETHEUS, self._metrics()
        return 404, "text/plain", b"not found\n"

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
        reason = {
            200: "OK",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Too Large",
            503: "Unavailable",
        }
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
