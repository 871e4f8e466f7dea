"""Swinging-door compression in vector blocks: the same kept indices as one scalar pass, several times
faster on long segments.

The scalar pass (`scalar_steps`) holds a pivot p, the next candidate i and the doors (upper, lower):
the tightest of the slopes (x ± e - x_p) / (t - t_p) over the samples strictly between p and i. Sample
i closes the line when its slope from p leaves the doors; then i - 1 becomes the pivot and the doors
reopen. Each step depends on the last, so the scalar loop runs at the latency of one division and a
few compares per sample. This module computes the same steps differently:

* Blocks. From (p, i, doors), the K = 8 or 16 samples i..i+K-1 are taken at once in LLVM vector IR
  (`_block8`, 8 lanes per call): their slopes and door bounds from p, the exclusive prefix min/max of
  the bounds (a log-step shuffle scan, seeded with the incoming doors) and a bit mask of the samples
  that would close the line. The lowest set bit (cttz) is the first closure, where the scalar pass
  would stop too; the samples before it only narrowed the doors, which is what the scan computed.
  Every lane uses the scalar pass's own operations (1 / dt, then products and min/max in the same
  order), so every value is bit-identical and the result is exact, not approximate. The next
  (p, i, doors) is chosen by selects marked !unpredictable, which LLVM keeps as conditional moves:
  whether a block closes the line is a coin flip that a branch would mispredict.
* Slow blocks. A block with a non-finite value, a non-finite pivot or a non-increasing time anywhere
  runs as exact scalar steps instead; such blocks are rare in real signals.
* Streams. A block's inputs come from the last block's result, so one stream of blocks is still
  bound by latency. A long segment is cut into `STREAMS` chunks that run interleaved: stream k starts
  at chunk start c_k as if a sample there had just become the pivot. The state after a pivot change
  is nothing but the pivot, so once stream k - 1 reaches a pivot that stream k also had, everything
  after it is the same: stream k - 1 runs on alone past c_k (at most `slack` samples) until that
  happens, and the rest of its output is stream k's. If they never meet, the segment is redone as
  one stream. Streams after the first write into scratch, where a kept index that is not a pivot
  (the sample before a non-finite one) is stored as ~index, so that it is never taken for a meeting
  point; the merge copies the scratch behind the first stream's output.
* Block size. 16 wastes fewer steps on overhead, 8 wastes fewer lanes past a closure; a probe on the
  start of the first long segment picks 8 when lines there close more often than once per
  `SHORT_RUN` samples.

Everything is generic LLVM IR (vector types, shuffles, selects, cttz): no inline assembly, so it
compiles for any target Numba supports, and uses the widest vectors the CPU has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import llvmlite.ir as ir  # type: ignore[import-untyped]
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from tidm.stream_processing.kernels._arrays import F64, I64
from tidm.stream_processing.kernels._jit import njit

SPLIT_MIN = 1 << 14  # segments at least this long run as interleaved streams
STREAMS = 3  # written out for 3 in `_blocks`; 4 to 6 were measured no faster
SLACK_DIV = 2  # stream k - 1 may run C // SLACK_DIV samples into chunk k (C = chunk length) to meet it
PROBE = 1024  # samples probed for the block size
SHORT_RUN = 6  # lines closing more often than once per this many samples: blocks of 8

F = TypeVar("F", bound=Callable[..., Any])


def _intrinsic(fn: Callable[..., tuple[Any, Any]]) -> Any:
    # numba.extending.intrinsic, seen by mypy as what it is at the call sites: an untyped function.
    return intrinsic(fn)


def _njit_inline(fn: F) -> F:
    # Inlined at Numba IR level, so that constant block counts reach LLVM as constants and each
    # caller gets loops of fixed length.
    return cast("F", numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")(fn))


# --- LLVM intrinsics --------------------------------------------------------------------------------

_W = 8  # lanes per `_block8` call
_F64 = ir.DoubleType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_V_F64 = ir.VectorType(_F64, _W)
_V_I64 = ir.VectorType(_I64, _W)


@_intrinsic
def _cttz(typingctx: Any, x: Any) -> tuple[Any, Any]:
    """Count of trailing zero bits (x != 0)."""
    sig = types.int64(types.int64)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


def _unpredictable_select(builder: Any, args: Any) -> Any:
    out = builder.select(*args)
    out.set_metadata("unpredictable", builder.module.add_metadata([]))
    return out


@_intrinsic
def _select_i64(typingctx: Any, c: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """c ? a : b, kept as a conditional move rather than a branch."""
    sig = types.int64(types.boolean, types.int64, types.int64)
    return sig, lambda context, builder, sig, args: _unpredictable_select(builder, args)


@_intrinsic
def _select_f64(typingctx: Any, c: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """c ? a : b, kept as a conditional move rather than a branch."""
    sig = types.float64(types.boolean, types.float64, types.float64)
    return sig, lambda context, builder, sig, args: _unpredictable_select(builder, args)


def _splat(builder: Any, x: Any, vt: Any) -> Any:
    undef = ir.Constant(vt, ir.Undefined)
    v = builder.insert_element(undef, x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, _W), [0] * _W))


def _shift_up(builder: Any, x: Any, fill: Any, d: int) -> Any:
    """Lane k <- x[k - d], lanes k < d <- fill."""
    idx = [_W + k if k < d else k - d for k in range(_W)]
    return builder.shuffle_vector(x, fill, ir.Constant(ir.VectorType(_I32, _W), idx))


# Ordered compares as in the scalar min()/max(): NaN never occurs in the fast lanes (blocks with a
# non-finite value take the scalar path), so these agree with them bit for bit.
def _vmin(builder: Any, a: Any, b: Any) -> Any:
    return builder.select(builder.fcmp_ordered("<", a, b), a, b)


def _vmax(builder: Any, a: Any, b: Any) -> Any:
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


@_intrinsic
def _block8(
    typingctx: Any, ts: Any, values: Any, i: Any, tp: Any, vp: Any, e: Any, upper: Any, lower: Any
) -> tuple[Any, Any]:
    """Samples i..i+7 against pivot (tp, vp) and doors (upper, lower): (closing-lane bit mask, bad-lane
    bit mask, upper and lower doors after all 8 samples). Bad lanes (non-finite value, dt <= 0) make
    the other results meaningless; the caller then takes the scalar path."""
    sig = types.Tuple((types.int64, types.int64, types.float64, types.float64))(  # type: ignore[no-untyped-call]
        ts, values, i, tp, vp, e, upper, lower
    )

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ts_arr, v_arr, i, tp, vp, e, upper0, lower0 = args
        ts_ptr = context.make_array(sig.args[0])(context, builder, ts_arr).data
        v_ptr = context.make_array(sig.args[1])(context, builder, v_arr).data
        # align=8: i is any sample index, so the vector loads are unaligned in general.
        t = builder.load(builder.bitcast(builder.gep(ts_ptr, [i]), _V_I64.as_pointer()), align=8)
        v = builder.load(builder.bitcast(builder.gep(v_ptr, [i]), _V_F64.as_pointer()), align=8)
        dt = builder.sub(t, _splat(builder, tp, _V_I64))
        # The scalar pass's operations, in its order: inv = 1 / dt, then (x - vp) * inv.
        inv = builder.fdiv(ir.Constant(_V_F64, [1.0] * _W), builder.sitofp(dt, _V_F64))
        vps = _splat(builder, vp, _V_F64)
        es = _splat(builder, e, _V_F64)
        slope = builder.fmul(builder.fsub(v, vps), inv)
        up = builder.fmul(builder.fsub(builder.fadd(v, es), vps), inv)
        lo = builder.fmul(builder.fsub(builder.fsub(v, es), vps), inv)
        finite = builder.fcmp_ordered("==", builder.fsub(v, v), ir.Constant(_V_F64, [0.0] * _W))
        nonpos = builder.icmp_signed("<=", dt, ir.Constant(_V_I64, [0] * _W))
        bad_v = builder.or_(builder.not_(finite), nonpos)
        bad = builder.zext(builder.bitcast(bad_v, ir.IntType(_W)), _I64)
        # Inclusive prefix min/max of the lanes' own bounds, in log2(8) shuffle steps.
        inf = ir.Constant(_V_F64, [float("inf")] * _W)
        ninf = ir.Constant(_V_F64, [float("-inf")] * _W)
        up_scan, lo_scan = up, lo
        for d in (1, 2, 4):
            up_scan = _vmin(builder, up_scan, _shift_up(builder, up_scan, inf, d))
            lo_scan = _vmax(builder, lo_scan, _shift_up(builder, lo_scan, ninf, d))
        upper0_v = _splat(builder, upper0, _V_F64)
        lower0_v = _splat(builder, lower0, _V_F64)
        # Lane k is tested against the doors of the samples before it: exclusive scan + incoming doors.
        up_before = _vmin(builder, _shift_up(builder, up_scan, inf, 1), upper0_v)
        lo_before = _vmax(builder, _shift_up(builder, lo_scan, ninf, 1), lower0_v)
        closes = builder.or_(
            builder.fcmp_ordered(">", slope, up_before), builder.fcmp_ordered("<", slope, lo_before)
        )
        mask = builder.zext(builder.bitcast(closes, ir.IntType(_W)), _I64)
        last = ir.Constant(_I32, _W - 1)
        upper1 = builder.extract_element(_vmin(builder, up_scan, upper0_v), last)
        lower1 = builder.extract_element(_vmax(builder, lo_scan, lower0_v), last)
        return context.make_tuple(builder, sig.return_type, [mask, bad, upper1, lower1])

    return sig, codegen


# --- scalar steps -----------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def scalar_steps(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    lim: int,
    out: I64,
    o: int,
    enc: bool,
) -> tuple[int, int, float, float, int]:
    """The swinging door's steps while i < lim, from pivot p, candidate i and doors (upper, lower);
    kept indices go to out[o:]. Returns the new (p, i, upper, lower, o). This is the definition of the
    kernel's result; the block code only computes the same steps faster. With `enc`, a kept index that
    is not a pivot is stored as ~index (see the module docstring). out[o - 1] must exist.

    The doors: over the samples strictly between the pivot p and the candidate i, the tightest upper
    and lower slopes (x ± e) seen from p. A candidate whose own slope from p lies between them keeps
    every sample in between within e of the line p -> candidate."""
    while i < lim:
        vi = values[i]
        vp = values[p]
        if not np.isfinite(vi) or not np.isfinite(vp) or ts[i] <= ts[p]:
            # Non-finite values and non-increasing time break the line: keep both sides.
            prev = out[o - 1]
            if prev < 0:
                prev = ~prev
            if prev != i - 1:
                out[o] = ~(i - 1) if enc else i - 1
                o += 1
            out[o] = i
            o += 1
            p = i
            upper = np.inf
            lower = -np.inf
            i += 1
            continue
        # One division per sample (the rest are products): the block code divides the same way.
        inv_dt = 1.0 / float(ts[i] - ts[p])
        slope = (vi - vp) * inv_dt
        if slope > upper or slope < lower:
            out[o] = i - 1  # p < i - 1 here: with no samples in between the doors are open
            o += 1
            p = i - 1
            upper = np.inf
            lower = -np.inf
            continue  # re-examine i against the new pivot
        upper = min(upper, (vi + e - vp) * inv_dt)
        lower = max(lower, (vi - e - vp) * inv_dt)
        i += 1
    return p, i, upper, lower, o


# --- blocks -----------------------------------------------------------------------------------------


@_njit_inline
def _block(
    ts: I64, values: F64, e: float, p: int, i: int, upper: float, lower: float, nb: int
) -> tuple[int, int, float, float]:
    """nb blocks of 8 from i: (first closing offset, or 8 * nb if none; bad-lane mask; doors after)."""
    # Unsigned: p is never negative, and Numba then skips the wraparound check.
    tp = ts[np.uint64(p)]
    vp = values[np.uint64(p)]
    mask, bad, up, lo = _block8(ts, values, i, tp, vp, e, upper, lower)
    for q in range(1, nb):
        m2, b2, up, lo = _block8(ts, values, i + 8 * q, tp, vp, e, up, lo)
        mask |= m2 << (8 * q)
        bad |= b2
    bad |= np.int64(not np.isfinite(vp))
    # The sentinel bit makes "no closure" come out as 8 * nb without a branch.
    return _cttz(mask | (np.int64(1) << (8 * nb))), bad, up, lo


@_njit_inline
def _step(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    out: I64,
    o: int,
    enc: bool,
    nb: int,
) -> tuple[int, int, float, float, int]:
    """One block of 8 * nb samples from i (i + 8 * nb <= end of segment)."""
    k = 8 * nb
    f, bad, up, lo = _block(ts, values, e, p, i, upper, lower, nb)
    if bad != 0:
        return scalar_steps(ts, values, e, p, i, upper, lower, i + k, out, o, enc)
    closed = f < k
    j = i + f
    # Written either way, counted only on a closure: a store is cheaper than a branch here.
    out[o] = j - 1
    o += int(closed)
    p = _select_i64(closed, j - 1, p)
    upper = _select_f64(closed, np.inf, up)
    lower = _select_f64(closed, -np.inf, lo)
    return p, j, upper, lower, o


@_njit_inline
def _met(p: int, mb: I64, ptr: int, mend: int) -> tuple[bool, int]:
    """Whether pivot p is among mb[ptr:mend] (increasing, ~x entries negative), and the new ptr."""
    while ptr < mend and mb[ptr] < p:
        ptr += 1
    return ptr < mend and mb[ptr] == p, ptr


@_njit_inline
def _alone(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    lim: int,
    out: I64,
    o: int,
    enc: bool,
    chk: bool,
    mb: I64,
    ptr: int,
    mend: int,
    nb: int,
) -> tuple[int, int, float, float, int, bool, int]:
    """One stream until i reaches lim or (chk) its pivot is one of the next stream's, mb[ptr:mend].
    Returns (p, i, upper, lower, o, met, ptr): with met, mb[ptr] == p."""
    k = 8 * nb
    while i < lim:
        while i + k <= lim:
            f, bad, up, lo = _block(ts, values, e, p, i, upper, lower, nb)
            if bad != 0:
                break
            closed = f < k
            j = i + f
            out[o] = j - 1
            o += int(closed)
            p = _select_i64(closed, j - 1, p)
            upper = _select_f64(closed, np.inf, up)
            lower = _select_f64(closed, -np.inf, lo)
            i = j
            if chk and closed:
                met, ptr = _met(p, mb, ptr, mend)
                if met:
                    return p, i, upper, lower, o, True, ptr
        p, i, upper, lower, o = scalar_steps(ts, values, e, p, i, upper, lower, min(i + k, lim), out, o, enc)
        if chk:
            # The last pivot suffices: once the streams met, every later pivot is shared too.
            met, ptr = _met(p, mb, ptr, mend)
            if met:
                return p, i, upper, lower, o, True, ptr
    return p, i, upper, lower, o, False, ptr


# Compiled once per block size rather than inlined at each of its four uses (a sixth less compile time;
# the calls are once per segment and stream, their cost is nil).
@njit(nogil=True, cache=True)
def _alone8(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    lim: int,
    out: I64,
    o: int,
    enc: bool,
    chk: bool,
    mb: I64,
    ptr: int,
    mend: int,
) -> tuple[int, int, float, float, int, bool, int]:
    return _alone(ts, values, e, p, i, upper, lower, lim, out, o, enc, chk, mb, ptr, mend, 1)


@njit(nogil=True, cache=True)
def _alone16(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    lim: int,
    out: I64,
    o: int,
    enc: bool,
    chk: bool,
    mb: I64,
    ptr: int,
    mend: int,
) -> tuple[int, int, float, float, int, bool, int]:
    return _alone(ts, values, e, p, i, upper, lower, lim, out, o, enc, chk, mb, ptr, mend, 2)


@_njit_inline
def _alone_nb(
    ts: I64,
    values: F64,
    e: float,
    p: int,
    i: int,
    upper: float,
    lower: float,
    lim: int,
    out: I64,
    o: int,
    enc: bool,
    chk: bool,
    mb: I64,
    ptr: int,
    mend: int,
    nb: int,
) -> tuple[int, int, float, float, int, bool, int]:
    if nb == 1:
        return _alone8(ts, values, e, p, i, upper, lower, lim, out, o, enc, chk, mb, ptr, mend)
    return _alone16(ts, values, e, p, i, upper, lower, lim, out, o, enc, chk, mb, ptr, mend)


@_njit_inline
def _end(out: I64, o: int, last: int) -> int:
    """Keep the segment's last sample unless it already is (possibly as ~last)."""
    prev = out[o - 1]
    if prev < 0:
        prev = ~prev
    if prev != last:
        out[o] = last
        o += 1
    return o


