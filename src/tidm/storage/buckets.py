"""Bucket set-up for the lake on S3 (MinIO, SeaweedFS, AWS): create, versioning, object lock.

Object lock can only be chosen when a bucket is created; versioning can be turned on later. Both
are asked for, and what the server actually granted is reported back, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from tidm.errors import MissingExtraError
from tidm.storage.config import LakeSettings
from tidm.storage.errors import LakeError, LakeUnavailable

__all__ = ["BucketState", "ensure_bucket"]


@dataclass(frozen=True)
class BucketState:
    bucket: str
    created: bool
    versioning: bool
    object_lock: bool


def ensure_bucket(
    settings: LakeSettings, *, versioning: bool = True, object_lock: bool = False
) -> BucketState:
    """Create the lake's bucket if it is missing and switch versioning on; report what holds."""
    try:
        from minio import Minio
        from minio.commonconfig import ENABLED
        from minio.error import MinioException, S3Error
        from minio.versioningconfig import VersioningConfig
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise MissingExtraError(extra="s3", module="minio") from exc
    parsed = urlparse(settings.url)
    if parsed.scheme != "s3" or not parsed.netloc:
        msg = f"lake url {settings.url!r} is not s3://bucket/...: nothing to set up"
        raise LakeError(msg)
    bucket = parsed.netloc
    endpoint = urlparse(settings.endpoint or "https://s3.amazonaws.com")
    client = Minio(
        endpoint.netloc,
        access_key=settings.access_key.get_secret_value() if settings.access_key else None,
        secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        secure=endpoint.scheme == "https",
        region=settings.region,
    )
    try:
        created = False
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket, object_lock=object_lock)
            created = True
        if versioning:
            client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        has_versioning = client.get_bucket_versioning(bucket).status == ENABLED
        try:
            has_lock = client.get_object_lock_config(bucket) is not None
        except S3Error:
            has_lock = False
    except (MinioException, OSError) as exc:
        msg = f"cannot set up bucket {bucket!r} at {endpoint.netloc}: {exc}"
        raise LakeUnavailable(msg) from exc
    finally:
        client._http.clear()  # noqa: SLF001 - minio keeps a urllib3 pool open otherwise
    return BucketState(bucket, created, has_versioning, has_lock)
