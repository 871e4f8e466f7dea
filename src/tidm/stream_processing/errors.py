"""Errors of the stream processing part."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError

__all__ = ["JobError", "JobSpecError"]


class JobError(TidmError):
    """Base for stream job errors."""


class JobSpecError(JobError, Terminal):
    """A job spec is invalid; the message names the file, line and step."""
