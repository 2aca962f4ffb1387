"""A fused online softmax in Triton with a classic bug: the running max starts at -inf, unguarded.

Run it:  softaudit run examples/buggy_online_softmax.py
(without a GPU softaudit runs it under Triton's CPU interpreter; see the README's walk-through).

The kernel reads each row in tiles of TILE elements, keeping a running max m and a running sum
s = sum exp(x - m), rescaled whenever a tile raises the max:

    m_new = max(m, max(tile));  s = s * exp(m - m_new) + sum(exp(tile - m_new))

It passes torch.randn tests. The bug: while every tile seen so far is fully masked (-inf),
m_new is -inf too, and exp(m - m_new) = exp(-inf - (-inf)) = exp(NaN). One fully masked tile at
the start of a row (left padding longer than a tile) turns the whole row NaN, although the row
has finite entries and a well-defined softmax; and a fully masked row gives logsumexp NaN
instead of -inf. builtin:triton-online is the fixed kernel: the shift is 0 while the max is
not finite, and an empty sum is never rescaled (softaudit/builtins/triton_online.py).

The library's mask-prefix-long case (rows of 4096 whose first 3072 entries are -inf) has
three fully masked tiles of 1024 in front; any row whose padding covers a whole tile triggers
the bug, whatever the tile size. Everything else is done right (float32 work for 16-bit and
float32 inputs, float64 for float64), so its FAILs are this bug's alone.
"""

import torch
import triton
import triton.language as tl

TILE = 1024


@triton.jit
def _online_softmax_rows(x_ptr, out_ptr, n, stride, OP: tl.constexpr, TILE: tl.constexpr, WIDE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * stride
    work = tl.float64 if WIDE else tl.float32
    m = tl.full((), float("-inf"), work)  # the running max starts at -inf ...
    s = tl.zeros((), work)
    for start in range(0, n, TILE):
        cols = start + tl.arange(0, TILE)
        x = tl.load(base + cols, mask=cols < n, other=float("-inf")).to(work)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)  # ... BUG: -inf - (-inf) = NaN
        m = m_new
    if OP == 2:
        tl.store(out_ptr + row, (m + tl.log(s)).to(out_ptr.dtype.element_ty))
    else:
        for start in range(0, n, TILE):
            cols = start + tl.arange(0, TILE)
            x = tl.load(base + cols, mask=cols < n, other=float("-inf")).to(work)
            if OP == 0:
                y = tl.exp(x - m) / s
            else:
                y = x - m - tl.log(s)
            tl.store(out_ptr + row * stride + cols, y.to(out_ptr.dtype.element_ty), mask=cols < n)


def _launch(x: torch.Tensor, op: int) -> torch.Tensor:
    x = x.contiguous()
    rows, n = x.shape
    out = torch.empty(rows, dtype=x.dtype, device=x.device) if op == 2 else torch.empty_like(x)
    _online_softmax_rows[(rows,)](x, out, n, x.stride(0), OP=op, TILE=TILE, WIDE=x.dtype == torch.float64)
    return out


def softmax(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, 0)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, 1)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, 2)
