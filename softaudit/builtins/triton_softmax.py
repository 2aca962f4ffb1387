"""Triton softmax, log_softmax and logsumexp: the whole row in registers.

The simplest fused kernel, and the one the Triton tutorial starts from: a program loads its
row once (padding lanes with -inf), takes the max, sums exp(x - max) with a tree reduction
(the terms equal to 1, the max's own, counted apart: triton_math.split_sum), and writes the row
once, dividing the very terms it summed: one read and one write per element, the least a
softmax can move. What it changes from the tutorial:

- bounded compilations: the block is the smallest of 128, 1,024, 4,096, 16,384 and 32,768 that
  holds the row (triton_math.ROW_BLOCKS; 16,384 at most in float64), not next_power_of_2(n),
  and the row length is a runtime argument with the lanes past it masked, so every row length
  shares a handful of compiled kernels per format;
- the op (softmax, log_softmax, logsumexp) is a runtime argument too, not a constexpr: one
  compiled kernel serves the three (a branch uniform over the program, each branch storing its
  own result), a third of the compilations of a constexpr op;
- short rows several to a program (a [rows, block] tile of 4,096 elements: 32 rows of up to
  128, 4 of up to 1,024), longer rows one per program; num_warps by the program's size (8 for
  4,096 elements, 32 for 16,384 and 32,768: 32 float32 a thread, triton_math.warps_for);
- rows longer than the largest block go to builtin:triton-online's tiled kernel (an online
  statistics pass, then a normalising pass that reads the row again, its last tiles first,
  from the L2 cache where they are still there).

What it adds to the tutorial, and what a kernel must get right to pass the audit:

- float32 arithmetic for 16-bit inputs, float64 for float64 (triton_math: the sums of a
  128k-wide vocabulary saturate and lose bits in 16 bits);
- libdevice exp/log and correctly rounded division on a GPU (triton_math: ``tl.exp`` is
  ex2.approx, off by ~|x - max| ulps);
- special rows: a max of ±inf (a fully masked row, or +inf present) shifts by 0, so
  logsumexp is -inf or +inf exactly, and softmax/log_softmax write NaN there (undefined,
  as torch does); NaN propagates through the sum.

The backward passes are kernels of the same shape (triton_math.write_gradient_rows): softmax
dx = y (dy - sum(y dy)), log_softmax dx = dy - exp(y) sum(dy), logsumexp dx = dy softmax(x)
(from x: exp(x - y) with y rounded into a 16-bit format would be off by up to exp(ulp(y) / 2)).

Inputs are torch tensors on a CUDA device, or on the CPU under
TRITON_INTERPRET=1 (softaudit sets it when no GPU is present).
"""

import torch
import triton
import triton.language as tl

from softaudit.builtins import triton_math as tm
from softaudit.builtins import triton_online

TARGET = "builtin:triton-softmax"


@triton.jit(do_not_specialize=["rows", "op"])
def _forward_rows(x_ptr, out_ptr, rows, n, stride, op, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                  WIDE: tl.constexpr, PRECISE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's rows
    cols = tl.arange(0, BLOCK)
    x = tm.load_rows(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
    tm.write_rows(x_ptr, out_ptr, x, r, cols, rows, n, stride, op, WIDE, PRECISE)


@triton.jit(do_not_specialize=["rows", "op"])
def _backward_rows(a_ptr, dy_ptr, dx_ptr, rows, n, stride, op, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                   WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """a is y for softmax and log_softmax, x for logsumexp (whose dy is one value per row)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    tm.write_gradient_rows(a_ptr, dy_ptr, dx_ptr, r, tl.arange(0, BLOCK), rows, n, stride, op, WIDE, PRECISE)


def forward(x: torch.Tensor, op: int, block: int | None = None) -> torch.Tensor:
    """The whole-row kernel over x (rows x n), or triton-online's tiled one for rows longer than
    the largest block; ``block`` overrides the block (a power of two holding the row)."""
    block = block or tm.block_for(x.shape[-1], x)
    if block is None:
        return triton_online.forward(x, op, target=TARGET)
    return tm.forward(TARGET, _forward_rows, x, op, block, BLOCK=block)


def backward(a: torch.Tensor, dy: torch.Tensor, op: int) -> torch.Tensor:
    block = tm.block_for(a.shape[-1], a)
    if block is None:
        return triton_online.backward(a, dy, op, target=TARGET)
    return tm.backward(TARGET, _backward_rows, a, dy, op, block, BLOCK=block)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return forward(x, tm.SOFTMAX)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return forward(x, tm.LOG_SOFTMAX)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return forward(x, tm.LOGSUMEXP)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return backward(y, dy, tm.SOFTMAX)


def log_softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return backward(y, dy, tm.LOG_SOFTMAX)


def logsumexp_backward(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return backward(x, dy, tm.LOGSUMEXP)