@_njit_inline
def _blocks(
    ts: I64,
    values: F64,
    offsets: I64,
    e: float,
    kept: I64,
    scratch: I64,
    split_min: int,
    slack_div: int,
    stats: I64,
    nb: int,
) -> int:
    """`sdt_blocks` with blocks of 8 * nb samples; segments of at least `split_min` samples as 3 streams."""
    o = 0
    half = scratch.size // 2  # streams 1 and 2 write scratch[:half] and scratch[half:]
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b == a:
            continue
        o_seg = o
        kept[o] = a
        o += 1
        done = False
        if b - a >= split_min:
            c = (b - a) // 3
            slack = c // slack_div
            c1 = a + c
            c2 = a + 2 * c
            p0, i0, u0, l0, o0 = a, a + 1, np.inf, -np.inf, o
            # Streams 1 and 2 start from a fake reset at their chunk start: its first entry is the pivot.
            scratch[0] = c1
            p1, i1, u1, l1, o1 = c1, c1 + 1, np.inf, -np.inf, 1
            scratch[half] = c2
            p2, i2, u2, l2, o2 = c2, c2 + 1, np.inf, -np.inf, half + 1
            k = 8 * nb
            while i0 + k <= c1 and i1 + k <= c2 and i2 + k <= b:
                p0, i0, u0, l0, o0 = _step(ts, values, e, p0, i0, u0, l0, kept, o0, False, nb)
                p1, i1, u1, l1, o1 = _step(ts, values, e, p1, i1, u1, l1, scratch, o1, True, nb)
                p2, i2, u2, l2, o2 = _step(ts, values, e, p2, i2, u2, l2, scratch, o2, True, nb)
            # Last stream to the end; then each earlier one until it meets the next.
            p2, i2, u2, l2, o2, _, _ = _alone_nb(
                ts, values, e, p2, i2, u2, l2, b, scratch, o2, True, False, scratch, 0, 0, nb
            )
            o2 = _end(scratch, o2, b - 1)
            streams = 3  # streams whose output counts: the later ones were overtaken
            m1 = 0
            p1, i1, u1, l1, o1, met, ptr = _alone_nb(
                ts,
                values,
                e,
                p1,
                i1,
                u1,
                l1,
                min(b, c2 + slack),
                scratch,
                o1,
                True,
                True,
                scratch,
                half,
                o2,
                nb,
            )
            if met:
                m1 = ptr
            elif i1 >= b:
                o1 = _end(scratch, o1, b - 1)
                streams = 2
            else:
                streams = 0
            if streams > 0:
                p0, i0, u0, l0, o0, met, ptr = _alone_nb(
                    ts,
                    values,
                    e,
                    p0,
                    i0,
                    u0,
                    l0,
                    min(b, c1 + slack),
                    kept,
                    o0,
                    False,
                    True,
                    scratch,
                    0,
                    o1,
                    nb,
                )
                if met:
                    o = o0
                    # From the meeting pivot on, stream 1's output is stream 0's (~x entries decoded).
                    for t in range(ptr + 1, o1):
                        x = scratch[t]
                        kept[o] = x ^ (x >> 63)
                        o += 1
                    if streams == 3:
                        for t in range(m1 + 1, o2):
                            x = scratch[t]
                            kept[o] = x ^ (x >> 63)
                            o += 1
                    done = True
                # (Stream 0 cannot reach b on its own: c1 + slack <= a + 2c < b.)
            stats[0 if done else 1] += 1
            if not done:
                o = o_seg + 1
        if not done:
            _, _, _, _, o, _, _ = _alone_nb(
                ts, values, e, a, a + 1, np.inf, -np.inf, b, kept, o, False, False, scratch, 0, 0, nb
            )
            o = _end(kept, o, b - 1)
    return o


