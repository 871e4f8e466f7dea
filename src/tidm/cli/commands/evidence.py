"""`tidm evidence ...`: checkpoints, verification, proof bundles, audit reports and PROV export.

`--log` names the store: a SQLite file (embedded mode), a folder holding a tlog-tiles log, or
`s3://bucket/prefix` for tiles on S3 (endpoint and credentials from `--s3-*` or `TIDM_S3_*`; the
secret key only from a file: `--s3-secret-key-file` or `TIDM_S3_SECRET_KEY_FILE`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tidm.evidence import EvidenceLog
    from tidm.storage import Lake

_S3_OPTIONS = [
    click.option("--s3-endpoint", envvar="TIDM_S3_ENDPOINT", default=None, help="S3 endpoint URL."),
    click.option("--s3-access-key", envvar="TIDM_S3_ACCESS_KEY", default=None, show_envvar=True),
    click.option(
        "--s3-access-key-file",
        envvar="TIDM_S3_ACCESS_KEY_FILE",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        show_envvar=True,
        help="File holding the S3 access key id (instead of --s3-access-key).",
    ),
    click.option(
        "--s3-secret-key-file",
        envvar="TIDM_S3_SECRET_KEY_FILE",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        show_envvar=True,
        help="File holding the S3 secret key (e.g. /run/secrets/s3-secret-key); never given as a value.",
    ),
    # Refused with a clear error: a secret given as a value ends up in shell history and `ps`.
    click.option(
        "--s3-secret-key", "s3_secret_value", envvar="TIDM_S3_SECRET_KEY", default=None, hidden=True
    ),
    click.option("--s3-region", envvar="TIDM_S3_REGION", default="us-east-1"),
]


def _read_secret(path: Path, option: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise click.BadParameter(msg, param_hint=option) from None
    value = text.rstrip("\r\n")
    if not value:
        msg = f"{path} is empty"
        raise click.BadParameter(msg, param_hint=option)
    return value


def _s3_options(func: Any) -> Any:
    """The S3 options, resolved to `s3_endpoint`, `s3_access_key`, `s3_secret_key` and `s3_region`
    for the command: the secret key only from a file (`--s3-secret-key-file`, `TIDM_S3_SECRET_KEY_FILE`)."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        s3_access_key_file: Path | None,
        s3_secret_key_file: Path | None,
        s3_secret_value: str | None,
        **kwargs: Any,
    ) -> Any:
        if s3_secret_value is not None:
            msg = (
                "the S3 secret key is taken only from a file: put it in a file readable by this user "
                "only and give --s3-secret-key-file FILE (or TIDM_S3_SECRET_KEY_FILE=FILE), not "
                "--s3-secret-key / TIDM_S3_SECRET_KEY"
            )
            raise click.UsageError(msg)
        if s3_access_key_file is not None:
            kwargs["s3_access_key"] = _read_secret(s3_access_key_file, "--s3-access-key-file")
        kwargs["s3_secret_key"] = (
            _read_secret(s3_secret_key_file, "--s3-secret-key-file") if s3_secret_key_file else None
        )
        return func(*args, **kwargs)

    for option in reversed(_S3_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


class _S3:
    def __init__(self, endpoint: str | None, access_key: str | None, secret_key: str | None, region: str):
        self.endpoint, self.access_key, self.secret_key, self.region = (
            endpoint,
            access_key,
            secret_key,
            region,
        )


def open_log(spec: str, s3: _S3, *, create: bool = False) -> EvidenceLog:
    """The evidence store `spec` names (SQLite file, tiles folder, s3://bucket/prefix)."""
    from pydantic import SecretStr

    from tidm.evidence import SqliteEvidenceLog
    from tidm.evidence.objectstore import FolderObjectStore, S3ObjectStore, S3StoreSettings
    from tidm.evidence.tiles import TileEvidenceLog

    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        settings = S3StoreSettings(
            endpoint=s3.endpoint or "http://127.0.0.1:8333",
            bucket=bucket,
            prefix=prefix,
            access_key=SecretStr(s3.access_key) if s3.access_key else None,
            secret_key=SecretStr(s3.secret_key) if s3.secret_key else None,
            region=s3.region,
            create_bucket=create,
        )
        return TileEvidenceLog(S3ObjectStore(settings))
    path = Path(spec)
    if path.is_dir():
        return TileEvidenceLog(FolderObjectStore(path))
    if not path.exists() and not create:
        msg = f"evidence log {spec} does not exist"
        raise click.BadParameter(msg, param_hint="--log")
    return SqliteEvidenceLog(path)


def _open_lake(url: str, s3: _S3) -> Lake:
    from pydantic import SecretStr

    from tidm.storage import Lake
    from tidm.storage.config import LakeSettings

    return Lake.from_settings(
        LakeSettings(
            url=url,
            endpoint=s3.endpoint,
            access_key=SecretStr(s3.access_key) if s3.access_key else None,
            secret_key=SecretStr(s3.secret_key) if s3.secret_key else None,
            region=s3.region,
        )
    )


def latest_checkpoint(log: EvidenceLog) -> str | None:
    """The newest checkpoint the store holds (tiles: the published `checkpoint` object)."""
    latest = getattr(log, "latest_checkpoint", None)
    if latest is not None:
        text = latest()
        if text:
            return str(text)
    checkpoints = getattr(log, "checkpoints", None)
    if checkpoints is not None:
        notes = checkpoints()
        if notes:
            return str(notes[-1])
    return None


def _verifier_keys(vkeys: tuple[str, ...], vkey_files: tuple[Path, ...]) -> list[str]:
    keys = list(vkeys)
    for path in vkey_files:
        keys.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not keys:
        msg = "give the log's public key with --vkey or --vkey-file"
        raise click.UsageError(msg)
    return keys


def _fail(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(f"FAILED: {line}", err=True)
    sys.exit(1)


def _progress(total_hint: str) -> Any:
    from tqdm import tqdm

    def wrap(items: Iterable[str]) -> Iterator[str]:
        listed = list(items)
        yield from tqdm(listed, desc=total_hint, unit="obj", file=sys.stderr, disable=len(listed) < 50)

    return wrap


@click.group()
def evidence() -> None:
    """The evidence log: checkpoints, verification, proofs, reports."""


@evidence.command("checkpoint")
@click.option("--log", "log_spec", required=True, help="SQLite file, tiles folder or s3://bucket/prefix.")
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@_s3_options
def evidence_checkpoint(
    log_spec: str,
    key_path: Path,
    out: Path,
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str,
) -> None:
    """Sign a C2SP checkpoint of the log's current tree with the notary key."""
    from tidm.evidence import load_signer

    log = open_log(log_spec, _S3(s3_endpoint, s3_access_key, s3_secret_key, s3_region))
    try:
        note = log.checkpoint(load_signer(key_path))
    finally:
        log.close()
    out.write_text(note, encoding="utf-8")
    click.echo(note, nl=False)


@evidence.command("verify")
@click.option("--log", "log_spec", default=None, help="SQLite file, tiles folder or s3://bucket/prefix.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Signed checkpoint file (default: the newest one the log holds).",
)
@click.option("--vkey", "vkeys", multiple=True, help="Verifier key text (repeatable).")
@click.option(
    "--vkey-file", "vkey_files", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option(
    "--state",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON file remembering the last accepted checkpoint; the log must be consistent with it.",
)
@click.option("--lake", default=None, help="Lake URL (folder or s3://bucket/prefix): check its objects.")
@click.option("--object", "objects", multiple=True, help="Only these lake keys (repeatable).")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Check a proof bundle offline instead of a log.",
)
@click.option(
    "--file",
    "object_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="With --bundle: the object's bytes, checked against the bundle's subject.",
)
@_s3_options
def evidence_verify(
    log_spec: str | None,
    checkpoint: Path | None,
    vkeys: tuple[str, ...],
    vkey_files: tuple[Path, ...],
    state: Path | None,
    lake: str | None,
    objects: tuple[str, ...],
    bundle: Path | None,
    object_file: Path | None,
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str,
) -> None:
    """Verify the log against a signed checkpoint, then every lake object back to its agents' batches.

    Exit status 1 and one `FAILED:` line per problem, naming what and where.
    """
    keys = _verifier_keys(vkeys, vkey_files)
    if bundle is not None:
        _verify_bundle(bundle, keys, object_file)
        return
    if log_spec is None:
        msg = "give --log (or --bundle)"
        raise click.UsageError(msg)
    s3 = _S3(s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    log = open_log(log_spec, s3)
    try:
        _verify_store(log, keys, checkpoint, state, lake, objects, s3)
    finally:
        log.close()


def _verify_bundle(bundle: Path, keys: list[str], object_file: Path | None) -> None:
    from tidm.evidence.bundle import check_bundle

    report = check_bundle(
        bundle.read_bytes(), keys, object_bytes=object_file.read_bytes() if object_file else None
    )
    if not report.ok:
        _fail(f"{bundle}: {problem}" for problem in report.problems)
    size = report.checkpoint.size if report.checkpoint else 0
    click.echo(
        f"ok: {report.object or report.subject} proven by {report.entries} entries against a signed "
        f"checkpoint of {size} entries, back to {len(report.sources)} agent batches"
    )


def _verify_store(
    log: EvidenceLog,
    keys: list[str],
    checkpoint_file: Path | None,
    state: Path | None,
    lake_url: str | None,
    objects: tuple[str, ...],
    s3: _S3,
) -> None:
    from tidm.evidence import open_checkpoint, verify_log
    from tidm.evidence.audit import check_consistency_with_state, check_objects, save_state
    from tidm.evidence.checkpoint import Verifier
    from tidm.evidence.errors import NoteError

    note = checkpoint_file.read_text(encoding="utf-8") if checkpoint_file else latest_checkpoint(log)
    if note is None:
        _fail(["the log holds no checkpoint and none was given with --checkpoint"])
        return
    verifiers = [Verifier.from_vkey(k) for k in keys]
    where = str(checkpoint_file) if checkpoint_file else "the log's checkpoint"
    try:
        signed, _ = open_checkpoint(note, verifiers)
    except NoteError as exc:
        _fail([f"checkpoint ({where}): {exc}"])
        return
    problems: list[str] = []
    if state is not None:
        inconsistent = check_consistency_with_state(log, signed, state)
        if inconsistent is not None:
            problems.append(str(inconsistent))
    from tqdm import tqdm

    size = log.size()
    with tqdm(total=size, desc="entries", unit="entry", file=sys.stderr, disable=size < 100_000) as bar:
        report = verify_log(log, verifiers, note, progress=bar.update)
    problems.extend(str(p) for p in report.problems)
    deleted: list[str] = []
    checked = 0
    if lake_url is not None:
        lake = _open_lake(lake_url, s3)
        present = [k for k in lake.list_keys("") if k.endswith(".parquet")]
        if objects:
            missing = [k for k in objects if k not in set(present)]
            problems.extend(f"object {k}: not found in the lake {lake.description}" for k in missing)
            present = [k for k in objects if k not in missing]
        findings = check_objects(
            log,
            signed,
            present,
            lake.read_bytes,
            every_landed=not objects,
            progress=_progress("objects"),
        )
        for finding in findings:
            if finding.status == "failed":
                problems.append(f"object {finding.key}: {finding.message}")
            elif finding.status == "deleted":
                deleted.append(f"object {finding.key}: {finding.message}")
            else:
                checked += 1
    for line in deleted:
        click.echo(f"DELETED: {line}")
    if problems:
        _fail(problems)
    if state is not None:
        save_state(signed, note, state)
    click.echo(
        f"ok: {signed.size} entries match the signed checkpoint ({report.unsigned_entries} appended since)"
        + (f"; {checked} objects proven back to agent batches" if lake_url is not None else "")
        + (f"; {len(deleted)} recorded deletions" if deleted else "")
    )


@evidence.command("prove")
@click.argument("object_name")
@click.option("--log", "log_spec", required=True, help="SQLite file, tiles folder or s3://bucket/prefix.")
@click.option("--lake", default=None, help="Lake URL, to read the object (else OBJECT is a SHA-256).")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Notary key: sign a fresh checkpoint if the lineage is newer than the latest one.",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@_s3_options
def evidence_prove(
    object_name: str,
    log_spec: str,
    lake: str | None,
    checkpoint: Path | None,
    key_path: Path | None,
    out: Path,
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str,
) -> None:
    """Write a self-contained proof bundle for OBJECT (a lake key, or a SHA-256 digest)."""
    from tidm.evidence import load_signer, parse_checkpoint
    from tidm.evidence.bundle import build_bundle
    from tidm.evidence.errors import VerificationError

    s3 = _S3(s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    key = object_name if lake is not None else None
    subject = _subject_of(object_name, lake, s3, what="OBJECT")
    log = open_log(log_spec, s3)
    try:
        note = checkpoint.read_text(encoding="utf-8") if checkpoint else latest_checkpoint(log)
        size = parse_checkpoint(note.split("\n\n", 1)[0] + "\n").size if note else -1
        if key_path is not None and size < log.size():
            note = log.checkpoint(load_signer(key_path))
        if note is None:
            _fail(["the log holds no checkpoint: give --checkpoint or --key"])
            return
        try:
            document = build_bundle(log, subject, note, object_key=key)
        except VerificationError as exc:
            _fail([str(exc)])
            return
    finally:
        log.close()
    out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    click.echo(f"wrote {out}: {len(document['entries'])} entries proving {key or subject}")


def _subject_of(object_name: str, lake: str | None, s3: _S3, *, what: str) -> str:
    """The SHA-256 an object is known by in the log: of its bytes in the lake, or given as a digest."""
    from tidm.evidence import is_digest

    if lake is not None:
        return hashlib.sha256(_open_lake(lake, s3).read_bytes(object_name)).hexdigest()
    if is_digest(object_name):
        return object_name
    msg = f"{what} must be a SHA-256 digest unless --lake is given"
    raise click.UsageError(msg)


def _time_us(value: dt.datetime | None, default: int) -> int:
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1_000_000)


@evidence.command("report")
@click.option("--log", "log_spec", required=True, help="SQLite file, tiles folder or s3://bucket/prefix.")
@click.option("--from", "since", type=click.DateTime(), default=None, help="Start time (UTC).")
@click.option("--to", "until", type=click.DateTime(), default=None, help="End time (UTC), exclusive.")
@click.option("--object", "object_name", default=None, help="Draw the lineage of this object.")
@click.option("--lake", default=None, help="Lake URL, to resolve --object as a lake key.")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--vkey", "vkeys", multiple=True, help="Check the log's checkpoint with these keys.")
@_s3_options
def evidence_report(
    log_spec: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    object_name: str | None,
    lake: str | None,
    html_out: Path,
    json_out: Path | None,
    vkeys: tuple[str, ...],
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str,
) -> None:
    """Write an audit report (HTML, and JSON) of the log between --from and --to."""
    from tidm.evidence.report import build_report, render_html

    s3 = _S3(s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    subject = _subject_of(object_name, lake, s3, what="--object") if object_name is not None else None
    log = open_log(log_spec, s3)
    try:
        report = build_report(
            log,
            since_us=_time_us(since, 0),
            until_us=_time_us(until, 2**62),
            subject=subject,
            object_label=object_name,
            checkpoint=latest_checkpoint(log),
            verifier_keys=list(vkeys),
        )
    finally:
        log.close()
    html_out.write_text(render_html(report), encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    click.echo(f"wrote {html_out}" + (f" and {json_out}" if json_out else ""))


@evidence.command("prov")
@click.option("--log", "log_spec", required=True, help="SQLite file, tiles folder or s3://bucket/prefix.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--object", "subject", default=None, help="Only the lineage of this SHA-256 digest.")
@_s3_options
def evidence_prov(
    log_spec: str,
    out: Path,
    subject: str | None,
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str,
) -> None:
    """Export the log (or one object's lineage) as W3C PROV-JSON."""
    from tidm.evidence.prov import to_prov_json

    log = open_log(log_spec, _S3(s3_endpoint, s3_access_key, s3_secret_key, s3_region))
    try:
        text = to_prov_json(log, subject=subject)
    finally:
        log.close()
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}")
