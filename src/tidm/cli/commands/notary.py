"""`tidm notary ...`: the single sequencer of the evidence log in a cluster."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tidm.cli.settings import NotaryProcessSettings
    from tidm.evidence import EvidenceLog
    from tidm.ingest.evidence_sink import NotaryStats


@click.group()
def notary() -> None:
    """The notary: sequences evidence entries from the evidence topic and signs checkpoints."""


def build_store(settings: NotaryProcessSettings) -> EvidenceLog:
    """The evidence store the settings name: SQLite, tiles in a folder, or tiles on S3."""
    from tidm.evidence import SqliteEvidenceLog
    from tidm.evidence.objectstore import FolderObjectStore, S3ObjectStore
    from tidm.evidence.tiles import TileEvidenceLog

    store = settings.store
    if store.kind == "s3":
        return TileEvidenceLog(S3ObjectStore(store.s3))
    if store.kind == "tiles":
        return TileEvidenceLog(FolderObjectStore(store.path))
    return SqliteEvidenceLog(store.path)


async def run_notary(settings: NotaryProcessSettings, *, stop: asyncio.Event | None = None) -> NotaryStats:
    """Run the notary until SIGINT/SIGTERM (or `stop`); a last checkpoint is signed on the way out."""
    from tidm.cli.processes import serve_health
    from tidm.cli.wiring import build_transport
    from tidm.evidence import load_signer
    from tidm.ingest.evidence_sink import Notary

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    section = settings.notary
    signer = load_signer(section.key_file)
    transport = build_transport(settings.transport, client_id="notary")
    store = build_store(settings)
    try:
        sequencer = Notary(
            transport,
            section.topic,
            store,
            signer,
            group_id=section.group_id,
            checkpoint_every=section.checkpoint_every,
            checkpoint_interval_s=section.checkpoint_interval_s,
            origin=section.origin,
        )
        health = await serve_health(
            settings.health,
            prefix="tidm_notary",
            readiness=lambda: {"running": not stop.is_set()},
            stats=lambda: {k: float(v) for k, v in vars(sequencer.stats).items() if isinstance(v, int)},
        )
        try:
            return await sequencer.run(stop)
        finally:
            if health is not None:
                await health.close()
    finally:
        store.close()


@notary.command("run")
@click.option("--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None)
def notary_run(config: Path | None) -> None:
    """Sequence the evidence topic into the store until SIGINT/SIGTERM."""
    from tidm.cli.settings import NotaryProcessSettings, load_settings

    settings = load_settings(NotaryProcessSettings, config)
    stats = asyncio.run(run_notary(settings))
    click.echo(
        f"notary stopped: {stats.appended} entries appended, {stats.duplicates} duplicates skipped, "
        f"{stats.rejected} messages rejected, {stats.checkpoints} checkpoints"
    )


@notary.command("keygen")
@click.option("--name", required=True, help="Key name, e.g. the log origin (tidm.example/evidence).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def notary_keygen(name: str, out: Path) -> None:
    """Create a notary signing key (mode 0600) and print its verifier key."""
    from tidm.evidence import Signer, save_signer

    signer = Signer.generate(name)
    save_signer(signer, out)
    click.echo(signer.verifier.vkey)
