"""Argument coercion for the kernel wrappers: contiguous arrays of the dtypes the kernels compile for."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from tidm.stream_processing.kernels.errors import KernelError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
BOOL = npt.NDArray[np.bool_]
C128 = npt.NDArray[np.complex128]


def empty(shape: int | tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """An uninitialized output array in Arrow's memory pool. Jobs call kernels batch after batch: the
    pool (mimalloc or jemalloc) hands back the pages the last batch's outputs freed, where large NumPy
    arrays are fresh mappings that page-fault and get zeroed by the kernel on first write. The arrays
    also go into Arrow tables without a copy, and count in `pyarrow.total_allocated_bytes()`."""
    dims = (shape,) if isinstance(shape, int) else shape
    dt = np.dtype(dtype)
    count = int(np.prod(dims, dtype=np.int64))
    buf = pa.allocate_buffer(max(count * dt.itemsize, 1))
    return np.frombuffer(buf, dtype=dt, count=count).reshape(dims)


def f64(a: Any) -> F64:
    return np.ascontiguousarray(a, dtype=np.float64)


def i64(a: Any) -> I64:
    return np.ascontiguousarray(a, dtype=np.int64)


def flags_or_zeros(flags: Any, n: int, *, where: str) -> U32:
    """The caller's flags array (updated in place when it already is contiguous uint32) or fresh zeros."""
    if flags is None:
        return np.zeros(n, dtype=np.uint32)
    out = np.ascontiguousarray(flags, dtype=np.uint32)
    if out.shape != (n,):
        msg = f"{where}: flags has shape {out.shape}, expected ({n},)"
        raise KernelError(msg)
    return out


def offsets_for(offsets: Any, n: int, *, where: str) -> I64:
    """Segment offsets (len = segments + 1, from 0 to n, non-decreasing); one segment when None."""
    if offsets is None:
        return np.array([0, n], dtype=np.int64)
    out = i64(offsets)
    if out.ndim != 1 or out.size < 1 or out[0] != 0 or out[-1] != n or np.any(np.diff(out) < 0):
        msg = f"{where}: offsets must run non-decreasing from 0 to {n} (got {out.size} entries)"
        raise KernelError(msg)
    return out


def per_segment(value: Any, nseg: int, *, name: str, where: str) -> F64:
    """A scalar or one value per segment, as a float64 array of length `nseg`."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(nseg, float(arr), dtype=np.float64)
    if arr.shape != (nseg,):
        msg = f"{where}: {name} has {arr.size} values for {nseg} segments"
        raise KernelError(msg)
    return np.ascontiguousarray(arr)


def same_length(where: str, **arrays: npt.NDArray[Any]) -> int:
    """The common length of 1-D arrays; a KernelError naming them when they differ."""
    lengths = {name: a.shape for name, a in arrays.items()}
    shapes = set(lengths.values())
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        msg = f"{where}: arrays must be 1-D of one length, got {lengths}"
        raise KernelError(msg)
    return int(next(iter(shapes))[0])
