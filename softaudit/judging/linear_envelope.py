"""The stability envelope of the fused linear cross-entropy (docs/envelope.md#fused-linear-cross-entropy).

The model is the textbook fused kernel (builtin:torch-chunked-linear-ce): every intermediate in
the working precision w (float32 for bfloat16, float16 and float32; float64 for float64) and
only the results (the loss, d_hidden, d_weight, d_bias) rounded into the format, once. Each
function returns an **absolute** error bound of the working-precision computation, element by
element; ``envelope.absolute_to_ulp`` adds the final rounding (half an ulp of the exact value)
and the floor of 1 ulp, as for every other gradient and loss.

Term by term (u = w's unit roundoff):

- each logit is a D-term dot product in w: u (ceil(log2 D) + DOT_PRODUCT_TERMS + BIAS_TERMS)
  sum_k |h_k w_ck| (+ |b_c|);
- softcap adds the rounding of z / s, tanh's own error (TANH_ERROR) and s * t;
- the loss: cross-entropy's own envelope in w (envelope.cross_entropy_row_absolute) plus the
  logit errors propagated through |dL/dz'|, plus the z-loss term's roundings;
- dL/dlogits: cross-entropy's gradient envelope in w (envelope.cross_entropy_backward_absolute)
  plus the logit errors propagated through the softmax (and through lse into the z-loss factor),
  times softcap's derivative with its own error;
- the gradients: that envelope times |W| (d_hidden) or |H| (d_weight), and the V- or T-term
  sums' own rounding in w (DOT_PRODUCT_TERMS again); d_bias the T-term sum.

The statistics it needs (the exact logits, p and lse of the softcapped logits) are plain float64
arrays: the reference's (reference.linear_loss.linear_statistics), or ``float64_statistics``.
A first-order model needs them to a few digits only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.formats import FLOAT32, FLOAT64, Format
from softaudit.judging.envelope import (
    cross_entropy_backward_absolute,
    cross_entropy_reduced_absolute,
    cross_entropy_row_absolute,
    log_domain_absolute,
)

DOT_PRODUCT_TERMS = 1.0
"""Added to ceil(log2 n) for an n-term dot product in w: the products' own rounding. With
pairwise (or blocked, each block summed in a tree) accumulation, the sum of n rounded products
is off by at most u (ceil(log2 n) + 1) sum |terms| to first order (Higham, Accuracy and
Stability, 2nd ed., eq. 3.5 with the pairwise depth of section 4.2)."""

BIAS_TERMS = 1.0
"""Added for the logits: the addition of the bias (counted also without one: the matmul's output
may be formed as a sum of partial products, one more rounding at |z|)."""

TANH_ERROR = 2.0
"""tanh's own error in units of u: within 1 ulp, i.e. 2u relative (glibc's tanh, and SLEEF's
1.0-ulp tanhf that torch's vectorised CPU kernels call)."""

WORKING_FORMATS: dict[str, Format] = {"bfloat16": FLOAT32, "float16": FLOAT32, "float32": FLOAT32,
                                      "float64": FLOAT64}
"""The working precision of the textbook for each format: float32 accumulation for 16-bit and
float32 inputs, as every fused kernel does it (Liger, Cut Cross-Entropy, cuBLAS's
CUBLAS_COMPUTE_32F), float64 for float64."""

BLOCK_ELEMENTS = 1 << 21
"""Tokens are processed in blocks of about this many (token, class) pairs (16 MiB per float64
array), so the largest vocabularies need a few hundred MiB, not tokens x vocabulary x 10 arrays."""


def working_format(fmt: Format) -> Format:
    """The textbook's working precision for inputs in ``fmt``."""
    return WORKING_FORMATS[fmt.name]


def dot_factor(n: int) -> float:
    """ceil(log2 n) + DOT_PRODUCT_TERMS: an n-term dot product's error in units of u sum |terms|."""
    return math.ceil(math.log2(max(n, 1))) + DOT_PRODUCT_TERMS


