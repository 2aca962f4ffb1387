"""Pieces shared by the Triton built-ins: the working precision, an accurate exp, log and
division, and the host-side launch helpers.

Why not plain ``tl.exp``: on NVIDIA GPUs Triton lowers float32 ``tl.exp(z)`` to
``ex2.approx.f32(z * log2(e))``. Rounding the product costs a relative error of about
|z| u in the result, so exp(x - max) of an entry 80 below the max is off by ~80 ulps: more
than a textbook softmax loses (DESIGN §6 envelope: u (log2 n + 3) when x - max is exact),
and the audit would flag the tail of every confident row. ``libdevice.exp`` (CUDA's
``expf``, within 2 ulps at any argument), ``libdevice.log`` and the correctly rounded
``tl.div_rn`` keep the kernels within the envelope. Triton's CPU interpreter has no libdevice
(its ``tl.exp``, ``tl.log`` and ``/`` are numpy's, already accurate), so ``PRECISE`` is a
compile-time switch: True on a GPU, False when interpreted.

Working precision: float32 for float32 and 16-bit inputs (16-bit sums saturate), float64 for
float64 (``WIDE``); one rounding back into the input's format on the store.
"""

import os
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

MAX_BLOCK = 1 << 20
"""Triton's largest block (TRITON_MAX_TENSOR_NUMEL): the longest row a whole-row kernel holds."""

TILE = 4096
"""Longest tile of a row in the tiled kernels (a power of two; 16 float32 per thread at 8 warps)."""

PROGRAM_ELEMENTS = 4096
"""Short rows are handled several to a program, as a [rows, row block] tile of at most this
many elements: one program per 8-element row would leave most of a GPU's lanes idle (and,
under the CPU interpreter, whose cost is per program, take 1,024 programs for 1,024 rows)."""


@triton.jit
def exp(z, PRECISE: tl.constexpr):
    """exp(z), within 2 ulps on a GPU (libdevice), numpy's exp when interpreted."""
    if PRECISE:
        r = libdevice.exp(z)
    else:
        r = tl.exp(z)
    return r


@triton.jit
def log(z, PRECISE: tl.constexpr):
    """log(z), within 1 ulp on a GPU (libdevice), numpy's log when interpreted."""
    if PRECISE:
        r = libdevice.log(z)
    else:
        r = tl.log(z)
    return r


@triton.jit
def div(a, b, WIDE: tl.constexpr):
    """a / b correctly rounded: float32 division is approximate by default on a GPU."""
    if WIDE:
        r = a / b  # float64 division is IEEE (div.rn.f64)
    else:
        r = tl.div_rn(a, b)
    return r


@triton.jit
def finite(v):
    """v is neither ±inf nor NaN."""
    return (v > float("-inf")) & (v < float("inf"))


@triton.jit
def shift_of(m):
    """The shift for exp(x - shift): the row max, or 0 when the max is ±inf or NaN, so that a
    fully masked row gives exp(-inf) = 0 terms (not -inf - (-inf) = NaN) and a row holding +inf
    gives an infinite sum (logsumexp = +inf, as the exact answer)."""
    return tl.where(finite(m), m, 0.0)


@triton.jit
def exp_sum(x, shift, PRECISE: tl.constexpr):
    """For a [ROWS, COLS] tile and each row's shift: (ones, rest), where sum exp(x - shift) =
    ones + rest. Entries equal to the shift (the row's max) contribute exactly 1 each: they are
    counted, not summed, and only the smaller terms go through the rounded sum. In a confident
    row (one term 1, 999 terms of 1e-6) a plain sum adds the small terms into 1 one at a time in
    places, each addition rounding at 1's scale: numpy's float64 sum was 11 ulps off there, 13
    for the same row padded to 1,024; counted apart, about one. A row of equal entries (a
    uniform row) sums exactly."""
    top = x == shift[:, None]
    e = exp(x - shift[:, None], PRECISE)
    ones = tl.sum(top.to(e.dtype), axis=1)
    rest = tl.sum(tl.where(top, 0.0, e), axis=1)
    return ones, rest


@triton.jit
def accumulate(ones, rest, carry, shift, new_shift, x, PRECISE: tl.constexpr):
    """One tile of the online sum: the running (ones, rest, carry) re-expressed against the new
    shift when the max moved (the counted ones become ordinary terms, times exp(shift -
    new_shift); an empty sum stays 0, see ``rescale``), then the tile's own exp_sum added, its
    rest with compensation. The row's sum is ones + rest at the end."""
    moved = new_shift != shift
    old = rescale(rest + ones, shift, new_shift, PRECISE)
    rest = tl.where(moved, old, rest)
    carry = tl.where(moved, rescale(carry, shift, new_shift, PRECISE), carry)
    ones = tl.where(moved, 0.0, ones)
    tile_ones, tile_rest = exp_sum(x, new_shift, PRECISE)
    rest, carry = compensated_add(rest, carry, tile_rest)
    return ones + tile_ones, rest, carry


