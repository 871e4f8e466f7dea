"""Errors of the edge agent."""

from __future__ import annotations

from tidm.errors import Terminal, TidmError, Transient

__all__ = ["AgentError", "SourceError", "SourceUnavailable"]


class AgentError(TidmError):
    """Base for agent errors."""


class SourceError(AgentError, Terminal):
    """A source is misconfigured or the equipment answered with something unusable."""


class SourceUnavailable(AgentError, Transient):
    """The equipment did not answer; reconnect with back-off."""
