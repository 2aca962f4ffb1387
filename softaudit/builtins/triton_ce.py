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

The backward is the same kernel with GRAD set: a second pass writes
dx_c = g_i (A_i p_c - coef_c), with p = exp(x - c) / s, A_i = (1 - e) w_t + K and
coef_c = (1 - e) w_t [c = t] + (e / C) w_c; 0 for ignored rows. Everything is computed in float32
(float64 for float64 logits) and rounded once into the logits' format.

Zero coefficients count as zero: a -inf logit with weight 0, or with e = 0, adds nothing
(never 0 x inf = NaN). A row whose max is ±inf (fully masked, or holding +inf) has no defined
loss: NaN, as torch gives, and a NaN gradient; an ignored row is 0 regardless. Targets out of range raise IndexError before the launch (the host
checks them). Probability targets are not supported: the audit skips those cases, with the
reason. The loss is per row (no ``reduction`` keyword); the backward takes the upstream
gradient per row (or one value for every row).
"""

import torch
import triton
import triton.language as tl

from softaudit.builtins import triton_math as tm


@triton.jit
def _cross_entropy_rows(x_ptr, t_ptr, w_ptr, g_ptr, eps_ptr, loss_ptr, dx_ptr, rows, n, stride, ignore_index,
                        HAS_WEIGHT: tl.constexpr, GRAD: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
                        WIDE: tl.constexpr, PRECISE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's rows
    valid = r < rows
    t = tl.load(t_ptr + r, mask=valid, other=0)
    ignored = t == ignore_index
    t = tl.where(ignored, 0, t)
    if WIDE:
        zero = tl.zeros((ROWS,), tl.float64)
    else:
        zero = tl.zeros((ROWS,), tl.float32)
    smoothing = tl.load(eps_ptr).to(zero.dtype)  # a tensor: a float argument would be float32
    soft = smoothing / n  # the smoothing coefficient per class, times w_c
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
        inside = valid[:, None] & (cols[None, :] < n)
        x = tl.load(x_ptr + r[:, None] * stride + cols[None, :], mask=inside, other=float("-inf")).to(zero.dtype)
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(zero.dtype)
        else:
            w = tl.where(cols < n, 1.0, 0.0).to(zero.dtype)
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
    if HAS_WEIGHT:
        w_t = tl.load(w_ptr + t, mask=valid, other=0.0).to(zero.dtype)
    else:
        w_t = zero + 1.0
    hard = (1.0 - smoothing) * w_t
    loss = tl.where(hard != 0, hard * ((shift - x_t) + log_s), 0.0)
    loss += tl.where(total_soft != 0, spread + total_soft * log_s, 0.0)
    loss = tl.where(tm.finite(m), loss, float("nan"))  # a max of ±inf: undefined, NaN as torch
    loss = tl.where(ignored, 0.0, loss)
    if GRAD:
        g = tl.load(g_ptr + r, mask=valid, other=0.0).to(zero.dtype)
        a = hard + total_soft
        defined = tm.finite(m)  # else the row is undefined: NaN gradient, unless ignored
        for start in range(0, n, TILE):
            cols = start + tl.arange(0, TILE)
            inside = valid[:, None] & (cols[None, :] < n)
            x = tl.load(x_ptr + r[:, None] * stride + cols[None, :], mask=inside,
                        other=float("-inf")).to(zero.dtype)
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(zero.dtype)
            else:
                w = tl.where(cols < n, 1.0, 0.0).to(zero.dtype)
            p = tl.where(defined[:, None], tm.div(tm.exp(x - shift[:, None], PRECISE), s[:, None], WIDE), float("nan"))
            coef = soft * w[None, :] + tl.where(cols[None, :] == t[:, None], hard[:, None], 0.0)
            dx = tl.where(ignored[:, None], 0.0, g[:, None] * (a[:, None] * p - coef))
            tl.store(dx_ptr + r[:, None] * stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)
    else:
        tl.store(loss_ptr + r, loss.to(loss_ptr.dtype.element_ty), mask=valid)


def _launch(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
            label_smoothing: float, dloss: torch.Tensor | None) -> torch.Tensor:
    x = tm.rows_of(logits)
    rows, n = x.shape
    if target.dim() != 1:
        raise TypeError("builtin:triton-ce takes class-index targets only (a 1-D integer tensor)")
    if target.shape[0] != rows:
        raise ValueError(f"{target.shape[0]} targets for {rows} rows")
    t = target.to(device=x.device, dtype=torch.int64).contiguous()
    bad = (t != ignore_index) & ((t < 0) | (t >= n))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise IndexError(f"row {i}: target {int(t[i])} is out of bounds for {n} classes")
    w = weight.to(device=x.device).contiguous() if weight is not None else x  # x: unused
    if dloss is None:
        out = torch.empty(rows, dtype=x.dtype, device=x.device)
        g, dx = x, x  # unused pointers
    else:
        g = dloss.to(device=x.device).expand(rows).contiguous()
        out = dx = torch.empty_like(x)
    eps = torch.tensor([float(label_smoothing)], dtype=torch.float64 if tm.wide(x) else torch.float32,
                       device=x.device)
    if rows:
        tile = tm.tile_for(n)
        per = tm.rows_per_program(rows, tile)
        with tm.quiet():
            _cross_entropy_rows[tm.grid(rows, per)](
                x, t, w, g, eps, out, dx, rows, n, x.stride(0), int(ignore_index),
                HAS_WEIGHT=weight is not None, GRAD=dloss is not None, ROWS=per, TILE=tile, WIDE=tm.wide(x),
                PRECISE=tm.precise(x))
    return out


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0) -> torch.Tensor:
    return _launch(logits, target, weight, ignore_index, label_smoothing, None)


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, dloss: torch.Tensor,
                           weight: torch.Tensor | None = None, ignore_index: int = -100,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    return _launch(logits, target, weight, ignore_index, label_smoothing, dloss)
