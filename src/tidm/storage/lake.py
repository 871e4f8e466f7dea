"""The lake: Parquet objects on S3 or a local folder through one filesystem API (pyarrow.fs).

Layout: `<root>/<table>/site=<s>/asset=<a>/date=<YYYY-MM-DD>/<topic>-<partition>-<first>-<last>.parquet`.
Names derive from the Kafka offsets an object covers, so a replay overwrites the same object instead
of adding a duplicate. Landing intents (`_intents/`) make that hold across crashes: an intent naming
the offset range and the object keys is written before the objects, so a restarted job re-lands the
same range under the same names instead of choosing new boundaries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tidm.storage.config import LakeSettings
from tidm.storage.errors import LakeError, LakeUnavailable

__all__ = ["LandedObject", "LandingIntent", "Lake", "object_key", "partition_segment", "partition_value"]

_INTENTS = "_intents"


def partition_value(segment: str, name: str) -> str | None:
    """The decoded value of a `name=value` path segment, or None if the segment is another one."""
    key, sep, value = segment.partition("=")
    return unquote(value) if sep and key == name else None


def partition_segment(name: str, value: str) -> str:
    """`name=value` with the value percent-encoded, as the lake names its partition folders."""
    return _segment(name, value)


def _segment(name: str, value: str) -> str:
    # Percent-encoding keeps asset ids such as URNs safe as path segments; Hive readers decode it.
    return f"{name}={quote(value, safe='-_.')}"


def object_key(
    table: str, *, site: str, asset: str, date: dt.date, topic: str, partition: int, first: int, last: int
) -> str:
    """The lake-relative key of the object covering offsets first..last of topic[partition]."""
    return "/".join(
        [
            table,
            _segment("site", site),
            _segment("asset", asset),
            f"date={date.isoformat()}",
            f"{quote(topic, safe='-_.')}-{partition}-{first}-{last}.parquet",
        ]
    )


# Parquet settings of lake objects. Readers prune by time, signal and asset (objects are sorted
# by signal, then time), so only those columns carry statistics. Dictionary encoding is for the
# repetitive columns only: on float values it is tried, fails and falls back, at a cost. Sorted
# integer columns (times, sequence numbers) take delta encoding: several times smaller and
# cheaper than plain + zstd, and read by polars, DuckDB, Spark and Trino/Athena alike.
_STATISTICS = ("ts", "signal", "asset_id")
_DICTIONARY = ("asset_id", "signal", "value_text", "quality", "status_code")
_DELTA = ("ts", "recv_ts", "seq")


def _parquet_options(schema: pa.Schema) -> dict[str, object]:
    names = set(schema.names)
    delta = {
        name: "DELTA_BINARY_PACKED"
        for name in _DELTA
        if name in names
        and (
            pa.types.is_timestamp(schema.field(name).type)
            or pa.types.is_int64(schema.field(name).type)
            or pa.types.is_uint64(schema.field(name).type)
        )
    }
    return {
        "compression": "zstd",
        "compression_level": 1,
        "use_dictionary": [n for n in _DICTIONARY if n in names],
        "write_statistics": [n for n in _STATISTICS if n in names],
        "column_encoding": delta or None,
        "row_group_size": 1 << 20,
    }


@dataclass(frozen=True)
class LandedObject:
    key: str
    sha256: str
    size: int
    rows: int


@dataclass(frozen=True)
class LandingIntent:
    """A promise to land offsets first..last of topic[partition] as exactly these objects."""

    topic: str
    partition: int
    first: int
    last: int
    keys: tuple[str, ...]

    def name(self) -> str:
        return f"{quote(self.topic, safe='-_.')}-{self.partition}/{self.first:020d}-{self.last:020d}.json"


class Lake:
    """Objects under one root on one filesystem."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        *,
        description: str,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self._fs = fs
        self._root = root.rstrip("/")
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self.description = description
        self._storage_options = storage_options or {}

    @classmethod
    def local(cls, path: Path) -> Lake:
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(pafs.LocalFileSystem(), str(path), description=str(path))

    @classmethod
    def s3(
        cls,
        *,
        bucket: str,
        prefix: str = "",
        endpoint: str | None,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
    ) -> Lake:
        kwargs: dict[str, object] = {"region": region}
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        if access_key is not None and secret_key is not None:
            kwargs["access_key"] = access_key
            kwargs["secret_key"] = secret_key
        fs = pafs.S3FileSystem(**kwargs)
        root = f"{bucket}/{prefix.strip('/')}".rstrip("/")
        # The same settings in the object_store spelling polars (and delta/duckdb) understand.
        options = {"aws_region": region}
        if endpoint:
            options["aws_endpoint_url"] = endpoint
            options["aws_allow_http"] = "true" if endpoint.startswith("http://") else "false"
        if access_key is not None and secret_key is not None:
            options["aws_access_key_id"] = access_key
            options["aws_secret_access_key"] = secret_key
        return cls(fs, root, description=f"s3://{root}", storage_options=options)

    @classmethod
    def from_settings(cls, settings: LakeSettings) -> Lake:
        parsed = urlparse(settings.url)
        if parsed.scheme == "s3":
            return cls.s3(
                bucket=parsed.netloc,
                prefix=parsed.path,
                endpoint=settings.endpoint,
                access_key=settings.access_key.get_secret_value() if settings.access_key else None,
                secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
                region=settings.region,
            )
        if parsed.scheme in ("", "file"):
            return cls.local(Path(parsed.path if parsed.scheme == "file" else settings.url))
        msg = (
            f"lake url {settings.url!r}: unsupported scheme {parsed.scheme!r} (use a path, file:// or s3://)"
        )
        raise LakeError(msg)

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    def path(self, key: str) -> str:
        """The filesystem path of a lake-relative key."""
        return f"{self._root}/{key}"

    def uri(self, key: str) -> str:
        """A URI of the key for readers outside pyarrow.fs (polars, duckdb): a path or s3://..."""
        return self.path(key) if self._local else f"s3://{self.path(key)}"

    @property
    def storage_options(self) -> dict[str, str] | None:
        """Credentials and endpoint for polars' object store; None for a local folder."""
        return None if self._local else dict(self._storage_options)

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix` (a folder-like key), sorted."""
        base = self.path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except OSError as exc:
            msg = f"cannot list {prefix!r} at {self.description}: {exc}"
            raise LakeUnavailable(msg) from exc
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # -- objects ---------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object whole: atomic on S3 (one PUT) and on a folder (temp, fsync, rename)."""
        path = self.path(key)
        try:
            if self._local:
                _atomic_local_write(Path(path), data)
            else:
                with self._fs.open_output_stream(path) as out:
                    out.write(data)
        except OSError as exc:
            msg = f"cannot write lake object {key!r} at {self.description}: {exc}"
            raise LakeUnavailable(msg) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            with self._fs.open_input_stream(self.path(key)) as src:
                data: bytes = src.read()
                return data
        except FileNotFoundError as exc:
            msg = f"lake object {key!r} not found at {self.description}"
            raise LakeError(msg) from exc
        except OSError as exc:
            msg = f"cannot read lake object {key!r} at {self.description}: {exc}"
            raise LakeUnavailable(msg) from exc

    def purge(self, key: str) -> int:
        """Delete an object and, in a versioned bucket, every earlier version of it (a recall must
        not leave the data recoverable). Returns the number of versions removed."""
        if self._local:
            existed = self.exists(key)
            self.delete(key)
            return int(existed)
        from minio import Minio
        from minio.error import S3Error

        endpoint = urlparse(self._storage_options.get("aws_endpoint_url", "https://s3.amazonaws.com"))
        client = Minio(
            endpoint.netloc,
            access_key=self._storage_options.get("aws_access_key_id"),
            secret_key=self._storage_options.get("aws_secret_access_key"),
            secure=endpoint.scheme == "https",
            region=self._storage_options.get("aws_region"),
        )
        bucket, _, name = self.path(key).partition("/")
        removed = 0
        try:
            for version in client.list_objects(bucket, prefix=name, include_version=True):
                if version.object_name == name:
                    client.remove_object(bucket, name, version_id=version.version_id)
                    removed += 1
        except S3Error as exc:
            msg = f"cannot purge {key!r} at {self.description}: {exc.code}"
            raise LakeUnavailable(msg) from exc
        finally:
            client._http.clear()  # noqa: SLF001 - minio keeps a urllib3 pool open otherwise
        return removed

    def exists(self, key: str) -> bool:
        info = self._fs.get_file_info(self.path(key))
        return bool(info.type == pafs.FileType.File)

    def delete(self, key: str) -> None:
        try:
            self._fs.delete_file(self.path(key))
        except FileNotFoundError:
            return

    def list_keys(self, prefix: str = "") -> list[str]:
        """Lake-relative keys of all objects under `prefix` (a folder-like key), sorted."""
        base = self.path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except OSError as exc:
            msg = f"cannot list {prefix!r} at {self.description}: {exc}"
            raise LakeUnavailable(msg) from exc
        cut = len(self._root) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    def write_parquet(self, key: str, table: pa.Table, *, schema_version: str | None = None) -> LandedObject:
        """Write `table` as one Parquet object (zstd, pruning statistics) and return its digest.

        The table name (first key segment) and `schema_version` are kept in the file's metadata
        (`tidm.table`, `tidm.schema_version`), so readers can tell schema versions apart across a drift.
        """
        meta = dict(table.schema.metadata or {})
        meta[b"tidm.table"] = key.split("/", 1)[0].encode()
        if schema_version is not None:
            meta[b"tidm.schema_version"] = schema_version.encode()
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **_parquet_options(table.schema))
        data = sink.getvalue().to_pybytes()
        self.write_bytes(key, data)
        return LandedObject(key, hashlib.sha256(data).hexdigest(), len(data), table.num_rows)

    def read_table(self, table: str) -> pa.Table:
        """Every object of `table` read into one Arrow table (for tests and small exports)."""
        keys = [k for k in self.list_keys(table) if k.endswith(".parquet")]
        if not keys:
            return pa.table({})
        parts = [pq.read_table(self.path(k), filesystem=self._fs) for k in keys]
        return pa.concat_tables(parts, promote_options="permissive")

    # -- landing intents -------------------------------------------------------------------------

    def write_intent(self, intent: LandingIntent) -> None:
        self.write_bytes(f"{_INTENTS}/{intent.name()}", json.dumps(asdict(intent)).encode("utf-8"))

    def clear_intent(self, intent: LandingIntent) -> None:
        self.delete(f"{_INTENTS}/{intent.name()}")

    def pending_intents(self, topic: str, partition: int) -> list[LandingIntent]:
        """Intents of topic[partition] not yet cleared, in offset order."""
        out = []
        for key in self.list_keys(f"{_INTENTS}/{quote(topic, safe='-_.')}-{partition}"):
            doc = json.loads(self.read_bytes(key))
            out.append(
                LandingIntent(
                    doc["topic"],
                    int(doc["partition"]),
                    int(doc["first"]),
                    int(doc["last"]),
                    tuple(doc["keys"]),
                )
            )
        return sorted(out, key=lambda i: i.first)

    def schema_versions(self, table: str) -> dict[str, list[str]]:
        """Schema version -> keys of the table's objects written with it (from the file footers)."""
        versions: dict[str, list[str]] = {}
        for key in self.list_keys(table):
            if not key.endswith(".parquet"):
                continue
            meta = pq.read_schema(self.path(key), filesystem=self._fs).metadata or {}
            version = meta.get(b"tidm.schema_version", b"unknown").decode()
            versions.setdefault(version, []).append(key)
        return versions


def _atomic_local_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
