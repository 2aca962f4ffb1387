"""Triton fused cross-entropy, forward and backward: the vocabulary read in tiles (short rows
several to a program), class-index targets, class weights, ignore_index and label smoothing.

Per row i with target t, smoothing e, C classes and weights w (1 without weights), torch's loss
is loss_i = (1 - e) w_t (lse - x_t) + (e / C) sum_c w_c (lse - x_c), and 0 for an ignored row.
Every term is >= 0, and the kernel keeps them so, never forming lse or sum_c w_c x_c (both
cancel badly against large logits):

- one pass over the tiles keeps the online softmax's shift c and s = sum exp(x_c - c)
  (builtin:triton-online, with its guards for masked tiles and its compensated tile sums),
  K = sum_c (e / C) w_c, and
  T = sum_c (e / C) w_c (c - x_c), rescaled like s when the shift moves up
  (T += K_seen (c_new - c_old)); each term is scaled before it is summed, so logits masked
  with finfo.min (c - x_c = 3.4e38 in float32) cannot overflow the sum;
- then lse - x_t = (c - x_t) + log s and (e / C) sum_c w_c (lse - x_c) = T + K log s.

The backward is the same kernel with ``grad`` set (a runtime flag, as ``has_weight``: one
compilation serves the forward and the backward, with and without weights, where a constexpr
would compile each of the four apart): a second pass writes
dx_c = g_i (A_i p_c - coef_c), with p = exp(x - c) / s, A_i = (1 - e) w_t + K and
coef_c = (1 - e) w_t [c = t] + (e / C) w_c; 0 for ignored rows. Everything is computed in float32
(float64 for float64 logits) and rounded once into the logits' format.

Tiles: the smallest of 128, 1,024, 4,096 and 16,384 that holds the row (32, 4, 1 and 1 rows
a program), else 16,384 (triton_math.TILES): a few compilations per format, whatever the
vocabulary, the weights and the direction. A row that fits one tile stays in registers, so the
backward reads the logits once; a longer row is read twice in the backward, the second time
last tile first (still in the L2 cache).

Zero coefficients count as zero: a -inf logit with weight 0, or with e = 0, adds nothing
(never 0 x inf = NaN). A row whose max is ±inf (fully masked, or holding +inf) has no defined
loss: NaN, as torch gives, and a NaN gradient; an ignored row is 0 regardless. Targets out of
range raise IndexError: the kernel reads no logit or weight at such a target (it reads class 0
instead) and records the last such row in a flag, which the host reads after the launch (one
small copy; a check on the host before the launch took several small kernels and a
synchronisation before the kernel could even be queued). Probability targets are not supported: the audit skips those cases, with the
reason. The loss is per row (no ``reduction`` keyword); the backward takes the upstream
gradient per row (or one value for every row).
"""

import functools

import torch
import triton
import triton.language as tl

from softaudit.builtins import triton_math as tm

TARGET = "builtin:triton-ce"


@triton.jit
def _tile(x_ptr, w_ptr, r, cols, valid, n, stride, zero, has_weight):
    """The logits of a [ROWS, TILE] tile (lanes past the row: -inf) and the class weights (0 there;
    1 without weights)."""
    inside = valid[:, None] & (cols[None, :] < n)
    x = tl.load(x_ptr + r[:, None] * stride + cols[None, :], mask=inside, other=float("-inf")).to(zero.dtype)
    if has_weight != 0:
        w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(zero.dtype)
    else:
        w = tl.where(cols < n, 1.0, 0.0).to(zero.dtype)
    return x, w


