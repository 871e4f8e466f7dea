"""Errors of the storage part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = ["AccessDenied", "GrantsFileError", "LakeError", "LakeUnavailable", "StorageError"]


class StorageError(TidmError):
    """Base for lake errors."""


class LakeError(StorageError, Terminal):
    """A lake operation failed for a reason retrying won't fix (bad key, bad settings)."""


class LakeUnavailable(StorageError, Transient):
    """The object store did not answer or refused for now; retry with back-off."""


class AccessDenied(StorageError, Terminal):
    """A read was refused; the message says which grant rule refused it."""


class GrantsFileError(StorageError, Terminal):
    """A grants file is missing or malformed; the message names the file and the field."""
