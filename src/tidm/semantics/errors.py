"""Errors of the semantics part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError

__all__ = ["AasError", "CatalogError", "SchemaError", "SemanticsError"]


class SemanticsError(TidmError):
    """Base for schema, catalog and AAS errors."""


class SchemaError(SemanticsError, Terminal):
    """Data does not match a canonical schema."""


class CatalogError(SemanticsError, Terminal):
    """A signal catalog or acquisition plan is invalid."""


class AasError(SemanticsError, Terminal):
    """An AAS environment or its mapping is unreadable or invalid; names the file and the element path."""

    def __init__(self, message: str, *, file: str, path: str = "") -> None:
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.path = path
        self.reason = message