@njit(nogil=True, cache=True)
def _blocks8(
    ts: I64,
    values: F64,
    offsets: I64,
    e: float,
    kept: I64,
    scratch: I64,
    split_min: int,
    slack_div: int,
    stats: I64,
) -> int:
    return _blocks(ts, values, offsets, e, kept, scratch, split_min, slack_div, stats, 1)


@njit(nogil=True, cache=True)
def _blocks16(
    ts: I64,
    values: F64,
    offsets: I64,
    e: float,
    kept: I64,
    scratch: I64,
    split_min: int,
    slack_div: int,
    stats: I64,
) -> int:
    return _blocks(ts, values, offsets, e, kept, scratch, split_min, slack_div, stats, 2)


@njit(nogil=True, cache=True)
def short_runs(
    ts: I64,
    values: F64,
    offsets: I64,
    e: float,
    scratch: I64,
    split_min: int,
    slack_div: int,
    probe: int,
    short_run: int,
) -> bool:
    """Whether lines close more often than once per `short_run` samples over the first `probe` samples of
    the first segment of at least `split_min` samples (False without one)."""
    for s in range(offsets.size - 1):
        a = offsets[s]
        b = offsets[s + 1]
        if b - a >= split_min:
            m = min(b - a, probe)
            tmp = np.empty(m + 2, np.int64)
            off = np.empty(2, np.int64)
            off[0] = 0
            off[1] = m
            stats = np.zeros(2, np.int64)
            count = _blocks16(
                ts[a : a + m], values[a : a + m], off, e, tmp, scratch, split_min, slack_div, stats
            )
            return bool(count * short_run > m)
    return False