@triton.jit
def compensated_add(total, carry, term):
    """Kahan's step: total + term with the rounding error kept in carry (returned as a pair). The
    online kernels add one partial sum per tile; summed plainly, the 126 tile sums of a
    128,256-wide row lost 20 ulps (twice the envelope); compensated, about one."""
    y = term - carry
    t = total + y
    return t, tl.where(finite(t), (t - total) - y, 0.0)  # an infinite total (a +inf entry) stays so


@triton.jit
def rescale(s, shift, new_shift, PRECISE: tl.constexpr):
    """s = sum exp(x - shift) re-expressed against new_shift: s exp(shift - new_shift). An empty sum
    stays 0: after fully masked tiles the shift is 0, and a first finite max of -1e4 would make
    the factor exp(1e4) = inf and 0 x inf = NaN (NaN in s still propagates)."""
    return tl.where(s == 0, s, s * exp(shift - new_shift, PRECISE))


def wide(x: torch.Tensor) -> bool:
    """Work in float64 (float64 input) rather than float32."""
    return x.dtype == torch.float64


def precise(x: torch.Tensor) -> bool:
    """Use libdevice (compiled for a GPU) rather than numpy's functions (the CPU interpreter)."""
    return x.device.type != "cpu" and os.environ.get("TRITON_INTERPRET") != "1"


SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = 0, 1, 2
"""The row kernels' OP: which op a launch computes."""


def forward(kernel: Any, x: torch.Tensor, op: int, tiled: bool) -> torch.Tensor:
    """Launch a forward row kernel ``kernel(x, out, rows, n, stride, OP, ROWS, BLOCK or TILE, WIDE,
    PRECISE)`` over x (rows x n) and return its output: a row like x, or a value per row."""
    x = rows_of(x)
    rows, n = x.shape
    out = torch.empty(rows, dtype=x.dtype, device=x.device) if op == LOGSUMEXP else torch.empty_like(x)
    _launch(kernel, (x, out), x, op, tiled)
    return out


def backward(kernel: Any, a: torch.Tensor, dy: torch.Tensor, op: int, tiled: bool) -> torch.Tensor:
    """Launch a backward row kernel ``kernel(a, dy, dx, rows, n, stride, OP, ...)`` (a: y, or x for
    logsumexp) and return dx."""
    a = rows_of(a)
    dx = torch.empty_like(a)
    _launch(kernel, (a, dy.contiguous(), dx), a, op, tiled)
    return dx


def _launch(kernel: Any, tensors: tuple, x: torch.Tensor, op: int, tiled: bool) -> None:
    """One launch: a whole row per block (``BLOCK``), or tiles of up to TILE (``TILE``); short
    rows several to a program."""
    rows, n = x.shape
    if not rows:
        return
    width = tile_for(n) if tiled else block_for(n)
    per = rows_per_program(rows, width)
    size = {"TILE" if tiled else "BLOCK": width}
    with quiet():
        kernel[grid(rows, per)](*tensors, rows, n, x.stride(0), OP=op, ROWS=per, WIDE=wide(x), PRECISE=precise(x),
                                **size)


def block_for(n: int) -> int:
    """The power-of-two block holding a whole row of n elements."""
    block = triton.next_power_of_2(max(n, 1))
    if block > MAX_BLOCK:
        raise ValueError(f"rows of {n} elements exceed Triton's largest block ({MAX_BLOCK}); use a tiled kernel")
    return block


def tile_for(n: int) -> int:
    """The tile of the tiled kernels for rows of n elements: the row's block, at most TILE."""
    return min(TILE, triton.next_power_of_2(max(n, 1)))


def rows_per_program(rows: int, block: int) -> int:
    """How many rows one program takes: a power of two, within PROGRAM_ELEMENTS for the tile."""
    return max(1, min(triton.next_power_of_2(max(rows, 1)), PROGRAM_ELEMENTS // block))


def grid(rows: int, per_program: int) -> tuple[int]:
    """The launch grid: enough programs for every row."""
    return (triton.cdiv(rows, per_program),)


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """x as a contiguous 2-D tensor (rows x n); the kernels index rows by a stride."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor (rows x n), got shape {tuple(x.shape)}")
    return x.contiguous()


def quiet() -> np.errstate:
    """Around a launch: the CPU interpreter runs the kernel in numpy, which warns on exp(-inf -
    (-inf)) and 0/0 where the kernel's own tl.where already settles the row."""
    return np.errstate(all="ignore")
