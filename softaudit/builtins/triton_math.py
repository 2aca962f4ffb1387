"""Pieces shared by the Triton built-ins: the working precision, an accurate exp, log and
division, and the host-side launch helpers.

Why not plain ``tl.exp``: on NVIDIA GPUs Triton lowers float32 ``tl.exp(z)`` to
``ex2.approx.f32(z * log2(e))``. Rounding the product costs a relative error of about
|z| u in the result, so exp(x - max) of an entry 80 below the max is off by ~80 ulps: more
than a textbook softmax loses (docs/envelope.md#the-model envelope: u (log2 n + 3) when x - max is exact),
and the audit would flag the tail of every confident row. ``libdevice.exp`` (CUDA's
``expf``, within 2 ulps at any argument), ``libdevice.log`` and the correctly rounded
``tl.div_rn`` keep the kernels within the envelope. Triton's CPU interpreter has no libdevice
(its ``tl.exp``, ``tl.log`` and ``/`` are numpy's, already accurate), so ``PRECISE`` is a
compile-time switch: True on a GPU, False when interpreted.

Working precision: float32 for float32 and 16-bit inputs (16-bit sums saturate), float64 for
float64 (``WIDE``); one rounding back into the input's format on the store.
"""

import os
import re
import time
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from softaudit.candidates import kernels

ROW_BLOCKS = (128, 1024, 4096, 16384, 32768)
"""The blocks a whole row is held in (builtin:triton-softmax): a row of n elements takes the
smallest that holds it. A handful of compilations per kernel and format, whatever the row
lengths and the op; the row length and the op are runtime arguments, and the lanes past the row
are masked."""

WIDE_MAX_BLOCK = 16384
"""The largest whole-row block in float64 (twice the registers of float32)."""

TILES = (128, 1024, 4096, 16384)
"""The tiles of the tiled kernels (builtin:triton-online, builtin:triton-ce): a row that fits
one is held in registers (one read); a longer row is read in tiles of the largest, twice."""

PROGRAM_ELEMENTS = 4096
"""Short rows are handled several to a program, as a [rows, block] tile of this many elements:
one program per 8-element row would leave most of a GPU's lanes idle (and, under the CPU
interpreter, whose cost is per program, take 1,024 programs for 1,024 rows). The rows per program
follow from the block alone (not from the row count), so they add no compilations."""

ELEMENTS_PER_THREAD = 16
"""num_warps: enough threads for about this many float32 elements each (8 float64), from 4 to 32
warps: 8 warps for a 4,096-element program, 32 for 16,384 and 32,768 (32 float32 a thread)."""


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
def split_sum(e):
    """For a [ROWS, COLS] tile of terms e = exp(x - shift): (ones, rest), the row sums of the terms
    equal to 1 (counted) and of the others. Entries at the row's max contribute exactly 1 each:
    they are counted, not summed, and only the smaller terms go through the rounded sum. In a
    confident row (one term 1, 999 terms of 1e-6) a plain sum adds the small terms into 1 one at
    a time in places, each addition rounding at 1's scale: numpy's float64 sum was 11 ulps off
    there, 13 for the same row padded to 1,024; counted apart, about one. A row of equal entries
    (a uniform row) sums exactly. (A term that rounds to 1 without being at the max is 1 all the
    same: counting it is exact.)"""
    top = e == 1.0
    ones = tl.sum(top.to(e.dtype), axis=1)
    rest = tl.sum(tl.where(top, 0.0, e), axis=1)
    return ones, rest


@triton.jit
def exp_sum(x, shift, PRECISE: tl.constexpr):
    """split_sum of exp(x - shift) for a tile x and each row's shift."""
    return split_sum(exp(x - shift[:, None], PRECISE))


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


@triton.jit
def load_rows(ptr, r, cols, rows, n, stride, other, WIDE: tl.constexpr):
    """A [ROWS, COLS] tile of rows r, in the working precision; lanes past the end read ``other``."""
    inside = (r[:, None] < rows) & (cols[None, :] < n)
    v = tl.load(ptr + r[:, None] * stride + cols[None, :], mask=inside, other=other)
    if WIDE:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    return v


@triton.jit
def store_rows(ptr, v, r, cols, rows, n, stride):
    """Store a [ROWS, COLS] tile v at rows r, columns cols (masked past the rows' end), rounded
    into the output's format."""
    inside = (r[:, None] < rows) & (cols[None, :] < n)
    tl.store(ptr + r[:, None] * stride + cols[None, :], v.to(ptr.dtype.element_ty), mask=inside)


