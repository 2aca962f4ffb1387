"""Triton online softmax: rows read in tiles of up to 4,096 elements, the max and the sum in a
single pass (Milakov and Gimelshein, 2018), for rows of any length.

The statistics pass keeps a running shift c and sum s = sum exp(x_j - c) over the tiles seen.
When a tile raises the max, the sum is rescaled: s <- s exp(c_old - c_new) + sum exp(x - c_new).
The tile sums are added with Kahan compensation (triton_math.compensated_add): added plainly,
the 126 tiles of a 128,256-wide row (at 1,024 per tile) lost 20 ulps, twice the envelope; and
terms at the max, exactly 1, are counted apart from the others (triton_math.accumulate).
Softmax and log_softmax then read the row once more to write it (two reads, one write);
logsumexp writes c + log(s) and is done. Short rows go several to a program, as in
builtin:triton-softmax.

The trap this kernel is built to avoid, and the audit's mask-prefix cases catch: the running
max starts at -inf, and while every tile so far is fully masked it stays -inf, so the
rescaling factor exp(c_old - c_new) is exp(-inf - (-inf)) = exp(NaN) and the whole row turns
NaN. Here the shift is the running max only while that is finite, else 0 (triton_math.shift_of),
and an empty sum is never rescaled (triton_math.rescale): with a shift of 0 and a first finite
max of -1e4 (an additive mask), the factor exp(0 - (-1e4)) overflows to inf, and 0 x inf is NaN
again; the audit's mask-neg-1e4 cases caught that in this kernel's first version. A +inf entry
makes the shift 0 as well, so s becomes +inf and logsumexp is +inf exactly.
examples/buggy_online_softmax.py is this kernel without the guards.

Precision and special rows are builtin:triton-softmax's (triton_math): float32 work for 16-bit
and float32 inputs, float64 for float64; libdevice exp/log and correctly rounded division on a
GPU; softmax and log_softmax write NaN where the max is ±inf (undefined rows). The backward
passes are the same formulas as triton-softmax's, tiled: a pass for the row's reduction, a pass
to write dx.
"""

import torch
import triton
import triton.language as tl

from softaudit.builtins import triton_math as tm

@triton.jit
def _load(ptr, r, cols, rows, n, stride, other, WIDE: tl.constexpr):
    """A [ROWS, TILE] tile of rows r, in the working precision; lanes past the end read ``other``."""
    inside = (r[:, None] < rows) & (cols[None, :] < n)
    v = tl.load(ptr + r[:, None] * stride + cols[None, :], mask=inside, other=other)
    if WIDE:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    return v


@triton.jit
def _statistics(x_ptr, r, rows, n, stride, ROWS: tl.constexpr, TILE: tl.constexpr, WIDE: tl.constexpr,
                PRECISE: tl.constexpr):
    """Per row: (max, shift, sum of exp(x - shift)), in one pass over the tiles."""
    if WIDE:
        zero = tl.zeros((ROWS,), tl.float64)
    else:
        zero = tl.zeros((ROWS,), tl.float32)
    m = zero + float("-inf")
    ones = zero   # terms equal to 1 (entries at the current max), counted
    rest = zero   # the other terms, summed with compensation
    carry = zero  # the compensated sum's rounding error
    shift = tm.shift_of(m)
    for start in range(0, n, TILE):
        x = _load(x_ptr, r, start + tl.arange(0, TILE), rows, n, stride, float("-inf"), WIDE)
        m = tl.maximum(m, tl.max(x, axis=1))
        new_shift = tm.shift_of(m)  # guard 1: never -inf - (-inf)
        ones, rest, carry = tm.accumulate(ones, rest, carry, shift, new_shift, x, PRECISE)  # guard 2 inside
        shift = new_shift
    return m, shift, ones + rest


@triton.jit
def _forward_rows(x_ptr, out_ptr, rows, n, stride, OP: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
                  WIDE: tl.constexpr, PRECISE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    m, shift, s = _statistics(x_ptr, r, rows, n, stride, ROWS, TILE, WIDE, PRECISE)
    if OP == 2:
        tl.store(out_ptr + r, (shift + tm.log(s, PRECISE)).to(out_ptr.dtype.element_ty), mask=r < rows)
    else:
        log_s = tm.log(s, PRECISE)
        defined = tm.finite(m)
        for start in range(0, n, TILE):
            cols = start + tl.arange(0, TILE)
            x = _load(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
            if OP == 0:
                y = tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE)
            else:
                y = (x - shift[:, None]) - log_s[:, None]
            y = tl.where(defined[:, None], y, float("nan"))  # undefined rows: NaN, as torch
            inside = (r[:, None] < rows) & (cols[None, :] < n)
            tl.store(out_ptr + r[:, None] * stride + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _backward_rows(a_ptr, dy_ptr, dx_ptr, rows, n, stride, OP: tl.constexpr, ROWS: tl.constexpr,
                   TILE: tl.constexpr, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """a is y for softmax and log_softmax, x for logsumexp (whose dy is one value per row)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    if OP == 2:
        m, shift, s = _statistics(a_ptr, r, rows, n, stride, ROWS, TILE, WIDE, PRECISE)
        g = tl.load(dy_ptr + r, mask=r < rows, other=0.0)
        if WIDE:
            g = g.to(tl.float64)
        else:
            g = g.to(tl.float32)
    else:
        if WIDE:
            total = tl.zeros((ROWS,), tl.float64)
        else:
            total = tl.zeros((ROWS,), tl.float32)
        for start in range(0, n, TILE):  # sum(y dy) for softmax, sum(dy) for log_softmax
            cols = start + tl.arange(0, TILE)
            g = _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE)
            if OP == 0:
                total += tl.sum(_load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE) * g, axis=1)
            else:
                total += tl.sum(g, axis=1)
    for start in range(0, n, TILE):
        cols = start + tl.arange(0, TILE)
        if OP == 0:
            dx = _load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE) * (
                _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE) - total[:, None])
        elif OP == 1:
            dx = _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE) - tm.exp(
                _load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE), PRECISE) * total[:, None]
        else:
            x = _load(a_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
            p = tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE)
            dx = g[:, None] * tl.where(tm.finite(m)[:, None], p, float("nan"))  # an undefined row: NaN
        inside = (r[:, None] < rows) & (cols[None, :] < n)
        tl.store(dx_ptr + r[:, None] * stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.SOFTMAX, tiled=True)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.LOG_SOFTMAX, tiled=True)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.LOGSUMEXP, tiled=True)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, y, dy, tm.SOFTMAX, tiled=True)


def log_softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, y, dy, tm.LOG_SOFTMAX, tiled=True)


def logsumexp_backward(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, x, dy, tm.LOGSUMEXP, tiled=True)
