"""Settings of the lake: a local folder or an S3 bucket (MinIO, SeaweedFS, AWS)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr

__all__ = ["LakeSettings"]


class LakeSettings(BaseModel):
    """`url` is `file:///path` or a plain path for a folder, `s3://bucket/prefix` for S3."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "lake"
    endpoint: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"
