"""`tidm console`: the web console (Fleet, Units, Evidence, Plans) under the read service's grants."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["console"]


@click.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Settings file (lake, evidence, read, console); TIDM_* variables override it.",
)
def console(config: Path | None) -> None:
    """Serve the console: log in with a `tidm serve` bearer token, then Fleet, Units, Evidence, Plans."""
    import uvicorn

    # The read service's hardened uvicorn set-up (header timeout, connection cap, clean SIGTERM).
    from tidm.cli.commands.serve import _header_timeout_protocol, _Server
    from tidm.cli.lake_access import open_read_side
    from tidm.cli.settings import ConsoleSettings, load_settings
    from tidm.console import create_console

    settings = load_settings(ConsoleSettings, config)
    with open_read_side(settings, reads_for="`tidm console` (grant read limits, the Evidence view)") as side:
        from tidm.cli.commands.evidence import latest_checkpoint

        log = side.evidence
        app = create_console(
            side.lake,
            side.access,
            side.catalog,
            settings=settings.console,
            checkpoint=lambda: latest_checkpoint(log),
        )
        section = settings.serve
        server_config = uvicorn.Config(
            app,
            host=settings.console.host,
            port=settings.console.port,
            log_level="info",
            access_log=False,
            http=_header_timeout_protocol(section.header_timeout_s),
            timeout_keep_alive=section.keep_alive_s,
            limit_concurrency=section.max_connections,
            h11_max_incomplete_event_size=section.max_header_bytes,
            lifespan="on",
        )
        _Server(server_config).run()
