"""Give freed heap memory back to the operating system after a source's large, one-off allocations.

glibc's malloc keeps freed memory inside its heap when live blocks sit above it, so a process's RSS
stays at its high-water mark: importing asyncua (its generated type and node-id modules) leaves
about 40 MB freed but resident, and (re)subscribing thousands of nodes builds and drops requests and
responses of a similar size. `malloc_trim(0)` returns those free pages; on other C libraries (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The C library the interpreter is linked against (no `find_library`: it runs ldconfig).
        trim = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    fn: Callable[[int], int] = trim
    return fn


def release_free_memory() -> bool:
    """Return free heap pages to the OS (glibc); False where the C library cannot.

    It walks the heap (a few milliseconds for ~100 MB): call it after large releases, not per batch.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
