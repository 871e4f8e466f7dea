"""Kernel errors: parameters or inputs a kernel cannot work on, named with where they came from."""

from __future__ import annotations

from tidm.errors import Terminal
from tidm.stream_processing.errors import JobError

__all__ = ["KernelError"]


class KernelError(JobError, Terminal, ValueError):
    """A kernel was called with parameters or arrays it cannot use (the message says which and why)."""
