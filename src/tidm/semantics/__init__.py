"""Canonical schemas, signal catalog and acquisition plans. Imports no other TIDM part."""

from tidm.semantics.errors import CatalogError, SchemaError, SemanticsError
from tidm.semantics.schema import (
    CLEAN_SCHEMA,
    SAMPLES_SCHEMA,
    SCHEMA_VERSION,
    Quality,
    check_samples,
    quality_from_status,
    samples_table,
)

__all__ = [
    "CLEAN_SCHEMA",
    "SAMPLES_SCHEMA",
    "SCHEMA_VERSION",
    "CatalogError",
    "Quality",
    "SchemaError",
    "SemanticsError",
    "check_samples",
    "quality_from_status",
    "samples_table",
]
