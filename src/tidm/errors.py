"""The root of TIDM's exceptions and the retry-behaviour mixins every part shares.

This module is shared by all parts (it is not a part of its own), so `semantics` and `evidence`
may import it without breaking the dependency rules of the architecture plan.
"""

from __future__ import annotations

__all__ = ["MissingExtraError", "Terminal", "TidmError", "Transient"]


class TidmError(Exception):
    """Root of every error TIDM raises on purpose."""


class Transient:
    """Mixin: the operation may succeed if retried after a back-off."""


class Terminal:
    """Mixin: retrying will not help; the input goes to quarantine with evidence."""


class MissingExtraError(TidmError, Terminal, ImportError):
    """An optional protocol stack is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"the '{extra}' extra is required for this feature ({module} is not installed): "
            f"pip install 'tidm[{extra}]'"
        )
        self.extra = extra