@triton.jit
def _write_gradient(dx_ptr, x, w, cols, r, valid, n, stride, t, ignored, defined, shift, s, g, a, hard, soft,
                    WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """dx = g (A p - coef) for a tile of logits x (0 for ignored rows, NaN for undefined ones)."""
    p = tl.where(defined[:, None], tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE), float("nan"))
    coef = soft * w[None, :] + tl.where(cols[None, :] == t[:, None], hard[:, None], 0.0)
    dx = tl.where(ignored[:, None], 0.0, g[:, None] * (a[:, None] * p - coef))
    inside = valid[:, None] & (cols[None, :] < n)
    tl.store(dx_ptr + r[:, None] * stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit(do_not_specialize=["rows", "ignore_index", "g_stride", "has_weight", "grad"])
def _cross_entropy_rows(x_ptr, t_ptr, w_ptr, g_ptr, eps_ptr, loss_ptr, dx_ptr, bad_ptr, rows, n, stride,
                        ignore_index, g_stride, has_weight, grad, ROWS: tl.constexpr, TILE: tl.constexpr,
                        SINGLE: tl.constexpr, WIDE: tl.constexpr, PRECISE: tl.constexpr):
    """has_weight and grad (0 or 1) are runtime flags, uniform over the launch: one compiled kernel
    serves the forward and the backward, with and without class weights."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's rows
    valid = r < rows
    t = tl.load(t_ptr + r, mask=valid, other=0)
    ignored = t == ignore_index
    bad = valid & (~ignored) & ((t < 0) | (t >= n))  # out of range: the host raises after the launch
    tl.atomic_max(bad_ptr + r * 0, tl.where(bad, r + 1, 0), mask=bad)  # 1 + the row, for the host
    t = tl.where(ignored | bad, 0, t)
    if WIDE:
        zero = tl.zeros((ROWS,), tl.float64)
    else:
        zero = tl.zeros((ROWS,), tl.float32)
    smoothing = tl.load(eps_ptr).to(zero.dtype)  # a tensor: a float argument would be float32
    soft = smoothing / n  # the smoothing coefficient per class, times w_c
    if SINGLE:  # the row fits one tile: in registers, read once
        cols = tl.arange(0, TILE)
        x, w = _tile(x_ptr, w_ptr, r, cols, valid, n, stride, zero, has_weight)
        m = tl.max(x, axis=1)
        shift = tm.shift_of(m)
        ones, rest = tm.exp_sum(x, shift, PRECISE)
        coef = soft * w[None, :]
        spread = tl.sum(tl.where(coef != 0, coef * (shift[:, None] - x), 0.0), axis=1)
        total_soft = tl.sum(coef, axis=1)
    else:
        m = zero + float("-inf")
        ones = zero
        rest = zero
        s_carry = zero
        total_soft = zero  # K: sum_c soft w_c over the tiles seen
        spread = zero      # T: sum_c soft w_c (shift - x_c) over the tiles seen, scaled term by term
        spread_carry = zero
        shift = tm.shift_of(m)
        for start in range(0, n, TILE):
            cols = start + tl.arange(0, TILE)
            x, w = _tile(x_ptr, w_ptr, r, cols, valid, n, stride, zero, has_weight)
            m = tl.maximum(m, tl.max(x, axis=1))
            new_shift = tm.shift_of(m)
            ones, rest, s_carry = tm.accumulate(ones, rest, s_carry, shift, new_shift, x, PRECISE)
            coef = soft * w[None, :]
            moved = tl.where(total_soft != 0, total_soft * (new_shift - shift), 0.0)
            terms = tl.sum(tl.where(coef != 0, coef * (new_shift[:, None] - x), 0.0), axis=1)
            spread, spread_carry = tm.compensated_add(spread, spread_carry, moved + terms)
            total_soft += tl.sum(coef, axis=1)
            shift = new_shift

    s = ones + rest
    log_s = tm.log(s, PRECISE)
    x_t = tl.load(x_ptr + r * stride + t, mask=valid, other=0.0).to(zero.dtype)
    if has_weight != 0:
        w_t = tl.load(w_ptr + t, mask=valid, other=0.0).to(zero.dtype)
    else:
        w_t = zero + 1.0
    hard = (1.0 - smoothing) * w_t
    defined = tm.finite(m)  # else the row is undefined: NaN loss and gradient, unless ignored
    if grad != 0:
        g = tl.load(g_ptr + r * g_stride, mask=valid, other=0.0).to(zero.dtype)
        a = hard + total_soft
        if SINGLE:
            _write_gradient(dx_ptr, x, w, cols, r, valid, n, stride, t, ignored, defined, shift, s, g, a, hard,
                            soft, WIDE, PRECISE)
        else:
            tiles = tl.cdiv(n, TILE)
            for i in range(tiles):
                cols = (tiles - 1 - i) * TILE + tl.arange(0, TILE)  # last tile first: still in L2
                x, w = _tile(x_ptr, w_ptr, r, cols, valid, n, stride, zero, has_weight)
                _write_gradient(dx_ptr, x, w, cols, r, valid, n, stride, t, ignored, defined, shift, s, g, a, hard,
                                soft, WIDE, PRECISE)
    else:
        loss = tl.where(hard != 0, hard * ((shift - x_t) + log_s), 0.0)
        loss += tl.where(total_soft != 0, spread + total_soft * log_s, 0.0)
        loss = tl.where(defined, loss, float("nan"))  # a max of ±inf: undefined, NaN as torch
        loss = tl.where(ignored, 0.0, loss)
        tl.store(loss_ptr + r, loss.to(loss_ptr.dtype.element_ty), mask=valid)


@functools.lru_cache(maxsize=64)
def _smoothing(value: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The label smoothing as a one-element tensor on the device, made once per value (a new
    tensor each call would copy from the host, and wait for the GPU, on every call)."""
    return torch.tensor([value], dtype=dtype, device=device)


def _launch(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
            label_smoothing: float, dloss: torch.Tensor | None) -> torch.Tensor:
    x = tm.rows_of(logits)
    rows, n = x.shape
    if target.dim() != 1:
        raise TypeError("builtin:triton-ce takes class-index targets only (a 1-D integer tensor)")
    if target.shape[0] != rows:
        raise ValueError(f"{target.shape[0]} targets for {rows} rows")
    t = target.to(device=x.device, dtype=torch.int64).contiguous()
    w = weight.to(device=x.device).contiguous() if weight is not None else x  # x: unused
    if dloss is None:
        out = torch.empty(rows, dtype=x.dtype, device=x.device)
        g, g_stride, dx = x, 0, x  # unused pointers
    else:
        g = dloss.to(device=x.device).reshape(-1)
        if g.numel() not in (1, rows):
            raise ValueError(f"{g.numel()} upstream gradients for {rows} rows")
        g_stride = 1 if g.numel() == rows and rows != 1 else 0  # one value for every row: stride 0
        out = dx = torch.empty_like(x)
    eps = _smoothing(float(label_smoothing), torch.float64 if tm.wide(x) else torch.float32, str(x.device))
    if rows:
        bad = torch.zeros(1, dtype=torch.int64, device=x.device)  # 1 + the last out-of-range row, or 0
        tile = tm.tile_for(n)
        per = tm.rows_per_program(tile)
        tm.launch(TARGET, _cross_entropy_rows, tm.grid(rows, per),
                  (x, t, w, g.contiguous(), eps, out, dx, bad, rows, n, x.stride(0), int(ignore_index), g_stride,
                   int(weight is not None), int(dloss is not None)), n,
                  tm.warps_for(per * tile, x), ROWS=per, TILE=tile, SINGLE=n <= tile, WIDE=tm.wide(x), PRECISE=tm.precise(x))
        if int(bad.item()):
            _raise_out_of_range(t, n, ignore_index)
    return out


def _raise_out_of_range(t: torch.Tensor, n: int, ignore_index: int) -> None:
    """IndexError naming the first row whose target is out of range."""
    bad = (t != ignore_index) & ((t < 0) | (t >= n))
    i = int(torch.nonzero(bad)[0, 0])
    raise IndexError(f"row {i}: target {int(t[i])} is out of bounds for {n} classes")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0) -> torch.Tensor:
    return _launch(logits, target, weight, ignore_index, label_smoothing, None)


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, dloss: torch.Tensor,
                           weight: torch.Tensor | None = None, ignore_index: int = -100,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    return _launch(logits, target, weight, ignore_index, label_smoothing, dloss)
