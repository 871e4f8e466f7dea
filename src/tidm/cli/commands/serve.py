"""`tidm serve`: the HTTP read service for maintenance teams (grants checked, reads logged).

The server is hardened the way a public read API needs: a request's headers must arrive within
`serve.header_timeout_s` (uvicorn has no such timeout, so the HTTP protocol here adds one: a client
that trickles a header forever is disconnected), idle keep-alive connections close after
`serve.keep_alive_s`, header blocks are capped at `serve.max_header_bytes`, and at most
`serve.max_connections` connections are served at once (more are answered 503 by uvicorn).
SIGTERM stops it cleanly (exit status 0), as Kubernetes expects of a pod.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

__all__ = ["serve"]


@click.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Settings file (lake, evidence, read, serve); TIDM_* variables override it.",
)
def serve(config: Path | None) -> None:
    """Serve the lake over HTTP: /v1/units/{asset}/samples, /v1/catalog, /healthz, /readyz, /metrics."""
    import uvicorn

    from tidm.cli.lake_access import open_read_side
    from tidm.cli.settings import LakeAccessSettings, load_settings
    from tidm.storage.service import ServiceLimits, create_app

    settings = load_settings(LakeAccessSettings, config)
    section = settings.serve
    with open_read_side(settings, reads_for="`tidm serve` (grant read limits)") as side:
        app = create_app(
            side.lake,
            side.access,
            side.catalog,
            batch_rows=section.max_rows_per_page,
            limits=ServiceLimits(
                max_span=section.max_span,
                max_rows=section.max_rows,
                catalog_cache_s=section.catalog_cache_s,
                refusal_interval_s=section.refusal_interval_s,
            ),
        )
        server_config = uvicorn.Config(
            app,
            host=section.host,
            port=section.port,
            log_level="info",
            access_log=False,
            http=_header_timeout_protocol(section.header_timeout_s),
            timeout_keep_alive=section.keep_alive_s,
            limit_concurrency=section.max_connections,
            h11_max_incomplete_event_size=section.max_header_bytes,
            lifespan="on",
        )
        _Server(server_config).run()


def _header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    `timeout_s` of the connection or of the first byte of a further keep-alive request."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class _Server:
    """uvicorn's server, stopping on SIGTERM/SIGINT without re-raising the signal afterwards."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)

        self._server = Server(config)

    def run(self) -> None:
        self._server.run()
