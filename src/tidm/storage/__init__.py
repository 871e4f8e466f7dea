"""The lake: Parquet on S3/MinIO or a local folder, with offset-derived object names."""

from tidm.storage.config import LakeSettings
from tidm.storage.errors import LakeError, LakeUnavailable, StorageError
from tidm.storage.lake import Lake, LandedObject, LandingIntent, object_key

__all__ = [
    "Lake",
    "LakeError",
    "LakeSettings",
    "LakeUnavailable",
    "LandedObject",
    "LandingIntent",
    "StorageError",
    "object_key",
]
