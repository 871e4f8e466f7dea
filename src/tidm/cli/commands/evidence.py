"""`tidm evidence ...`: checkpoints and verification of the evidence log."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def evidence() -> None:
    """The evidence log: checkpoints and verification."""


@evidence.command("checkpoint")
@click.option(
    "--log", "log_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def evidence_checkpoint(log_path: Path, key_path: Path, out: Path) -> None:
    """Sign a C2SP checkpoint of the log's current tree with the notary key."""
    from tidm.evidence import SqliteEvidenceLog, load_signer

    log = SqliteEvidenceLog(log_path)
    try:
        note = log.checkpoint(load_signer(key_path))
    finally:
        log.close()
    out.write_text(note, encoding="utf-8")
    click.echo(note, nl=False)


@evidence.command("verify")
@click.option(
    "--log", "log_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option("--vkey", "vkeys", multiple=True, required=True, help="Verifier key text (repeatable).")
def evidence_verify(log_path: Path, checkpoint: Path, vkeys: tuple[str, ...]) -> None:
    """Recompute every leaf and the root; check them against a signed checkpoint."""
    from tidm.evidence import SqliteEvidenceLog, verify_log

    log = SqliteEvidenceLog(log_path)
    try:
        report = verify_log(log, list(vkeys), checkpoint.read_text(encoding="utf-8"))
    finally:
        log.close()
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAILED: {problem}", err=True)
        sys.exit(1)
    size = report.checkpoint.size if report.checkpoint else 0
    click.echo(f"ok: {size} entries match the signed checkpoint ({report.unsigned_entries} appended since)")
