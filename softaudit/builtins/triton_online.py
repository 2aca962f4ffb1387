"""Triton online softmax: rows read in tiles of up to 16,384 elements, the max and the sum in a
single pass (Milakov and Gimelshein, 2018), for rows of any length.

Tiles (triton_math.TILES: 128, 1,024, 4,096, 16,384, with 32, 4, 1 and 1 rows a program): a
row that fits one tile is held in registers, read once and written once (the single-pass
kernel of builtin:triton-softmax); a longer row is read in 16,384-element tiles by the online
statistics pass below, then once more, tile by tile in reverse order so that the tiles read
last are still in the GPU's L2 cache, to write it. The row length is a runtime argument (lanes
past it masked), and so is the op (softmax, log_softmax, logsumexp: a branch uniform over the
program, each branch storing its own result), so a few compilations per format serve every row
length and all three ops.

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

TARGET = "builtin:triton-online"


_load = tm.load_rows


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


@triton.jit(do_not_specialize=["rows", "op"])
def _forward_rows(x_ptr, out_ptr, rows, n, stride, op, ROWS: tl.constexpr, TILE: tl.constexpr,
                  SINGLE: tl.constexpr, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    if SINGLE:  # the row fits one tile: in registers, read once
        cols = tl.arange(0, TILE)
        x = _load(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
        tm.write_rows(x_ptr, out_ptr, x, r, cols, rows, n, stride, op, WIDE, PRECISE)
    else:
        m, shift, s = _statistics(x_ptr, r, rows, n, stride, ROWS, TILE, WIDE, PRECISE)
        if op == 2:
            tl.store(out_ptr + r, (shift + tm.log(s, PRECISE)).to(out_ptr.dtype.element_ty), mask=r < rows)
        else:
            log_s = tm.log(s, PRECISE)
            defined = tm.finite(m)
            tiles = tl.cdiv(n, TILE)
            for i in range(tiles):
                cols = (tiles - 1 - i) * TILE + tl.arange(0, TILE)  # last tile first: still in L2
                x = _load(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
                if op == 0:
                    y = tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE)
                    tm.store_rows(out_ptr, tl.where(defined[:, None], y, float("nan")), r, cols, rows, n, stride)
                else:
                    y = (x - shift[:, None]) - log_s[:, None]
                    tm.store_rows(out_ptr, tl.where(defined[:, None], y, float("nan")), r, cols, rows, n, stride)


@triton.jit(do_not_specialize=["rows", "op"])
def _backward_rows(a_ptr, dy_ptr, dx_ptr, rows, n, stride, op, ROWS: tl.constexpr, TILE: tl.constexpr,
                   SINGLE: tl.constexpr, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """a is y for softmax and log_softmax, x for logsumexp (whose dy is one value per row)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    if SINGLE:  # the row fits one tile: in registers, read once
        tm.write_gradient_rows(a_ptr, dy_ptr, dx_ptr, r, tl.arange(0, TILE), rows, n, stride, op, WIDE, PRECISE)
    else:
        tiles = tl.cdiv(n, TILE)
        if op == 2:
            m, shift, s = _statistics(a_ptr, r, rows, n, stride, ROWS, TILE, WIDE, PRECISE)
            g = tl.load(dy_ptr + r, mask=r < rows, other=0.0)
            if WIDE:
                g = g.to(tl.float64)
            else:
                g = g.to(tl.float32)
            for i in range(tiles):
                cols = (tiles - 1 - i) * TILE + tl.arange(0, TILE)  # last tile first: still in L2
                x = _load(a_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
                p = tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE)
                dx = g[:, None] * tl.where(tm.finite(m)[:, None], p, float("nan"))  # an undefined row: NaN
                tm.store_rows(dx_ptr, dx, r, cols, rows, n, stride)
        else:
            if WIDE:
                total = tl.zeros((ROWS,), tl.float64)
            else:
                total = tl.zeros((ROWS,), tl.float32)
            for start in range(0, n, TILE):  # sum(y dy) for softmax, sum(dy) for log_softmax
                cols = start + tl.arange(0, TILE)
                if op == 0:
                    total += tl.sum(_load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE)
                                    * _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE), axis=1)
                else:
                    total += tl.sum(_load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE), axis=1)
            for i in range(tiles):
                cols = (tiles - 1 - i) * TILE + tl.arange(0, TILE)  # last tile first: still in L2
                if op == 0:
                    dx = _load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE) * (
                        _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE) - total[:, None])
                    tm.store_rows(dx_ptr, dx, r, cols, rows, n, stride)
                else:
                    dx = _load(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE) - tm.exp(
                        _load(a_ptr, r, cols, rows, n, stride, 0.0, WIDE), PRECISE) * total[:, None]
                    tm.store_rows(dx_ptr, dx, r, cols, rows, n, stride)


def forward(x: torch.Tensor, op: int, target: str = TARGET, tile: int | None = None) -> torch.Tensor:
    """The forward kernel over x (rows x n); ``tile`` overrides the tile (one of triton_math.TILES
    or another power of two: tests force several tiles on short rows)."""
    n = x.shape[-1]
    tile = tile or tm.tile_for(n)
    return tm.forward(target, _forward_rows, x, op, tile, TILE=tile, SINGLE=n <= tile)


def backward(a: torch.Tensor, dy: torch.Tensor, op: int, target: str = TARGET, tile: int | None = None) -> torch.Tensor:
    """The backward kernel (a: y, or x for logsumexp); ``tile`` as for ``forward``."""
    n = a.shape[-1]
    tile = tile or tm.tile_for(n)
    return tm.backward(target, _backward_rows, a, dy, op, tile, TILE=tile, SINGLE=n <= tile)


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
