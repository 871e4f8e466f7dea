"""Time order within a segment: duplicate timestamps, out-of-order arrivals, sorting."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidm.stream_processing.kernels import _flags as fl
from tidm.stream_processing.kernels._arrays import I64, U32, flags_or_zeros, i64, offsets_for, same_length
from tidm.stream_processing.kernels._jit import njit
from tidm.stream_processing.kernels.errors import KernelError

__all__ = ["duplicate_flags", "is_sorted", "out_of_order_flags", "sort_permutation"]


@njit(nogil=True, cache=True)
def _is_sorted_kernel(ts: I64, offsets: I64) -> bool:
    for s in range(offsets.size - 1):
        for i in range(offsets[s] + 1, offsets[s + 1]):
            if ts[i] < ts[i - 1]:
                return False
    return True


def is_sorted(ts: Any, *, offsets: Any = None) -> bool:
    """True when timestamps never decrease within any segment."""
    t = i64(ts)
    return bool(_is_sorted_kernel(t, offsets_for(offsets, t.size, where="is_sorted")))


@njit(nogil=True, cache=True)
def _sort_kernel(ts: I64, offsets: I64, perm: I64) -> int:
    unsorted = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        ordered = True
        for i in range(a, b):
            perm[i] = i
            if i > a and ts[i] < ts[i - 1]:
                ordered = False
        if not ordered:
            unsorted += 1
            # Stable, so samples with equal timestamps keep their arrival order (keep-last/first needs it).
            order = np.argsort(ts[a:b], kind="mergesort")
            for j in range(b - a):
                perm[a + j] = a + order[j]
    return unsorted


def sort_permutation(ts: Any, *, offsets: Any = None) -> tuple[I64, int]:
    """A stable permutation sorting each segment by timestamp (identity on sorted segments), and how
    many segments needed sorting.
    """
    t = i64(ts)
    off = offsets_for(offsets, t.size, where="sort_permutation")
    perm = np.empty(t.size, dtype=np.int64)
    unsorted = _sort_kernel(t, off, perm)
    return perm, int(unsorted)


@njit(nogil=True, cache=True)
def _out_of_order_kernel(ts: I64, offsets: I64, flags: U32) -> int:
    count = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b == a:
            continue
        latest = ts[a]
        for i in range(a + 1, b):
            if ts[i] < latest:
                flags[i] |= fl.OUT_OF_ORDER
                count += 1
            else:
                latest = ts[i]
    return count


def out_of_order_flags(ts: Any, *, offsets: Any = None, flags: Any = None) -> tuple[U32, int]:
    """Flag OUT_OF_ORDER on samples (in arrival order) older than the newest one before them in their
    segment. Returns (flags, count).
    """
    t = i64(ts)
    n = same_length("out_of_order_flags", ts=t)
    out = flags_or_zeros(flags, n, where="out_of_order_flags")
    count = _out_of_order_kernel(t, offsets_for(offsets, n, where="out_of_order_flags"), out)
    return out, int(count)


@njit(nogil=True, cache=True)
def _duplicate_kernel(ts: I64, offsets: I64, keep_last: bool, flags: U32) -> int:
    count = 0
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b - a < 2:
            continue
        # Branch-free body over per-segment slices (so it vectorizes): OR in 0 or DUPLICATE.
        seg_t = ts[a:b]
        seg_f = flags[a : b - 1] if keep_last else flags[a + 1 : b]
        for i in range(b - a - 1):
            dup = np.uint32(seg_t[i + 1] == seg_t[i])
            seg_f[i] |= fl.DUPLICATE * dup
            count += int(dup)
    return count


def duplicate_flags(
    ts: Any, *, keep: str = "last", offsets: Any = None, flags: Any = None
) -> tuple[U32, int]:
    """Flag DUPLICATE on all but one sample of each run of adjacent equal timestamps (the last or first
    one is kept). Sort segments by time first (`sort_permutation`, stable) so that every duplicate is
    adjacent to its twins. Returns (flags, count).
    """
    if keep not in ("last", "first"):
        msg = f"duplicate_flags: keep must be 'last' or 'first', got {keep!r}"
        raise KernelError(msg)
    t = i64(ts)
    n = same_length("duplicate_flags", ts=t)
    off = offsets_for(offsets, n, where="duplicate_flags")
    out = flags_or_zeros(flags, n, where="duplicate_flags")
    count = _duplicate_kernel(t, off, keep == "last", out)
    return out, int(count)
