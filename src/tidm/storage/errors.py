"""Errors of the storage part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = [
    "AccessDenied",
    "GrantsFileError",
    "LakeError",
    "LakeUnavailable",
    "LedgerUnavailable",
    "RequestTooLarge",
    "StorageError",
]


class StorageError(TidmError):
    """Base for lake errors."""


class LakeError(StorageError, Terminal):
    """A lake operation failed for a reason retrying won't fix (bad key, bad settings)."""


class LakeUnavailable(StorageError, Transient):
    """The object store did not answer or refused for now; retry with back-off."""


class AccessDenied(StorageError, Terminal):
    """A read was refused; the message says which grant rule refused it.

    `visible` is False when no grant of the caller covers what was asked (it is then "not found" to
    the caller); `public` is the part of the reason the caller may see (rules of grants that cover
    the request, never the scope of others)."""

    def __init__(self, message: str, *, visible: bool = True, public: str | None = None) -> None:
        super().__init__(message)
        self.visible = visible
        self.public = public if public is not None else message


class GrantsFileError(StorageError, Terminal):
    """A grants file is missing or malformed; the message names the file and the field."""


class LedgerUnavailable(StorageError, Transient):
    """A read's count could not be taken in time (the evidence log was not sequenced); retry later."""


class RequestTooLarge(StorageError, Terminal):
    """A read asks for more than a per-request cap allows (time span, rows); the message says which."""