@triton.jit
def write_rows(x_ptr, out_ptr, x, r, cols, rows, n, stride, op, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """The single pass over whole rows held in registers: x is a [ROWS, BLOCK] tile (lanes past the
    row: -inf) read from x_ptr; computes the op and writes it (one read and one write per element
    in all). Each exp is taken once: softmax divides the very terms it summed. ``op`` (SOFTMAX,
    LOG_SOFTMAX, LOGSUMEXP) is a runtime scalar, uniform over the program: the three ops share one
    compiled kernel, and each branch stores its own result (no tile leaves a branch). log_softmax
    reads its row again (from the L2 cache, just read) rather than keeping x beside the exps
    through the branch: with both live, a 32,768-element row (32 a thread) overflows the 64
    registers a thread has at 1,024 threads, and softmax fell from 75% to 51% of the copy
    bandwidth on an H200 (2026-12-04)."""
    m = tl.max(x, axis=1)
    shift = shift_of(m)
    e = exp(x - shift[:, None], PRECISE)  # padding lanes: exp(-inf) = 0
    ones, rest = split_sum(e)
    s = ones + rest
    if op == 2:  # logsumexp: -inf for a fully masked row (s = 0), +inf with a +inf entry
        tl.store(out_ptr + r, (shift + log(s, PRECISE)).to(out_ptr.dtype.element_ty), mask=r < rows)
    elif op == 0:
        y = div(e, s[:, None], WIDE)
        store_rows(out_ptr, tl.where(finite(m)[:, None], y, float("nan")), r, cols, rows, n, stride)  # undefined rows: NaN, as torch
    else:
        z = load_rows(x_ptr, r, cols, rows, n, stride, float("-inf"), WIDE) - shift[:, None]
        y = z - log(s, PRECISE)[:, None]
        store_rows(out_ptr, tl.where(finite(m)[:, None], y, float("nan")), r, cols, rows, n, stride)


@triton.jit
def write_gradient_rows(a_ptr, dy_ptr, dx_ptr, r, cols, rows, n, stride, op, WIDE: tl.constexpr,
                        PRECISE: tl.constexpr):
    """The backward pass over whole rows in registers, [ROWS, BLOCK] tiles: a is y (softmax,
    log_softmax; lanes past the row 0) or x (logsumexp, whose dy is one value per row; lanes
    past the row -inf). softmax dx = y (dy - sum(y dy)), log_softmax dx = dy - exp(y) sum(dy),
    logsumexp dx = dy softmax(x) (from x: exp(x - y) with y rounded into a 16-bit format would be
    off by up to exp(ulp(y) / 2)). ``op`` is a runtime scalar, as in ``write_rows``."""
    if op == 2:
        a = load_rows(a_ptr, r, cols, rows, n, stride, float("-inf"), WIDE)
        g = tl.load(dy_ptr + r, mask=r < rows, other=0.0)
        if WIDE:
            g = g.to(tl.float64)
        else:
            g = g.to(tl.float32)
        m = tl.max(a, axis=1)
        e = exp(a - m[:, None], PRECISE)  # plain max: an undefined row comes out NaN
        ones, rest = split_sum(e)
        store_rows(dx_ptr, g[:, None] * div(e, (ones + rest)[:, None], WIDE), r, cols, rows, n, stride)
    elif op == 0:
        y = load_rows(a_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        dy = load_rows(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        store_rows(dx_ptr, y * (dy - tl.sum(y * dy, axis=1)[:, None]), r, cols, rows, n, stride)
    else:
        y = load_rows(a_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        dy = load_rows(dy_ptr, r, cols, rows, n, stride, 0.0, WIDE)
        store_rows(dx_ptr, dy - exp(y, PRECISE) * tl.sum(dy, axis=1)[:, None], r, cols, rows, n, stride)


def wide(x: torch.Tensor) -> bool:
    """Work in float64 (float64 input) rather than float32."""
    return x.dtype == torch.float64


def precise(x: torch.Tensor) -> bool:
    """Use libdevice (compiled for a GPU) rather than numpy's functions (the CPU interpreter)."""
    return x.device.type != "cpu" and os.environ.get("TRITON_INTERPRET") != "1"


SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = 0, 1, 2
"""The row kernels' ``op``: which op a launch computes. A runtime argument (``do_not_specialize``:
Triton would otherwise compile op == 1 and op % 16 == 0 apart), so the three ops share their
compilations."""


def block_for(n: int, x: torch.Tensor) -> int | None:
    """The whole-row block for rows of n elements (ROW_BLOCKS), or None when the row is longer
    than the largest (WIDE_MAX_BLOCK in float64): such rows go to a tiled kernel."""
    limit = WIDE_MAX_BLOCK if wide(x) else ROW_BLOCKS[-1]
    return next((b for b in ROW_BLOCKS if b >= n and b <= limit), None)


def tile_for(n: int) -> int:
    """The tile of the tiled kernels for rows of n elements: the smallest of TILES holding the
    row, else the largest (the row is then read in several tiles)."""
    return next((t for t in TILES if t >= n), TILES[-1])


def rows_per_program(block: int) -> int:
    """How many rows one program takes: PROGRAM_ELEMENTS // block, at least one."""
    return max(1, PROGRAM_ELEMENTS // block)


def warps_for(elements: int, x: torch.Tensor) -> int:
    """num_warps for a program of ``elements`` lanes (ELEMENTS_PER_THREAD)."""
    per_thread = ELEMENTS_PER_THREAD // 2 if wide(x) else ELEMENTS_PER_THREAD
    return int(min(32, max(4, elements // (32 * per_thread))))


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


# --------------------------------------------------------------------------
# Launching, with the compilations counted (softaudit.candidates.kernels)

_variants: set[tuple] = set()


def launch(target: str, kernel: Any, grid_: tuple[int, ...], args: tuple, n: int, num_warps: int,
           **constexprs: Any) -> None:
    """``kernel[grid_](*args, **constexprs)`` with num_warps, noting a new compilation
    (softaudit.candidates.kernels.note): on a GPU when Triton's cache of compiled kernels grows (the launch's
    time is the compilation's, as the launch is asynchronous); under the interpreter, the first
    launch of each variant (kernel, constexprs, the tensors' dtypes, num_warps, and n's
    specialisation: Triton compiles n == 1 and n divisible by 16 apart, so the count is what a GPU
    would compile). ``target`` is the built-in that launched it."""
    interpreted = type(kernel).__name__ == "InterpretedFunction"
    before = None if interpreted else _compiled(kernel)
    start = time.perf_counter()
    with quiet():
        kernel[grid_](*args, num_warps=num_warps, **constexprs)
    seconds = time.perf_counter() - start
    if before is not None:
        after = _compiled(kernel)
        if after is not None and after > before:
            kernels.note(target, _name(kernel), _signature(args, n, num_warps, constexprs), seconds, False)
        return
    key = (_name(kernel), _signature(args, n, num_warps, constexprs))
    if key not in _variants:
        _variants.add(key)
        kernels.note(target, key[0], key[1], seconds, interpreted)


def _compiled(kernel: Any) -> int | None:
    """How many variants Triton has compiled of ``kernel`` (its per-device caches), or None when
    that cannot be read (an interpreted kernel, another Triton version)."""
    try:
        return sum(len(cache[0]) for cache in kernel.device_caches.values())
    except (AttributeError, TypeError, IndexError, KeyError):
        return None


def _name(kernel: Any) -> str:
    fn = getattr(kernel, "fn", kernel)
    module = re.sub(r"^_softaudit_target_\d+_", "", fn.__module__.rsplit(".", 1)[-1])  # the loader's prefix
    return f"{module}.{fn.__name__}"


def _signature(args: tuple, n: int, num_warps: int, constexprs: dict) -> str:
    dtypes = sorted({str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)})
    spec = "n=1" if n == 1 else ("n%16=0" if n % 16 == 0 else "n%16>0")
    consts = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in sorted(constexprs.items()))
    return f"{'/'.join(dtypes)}; {consts}; num_warps={num_warps}; {spec}"


def forward(target: str, kernel: Any, x: torch.Tensor, op: int, width: int, **constexprs: Any) -> torch.Tensor:
    """Launch a forward row kernel ``kernel(x, out, rows, n, stride, op, ROWS, <width>, WIDE,
    PRECISE, **constexprs)`` over x (rows x n) and return its output: a row like x, or a value per
    row. ``width``: the block or tile (its constexpr's name is in ``constexprs``' caller)."""
    x = rows_of(x)
    rows, n = x.shape
    out = torch.empty(rows, dtype=x.dtype, device=x.device) if op == LOGSUMEXP else torch.empty_like(x)
    _rows_launch(target, kernel, (x, out), x, op, width, constexprs)
    return out


def backward(target: str, kernel: Any, a: torch.Tensor, dy: torch.Tensor, op: int, width: int,
             **constexprs: Any) -> torch.Tensor:
    """Launch a backward row kernel ``kernel(a, dy, dx, rows, n, stride, op, ...)`` (a: y, or x for
    logsumexp) and return dx."""
    a = rows_of(a)
    dx = torch.empty_like(a)
    _rows_launch(target, kernel, (a, dy.contiguous(), dx), a, op, width, constexprs)
    return dx


def _rows_launch(target: str, kernel: Any, tensors: tuple, x: torch.Tensor, op: int, width: int,
                 constexprs: dict) -> None:
    rows, n = x.shape
    if not rows:
        return
    per = rows_per_program(width)
    launch(target, kernel, grid(rows, per), (*tensors, rows, n, x.stride(0), op), n, warps_for(per * width, x),
           ROWS=per, WIDE=wide(x), PRECISE=precise(x), **constexprs)
