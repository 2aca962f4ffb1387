"""Triton softmax, log_softmax and logsumexp: the whole row in registers.

The simplest fused kernel, and the one the Triton tutorial starts from: a program loads its
row once (padding lanes with -inf), takes the max, sums exp(x - max) with a tree reduction
(the max's own terms, exactly 1, counted apart: triton_math.exp_sum), and writes the row once. Short rows go several to a program (a [rows, row block] tile of at
most 4,096 elements, triton_math.rows_per_program), long rows one per program. What it adds to the tutorial, and what a kernel must
get right to pass the audit:

- float32 arithmetic for 16-bit inputs, float64 for float64 (triton_math: the sums of a
  128k-wide vocabulary saturate and lose bits in 16 bits);
- libdevice exp/log and correctly rounded division on a GPU (triton_math: ``tl.exp`` is
  ex2.approx, off by ~|x - max| ulps);
- special rows: a max of ±inf (a fully masked row, or +inf present) shifts by 0, so
  logsumexp is -inf or +inf exactly, and softmax/log_softmax write NaN there (undefined,
  as torch does); NaN propagates through the sum.

The backward passes are kernels of the same shape: softmax dx = y (dy - sum(y dy)),
log_softmax dx = dy - exp(y) sum(dy), logsumexp dx = dy softmax(x) (from x: exp(x - y)
with y rounded into a 16-bit format would be off by up to exp(ulp(y) / 2)).

Rows are limited to Triton's largest block (2^20 elements); builtin:triton-online tiles
longer rows. Inputs are torch tensors on a CUDA device, or on the CPU under
TRITON_INTERPRET=1 (softaudit sets it when no GPU is present).
"""

import torch
import triton
import triton.language as tl

from softaudit.builtins import triton_math as tm

@triton.jit
def _load_rows(ptr, r, cols, rows, n, stride, other, WIDE: tl.constexpr):
    """A [ROWS, BLOCK] tile of rows r, in the working precision; lanes past the end read ``other``."""
    inside = (r[:, None] < rows) & (cols[None, :] < n)
    v = tl.load(ptr + r[:, None] * stride + cols[None, :], mask=inside, other=other)
    if WIDE:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    return v


@triton.jit
def _forward_rows(x_ptr, out_ptr, rows, n, stride, OP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                  WIDE: tl.constexpr, PRECISE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's rows
    cols = tl.arange(0, BLOCK)
    x = _load_rows(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
    m = tl.max(x, axis=1)
    shift = tm.shift_of(m)
    ones, rest = tm.exp_sum(x, shift, PRECISE)  # padding lanes: exp(-inf) = 0
    s = ones + rest
    if OP == 2:  # logsumexp: -inf for a fully masked row (s = 0), +inf with a +inf entry
        tl.store(out_ptr + r, (shift + tm.log(s, PRECISE)).to(out_ptr.dtype.element_ty), mask=r < rows)
    else:
        if OP == 0:
            y = tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE)
        else:
            y = (x - shift[:, None]) - tm.log(s, PRECISE)[:, None]
        y = tl.where(tm.finite(m)[:, None], y, float("nan"))  # undefined rows: NaN, as torch
        inside = (r[:, None] < rows) & (cols[None, :] < n)
        tl.store(out_ptr + r[:, None] * stride + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _backward_rows(a_ptr, dy_ptr, dx_ptr, rows, n, stride, OP: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK: tl.constexpr, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """a is y for softmax and log_softmax, x for logsumexp (whose dy is one value per row)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    if OP == 2:
        a = _load_rows(a_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
        g = tl.load(dy_ptr + r, mask=r < rows, other=0.0)
        if WIDE:
            g = g.to(tl.float64)
        else:
            g = g.to(tl.float32)
        m = tl.max(a, axis=1)
        ones, rest = tm.exp_sum(a, m, PRECISE)  # plain max: an undefined row comes out NaN
        dx = g[:, None] * tm.div(tm.exp(a - m[:, None], PRECISE), (ones + rest)[:, None], WIDE)
    else:
        a = _load_rows(a_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        g = _load_rows(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        if OP == 0:
            dx = a * (g - tl.sum(a * g, axis=1)[:, None])
        else:
            dx = g - tm.exp(a, PRECISE) * tl.sum(g, axis=1)[:, None]
    inside = (r[:, None] < rows) & (cols[None, :] < n)
    tl.store(dx_ptr + r[:, None] * stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.SOFTMAX, tiled=False)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.LOG_SOFTMAX, tiled=False)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return tm.forward(_forward_rows, x, tm.LOGSUMEXP, tiled=False)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, y, dy, tm.SOFTMAX, tiled=False)


def log_softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, y, dy, tm.LOG_SOFTMAX, tiled=False)


def logsumexp_backward(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return tm.backward(_backward_rows, x, dy, tm.LOGSUMEXP, tiled=False)
