"""Errors of the ingest part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError

__all__ = ["EnvelopeError", "IngestError", "KeyFileError"]


class IngestError(TidmError):
    """Base for envelope, registry and quarantine errors."""


class EnvelopeError(IngestError, Terminal):
    """A message is not a valid, verified TIDM envelope. `reason` is a short stable code."""

    def __init__(self, *, reason: str, detail: str, where: str = "") -> None:
        self.reason = reason
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{reason}: {detail}")


class KeyFileError(IngestError, Terminal):
    """A key or trust file is missing, unreadable or malformed."""