def float64_statistics(inp: LinearLossInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logits z = h W^T + b (T, V), p = softmax(z') (T, V) and lse = log sum exp(z') (T,) of
    the softcapped logits z', in float64: what the envelope needs, to about 1e-13 relative to
    sum |h w| (not the certified reference; an envelope is a first-order model)."""
    z = inp.hidden.astype(np.float64) @ inp.weight.astype(np.float64).T
    if inp.bias is not None:
        z = z + inp.bias.astype(np.float64)
    zc = inp.softcap * np.tanh(z / inp.softcap) if inp.softcap is not None else z
    a = np.max(zc, axis=-1, keepdims=True)
    e = np.exp(zc - a)
    s = np.sum(e, axis=-1, keepdims=True)
    return z, e / s, (a + np.log(s))[:, 0]


@dataclass(frozen=True)
class _Tokens:
    """One block of non-ignored tokens: what the forward and backward models share."""

    rows: np.ndarray
    """Indices of the block's tokens in the case."""
    x: np.ndarray
    """(B, V) the exact softcapped logits z'."""
    p: np.ndarray
    """(B, V) softmax(z')."""
    lse: np.ndarray
    """(B,) log sum exp(z')."""
    coef: np.ndarray
    """(B, V) (1 - eps)[c = t] + eps / V."""
    total: np.ndarray
    """(B,) A = 1 + 2 z_loss lse: the factor of p in dL/dz'."""
    amax: np.ndarray
    """(B,) max_c z'."""
    log_s: np.ndarray
    """(B,) lse - amax."""
    logit_error: np.ndarray
    """(B, V) e': the error of the working-precision z' (dot product, bias, softcap)."""
    t: np.ndarray | None
    """(B, V) tanh(z / s) with softcap, else None."""
    tanh_error: np.ndarray | None
    """(B, V) the error of the working-precision t with softcap, else None."""


def _blocks(inp: LinearLossInputs, logits: np.ndarray, p: np.ndarray, lse: np.ndarray,
            fmt: Format) -> Iterator[_Tokens]:
    """The non-ignored tokens in blocks of about BLOCK_ELEMENTS (token, class) pairs."""
    w = working_format(fmt)
    u = w.u
    vocab, hidden = inp.vocabulary, inp.hidden_size
    kept = np.flatnonzero(inp.target != inp.ignore_index)
    step = max(1, BLOCK_ELEMENTS // max(vocab, 1))
    weight_abs = np.abs(inp.weight.astype(np.float64))
    bias_abs = np.abs(inp.bias.astype(np.float64)) if inp.bias is not None else None
    logit_factor = u * (dot_factor(hidden) + BIAS_TERMS)
    eps = float(inp.label_smoothing)
    for start in range(0, kept.size, step):
        rows = kept[start:start + step]
        z = np.asarray(logits[rows], dtype=np.float64)
        magnitude = np.abs(inp.hidden[rows].astype(np.float64)) @ weight_abs.T
        if bias_abs is not None:
            magnitude += bias_abs
        e = logit_factor * magnitude
        t = tanh_error = None
        if inp.softcap is not None:
            s = float(inp.softcap)
            t = np.tanh(z / s)
            squash = 1 - t * t
            x = s * t
            # z's error and the rounding of z / s pass through tanh' = squash; then tanh's own
            # error and the product s * t.
            tanh_error = squash * (e + u * np.abs(z)) / s + TANH_ERROR * u * np.abs(t)
            e = s * tanh_error + u * np.abs(x)
        else:
            x = z
        coef = np.full((rows.size, vocab), eps / vocab)
        coef[np.arange(rows.size), inp.target[rows]] += 1 - eps
        lse_b = np.asarray(lse[rows], dtype=np.float64)
        amax = np.max(x, axis=-1)
        yield _Tokens(rows, x, np.asarray(p[rows], dtype=np.float64), lse_b, coef,
                      1 + 2 * inp.z_loss * lse_b, amax, lse_b - amax, e, t, tanh_error)


def linear_ce_forward_absolute(inp: LinearLossInputs, logits: np.ndarray, p: np.ndarray, lse: np.ndarray,
                               fmt: Format) -> np.ndarray:
    """(T,) absolute envelope of the per-token losses (0 for ignored tokens, whose loss is exactly
    0), before the final rounding into ``fmt``.

    ``logits`` (T, V): the exact z = h W^T + b (before softcap), float64; ``p`` (T, V) and ``lse``
    (T,): softmax and logsumexp of the softcapped logits, float64 (rows of ignored tokens unused).
    """
    w = working_format(fmt)
    u = w.u
    out = np.zeros(inp.tokens)
    eps = float(inp.label_smoothing)
    zl = float(inp.z_loss)
    for b in _blocks(inp, logits, p, lse, fmt):
        picked = b.x[np.arange(b.rows.size), inp.target[b.rows]]
        ce = (1 - eps) * (b.lse - picked) + eps * (b.lse - np.mean(b.x, axis=-1))
        env = cross_entropy_row_absolute(b.x, b.coef, ce, b.amax, b.log_s, w)
        env += np.sum(np.abs(b.total[:, None] * b.p - b.coef) * b.logit_error, axis=-1)
        if zl != 0:
            lse_env = log_domain_absolute("logsumexp", b.x, b.amax, b.log_s, w)
            loss = ce + zl * b.lse * b.lse
            # lse's own error through 2 zl lse; lse * lse, the product by zl, the addition.
            env += 2 * zl * np.abs(b.lse) * lse_env + 3 * u * zl * b.lse * b.lse + u * np.abs(loss)
        out[b.rows] = env
    return out


def linear_ce_reduced_absolute(per_token_abs: np.ndarray, per_token_loss: np.ndarray, denom: float,
                               fmt: Format) -> float:
    """Absolute envelope of the sum (``denom`` 1) or mean (``denom`` N, the non-ignored tokens) of
    the per-token losses, summed and divided in the working precision, before the final rounding."""
    return cross_entropy_reduced_absolute(per_token_abs, per_token_loss, denom, working_format(fmt))


def upstream_per_token(inp: LinearLossInputs, dy: np.ndarray) -> np.ndarray:
    """g_i (T,): dy_i for "none", dy for "sum", dy / N for "mean"; 0 for ignored tokens."""
    kept = inp.target != inp.ignore_index
    d = np.asarray(dy, dtype=np.float64)
    if inp.reduction == "none":
        g = d.reshape(inp.tokens)
    else:
        g = np.full(inp.tokens, float(d.reshape(-1)[0]))
        if inp.reduction == "mean":
            g = g / max(int(kept.sum()), 1)
    return np.where(kept, g, 0.0)


def linear_ce_backward_absolute(inp: LinearLossInputs, dy: np.ndarray, logits: np.ndarray, p: np.ndarray,
                                lse: np.ndarray, fmt: Format
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Absolute envelopes of d_hidden (T, D), d_weight (V, D) and d_bias (V,) (None without a
    bias), before the final rounding into ``fmt``. Arguments as ``linear_ce_forward_absolute``,
    and the upstream ``dy``: (T,) for "none", one value otherwise."""
    w = working_format(fmt)
    u = w.u
    zl = float(inp.z_loss)
    g_all = upstream_per_token(inp, dy)
    hidden_abs = np.abs(inp.hidden.astype(np.float64))
    weight_abs = np.abs(inp.weight.astype(np.float64))
    d_hidden = np.zeros(inp.hidden.shape)
    d_weight = np.zeros(inp.weight.shape)
    d_bias = np.zeros(inp.vocabulary) if inp.bias is not None else None
    v_sum = u * dot_factor(inp.vocabulary)
    t_sum = u * dot_factor(inp.tokens)
    for b in _blocks(inp, logits, p, lse, fmt):
        g = g_all[b.rows]
        gabs = np.abs(g)[:, None]
        grad = g[:, None] * (b.total[:, None] * b.p - b.coef)  # dL/dz' with the upstream
        env = cross_entropy_backward_absolute(b.x, b.coef, b.total, g, b.p, b.amax, b.log_s, w)
        spread = np.sum(b.p * b.logit_error, axis=-1, keepdims=True)  # lse's error from the logits'
        env += gabs * b.total[:, None] * b.p * (b.logit_error + spread)
        if zl != 0:
            lse_env = log_domain_absolute("logsumexp", b.x, b.amax, b.log_s, w)[:, None]
            lse_abs = np.abs(b.lse)[:, None]
            # A = 1 + 2 zl lse: lse's error (computed, and from the logits), and A's two roundings.
            env += gabs * b.p * (2 * zl * (lse_env + spread) + u * (b.total[:, None] + 2 * zl * lse_abs))
        if b.t is not None and b.tanh_error is not None:
            squash = 1 - b.t * b.t
            full = grad * squash
            # G' (1 - t^2): G''s error scaled; 1 - t*t's error (2|t| dt and two roundings); the product.
            env = squash * env + np.abs(grad) * (2 * np.abs(b.t) * b.tanh_error + u) + u * np.abs(full)
            grad = full
        if inp.reduction == "mean":
            env += u * np.abs(grad)  # g = dy / N, rounded
        grad_abs = np.abs(grad)
        d_hidden[b.rows] = (env + v_sum * grad_abs) @ weight_abs
        per_token = env + t_sum * grad_abs
        d_weight += per_token.T @ hidden_abs[b.rows]
        if d_bias is not None:
            d_bias += np.sum(per_token, axis=0)
    return d_hidden, d_weight, d_bias