def scratch_size(offsets: I64, split_min: int, slack_div: int) -> int:
    """Length of the scratch array that `sdt_blocks` needs for these segments."""
    longest = int(np.max(np.diff(offsets))) if offsets.size > 1 else 0
    if longest < split_min:
        return 2
    # Streams 1 and 2 keep at most one index per sample of their chunk plus slack, and a few more.
    c = longest // STREAMS
    return 2 * (c + c // slack_div + 2 * STREAMS + 8)


@njit(nogil=True, cache=True)
def sdt_blocks(
    ts: I64,
    values: F64,
    offsets: I64,
    e: float,
    kept: I64,
    scratch: I64,
    split_min: int,
    slack_div: int,
    probe: int,
    short_run: int,
    stats: I64,
) -> int:
    """Swinging-door kept indices into kept[:count], exactly as `scalar_steps` run over each segment
    (kept: room for every sample; scratch: `scratch_size` entries; stats[0] += segments that ran as
    streams, stats[1] += segments redone as one stream). Returns count."""
    if short_runs(ts, values, offsets, e, scratch, split_min, slack_div, probe, short_run):
        return _blocks8(ts, values, offsets, e, kept, scratch, split_min, slack_div, stats)
    return _blocks16(ts, values, offsets, e, kept, scratch, split_min, slack_div, stats)
