"""Errors of the semantics part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError

__all__ = ["CatalogError", "SchemaError", "SemanticsError"]


class SemanticsError(TidmError):
    """Base for schema, catalog and AAS errors."""


class SchemaError(SemanticsError, Terminal):
    """Data does not match a canonical schema."""


class CatalogError(SemanticsError, Terminal):
    """A signal catalog or acquisition plan is invalid."""
