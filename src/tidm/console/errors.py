"""Errors of the console."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError

__all__ = ["ConsoleError", "FleetError"]


class ConsoleError(TidmError):
    """Root of the console's errors."""


class FleetError(ConsoleError, Terminal):
    """A process's health or metrics endpoint could not be read; the message names the endpoint."""
