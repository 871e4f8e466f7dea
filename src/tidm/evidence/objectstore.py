"""The small object-store interface the tile log writes through, with a folder and an S3 implementation.

Evidence must not import the storage part, so it has its own three-call interface: `get`, `put`, `list`.
Tiles and entry bundles are written with `immutable=True`: on a bucket with S3 Object Lock enabled, the
S3 store gives each such object a retention period, so not even the notary's own credentials can
remove or replace that version before it expires. The folder store makes such files read-only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import tempfile
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from tidm.evidence.errors import EvidenceError, StoreError

__all__ = ["FolderObjectStore", "ObjectStore", "S3ObjectStore", "S3StoreSettings"]


@runtime_checkable
class ObjectStore(Protocol):
    """Whole objects under string keys ("tile/0/x001/234", "checkpoint")."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such object."""
        ...

    def put(self, key: str, data: bytes, *, immutable: bool = True) -> None:
        """Write the object whole (atomically); `immutable` ones get retention where the store has it."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys that start with `prefix`, sorted."""
        ...

    def where(self, key: str) -> str:
        """A human-readable location of `key`, for messages (s3://bucket/prefix/key, a path)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class FolderObjectStore:
    """Objects as files under a folder: for tests, the embedded mode and offline copies of a log."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            msg = f"invalid object key {key!r}"
            raise EvidenceError(msg)
        return self.root / key

    def get(self, key: str) -> bytes | None:
        """The file's bytes, or None."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"cannot read {self.where(key)}: {exc.strerror}"
            raise StoreError(msg) from exc

    def put(self, key: str, data: bytes, *, immutable: bool = True) -> None:
        """Temp file, fsync, rename; immutable objects are left read-only."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                if immutable:
                    os.chmod(tmp, 0o444)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            msg = f"cannot write {self.where(key)}: {exc.strerror}"
            raise StoreError(msg) from exc

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted (temp files excluded)."""
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.exists():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def where(self, key: str) -> str:
        """The file's path."""
        return str(self.root / key)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"FolderObjectStore({str(self.root)!r})"


class S3StoreSettings(BaseModel):
    """Where the tile log lives on S3, and how long its immutable objects are locked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = "http://127.0.0.1:8333"
    bucket: str = "tidm-evidence"
    prefix: str = "log"
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"
    retention_days: float = Field(default=0, ge=0)
    """Days to lock each tile and bundle (needs a bucket with Object Lock); 0 leaves it to the bucket's
    default retention, if it has one."""
    lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    create_bucket: bool = True
    """Create the bucket (with object lock enabled) if it does not exist."""


class S3ObjectStore:
    """Objects in an S3 bucket through the minio client; Object Lock retention where the bucket has it."""

    def __init__(self, settings: S3StoreSettings) -> None:
        import urllib3
        from minio import Minio
        from minio.error import S3Error

        self.settings = settings
        parsed = urlsplit(settings.endpoint)
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            parsed.netloc or parsed.path,
            access_key=settings.access_key.get_secret_value() if settings.access_key else None,
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            region=settings.region,
            secure=parsed.scheme == "https",
            http_client=self._pool,
        )
        self._prefix = settings.prefix.strip("/")
        self._s3error = S3Error
        try:
            if settings.create_bucket and not self._client.bucket_exists(settings.bucket):
                self._client.make_bucket(settings.bucket, object_lock=True)
            self.locked = self._lock_enabled()
        except (S3Error, OSError, urllib3.exceptions.HTTPError) as exc:
            self._pool.clear()
            msg = f"cannot open the evidence bucket s3://{settings.bucket}: {_why(exc)}"
            raise StoreError(msg) from exc

    def _lock_enabled(self) -> bool:
        try:
            config = self._client.get_object_lock_config(self.settings.bucket)
        except self._s3error:
            return False  # no lock configuration: the server or the bucket does not offer it
        return config is not None

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None."""
        response = None
        try:
            response = self._client.get_object(self.settings.bucket, self._key(key))
            return bytes(response.read())
        except self._s3error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            msg = f"cannot read {self.where(key)}: {_why(exc)}"
            raise StoreError(msg) from exc
        except OSError as exc:
            msg = f"cannot read {self.where(key)}: {_why(exc)}"
            raise StoreError(msg) from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def put(self, key: str, data: bytes, *, immutable: bool = True) -> None:
        """One PUT; immutable objects get a retention period when the bucket has Object Lock."""
        from minio.commonconfig import COMPLIANCE, GOVERNANCE
        from minio.retention import Retention

        retention = None
        if immutable and self.locked and self.settings.retention_days:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.settings.retention_days)
            mode = COMPLIANCE if self.settings.lock_mode == "COMPLIANCE" else GOVERNANCE
            retention = Retention(mode, until)
        try:
            self._client.put_object(
                self.settings.bucket,
                self._key(key),
                io.BytesIO(data),
                len(data),
                content_type="application/octet-stream",
                retention=retention,
            )
        except (self._s3error, OSError) as exc:
            msg = f"cannot write {self.where(key)}: {_why(exc)}"
            raise StoreError(msg) from exc

    def retention(self, key: str) -> tuple[str, dt.datetime] | None:
        """(mode, retain-until) of the object's current version, or None if it is not locked."""
        try:
            found = self._client.get_object_retention(self.settings.bucket, self._key(key))
        except self._s3error:
            return None
        if found is None or found.mode is None or found.retain_until_date is None:
            return None
        return str(found.mode), found.retain_until_date

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""
        cut = len(self._prefix) + 1 if self._prefix else 0
        try:
            objects = self._client.list_objects(
                self.settings.bucket, prefix=self._key(prefix), recursive=True
            )
            return sorted(o.object_name[cut:] for o in objects if o.object_name)
        except (self._s3error, OSError) as exc:
            msg = f"cannot list {self.where(prefix)}: {_why(exc)}"
            raise StoreError(msg) from exc

    def where(self, key: str) -> str:
        """s3://bucket/prefix/key."""
        return f"s3://{self.settings.bucket}/{self._key(key)}"

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.clear()

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.where('')!r})"


def _why(exc: BaseException) -> str:
    """The error without credentials: S3 errors carry code and message, nothing signed."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if code:
        return f"{code}: {message}" if message else str(code)
    return type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else "")
