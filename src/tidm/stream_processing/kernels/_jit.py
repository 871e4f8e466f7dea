"""A typed face for `numba.njit`, so `mypy --strict` keeps the signatures of the kernels it decorates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def njit(*, nogil: bool, cache: bool) -> Callable[[F], F]:
    """`numba.njit(nogil=..., cache=...)`; compiled lazily on first call, cached on disk.

    Float arithmetic follows IEEE 754 as in NumPy (`error_model="numpy"`): x / 0 is ±inf or NaN, never
    a ZeroDivisionError from inside a kernel, and divisions need no zero checks in the hot loops.
    """
    return cast("Callable[[F], F]", numba.njit(nogil=nogil, cache=cache, error_model="numpy"))
