"""Canonical schemas, signal catalog and acquisition plans. Imports no other TIDM part."""

from typing import Any

from tidm.semantics.catalog import CatalogEntry, SignalCatalog
from tidm.semantics.errors import AasError, CatalogError, SchemaError, SemanticsError
from tidm.semantics.schema import (
    CLEAN_SCHEMA,
    CLEAN_SCHEMA_VERSION,
    SAMPLES_SCHEMA,
    SCHEMA_VERSION,
    Quality,
    check_samples,
    quality_from_status,
    samples_table,
)

__all__ = [
    "CLEAN_SCHEMA",
    "CLEAN_SCHEMA_VERSION",
    "AasError",
    "AcquisitionPlan",
    "CatalogEntry",
    "PlanProtocol",
    "PlanRow",
    "SignalCatalog",
    "build_plan",
    "load_environment",
    "load_mapping",
    "load_plan",
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

# AAS loading and plans need basyx (the `aas` extra); import them on first use so that
# `import tidm.semantics` works without it.
_LAZY = {
    "AcquisitionPlan": "tidm.semantics.plan",
    "PlanProtocol": "tidm.semantics.plan",
    "PlanRow": "tidm.semantics.plan",
    "build_plan": "tidm.semantics.plan",
    "load_mapping": "tidm.semantics.plan",
    "load_plan": "tidm.semantics.plan",
    "load_environment": "tidm.semantics.aas",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
