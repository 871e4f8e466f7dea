"""`tidm serve`: the HTTP read service for maintenance teams (grants checked, reads logged)."""

from __future__ import annotations

from pathlib import Path

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
    from tidm.storage.service import create_app

    settings = load_settings(LakeAccessSettings, config)
    with open_read_side(settings, reads_for="`tidm serve` (grant read limits)") as side:
        app = create_app(side.lake, side.access, side.catalog, batch_rows=settings.serve.max_rows_per_page)
        uvicorn.run(
            app, host=settings.serve.host, port=settings.serve.port, log_level="info", access_log=False
        )
