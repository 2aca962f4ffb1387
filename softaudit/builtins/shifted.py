"""Textbook max-shifted softmax in working precision.

What differs from builtin:naive: the row max a is subtracted before exp, so
every exponent is <= 0, exp never overflows and the largest term is exactly 1
(the sum s lies in [1, n]). This is the algorithm the stability envelope
models. Working precision is float32 for 16-bit inputs (16-bit sums saturate
and lose bits on long rows), else the input's format; one rounding back.

Special rows: softmax and log_softmax use the plain max, so a row whose max
is ±inf (fully masked, or holding +inf: the result is undefined) comes out
all NaN, as in torch, since x - a is NaN there. logsumexp replaces an
infinite max by 0, as scipy.special.logsumexp does, so a fully masked row
gives log(0) = -inf and a row holding +inf gives +inf. NaN propagates
everywhere (np.max returns NaN).

cross_entropy has torch's signature and semantics (docs/cross-entropy.md):
loss_i = sum_c coef_ic * (-log_softmax(x)_ic) from the shifted log_softmax,
where a zero coefficient contributes 0 even against a -inf logit; class-index
or probability targets, label smoothing, class weights, ignored rows (loss
and gradient 0, not counted in the mean) and the three reductions; a target
out of range raises IndexError. The backward functions are the textbook
formulas in working precision: y * (dy - sum(y * dy)), dy - exp(y) * sum(dy),
dy * softmax(x) for logsumexp (from x, not from the rounded y: see there), and
g_i * (A_i * softmax(x)_ic - coef_ic) with A_i = sum_c coef_ic for cross_entropy.
builtin:shifted-f64 reuses the helpers below with a wider working format.
"""

from collections.abc import Callable

import numpy as np

Work = Callable[[np.ndarray], np.ndarray]
"""Turns an input array into the working precision."""


def _working(x: np.ndarray) -> np.ndarray:
    """x in working precision: float32 for 16-bit formats, else as is."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _softmax(w: np.ndarray) -> np.ndarray:
    e = np.exp(w - np.max(w, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _log_softmax(w: np.ndarray) -> np.ndarray:
    z = w - np.max(w, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _logsumexp(w: np.ndarray) -> np.ndarray:
    a = np.max(w, axis=-1, keepdims=True)
    a = np.where(np.isinf(a), np.zeros_like(a), a)
    s = np.sum(np.exp(w - a), axis=-1, keepdims=True)
    return (a + np.log(s))[..., 0]


def softmax(x: np.ndarray) -> np.ndarray:
    # float32 -> float16/bfloat16 is a single rounding in numpy and ml_dtypes.
    return _softmax(_working(x)).astype(x.dtype)


def log_softmax(x: np.ndarray) -> np.ndarray:
    return _log_softmax(_working(x)).astype(x.dtype)


def logsumexp(x: np.ndarray) -> np.ndarray:
    return _logsumexp(_working(x)).astype(x.dtype)


# --------------------------------------------------------------------------
# Cross-entropy, shared with builtin:shifted-f64 (``work`` sets the precision)


def _coefficients(w: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int,
                  label_smoothing: float, work: Work) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef, counted, denominator) in w's precision: loss_i = sum_c coef_ic * (-l_ic), the
    rows that count, and the mean's denominator."""
    rows, n = w.shape
    wt = np.ones(n, dtype=w.dtype) if weight is None else work(np.asarray(weight))
    eps = w.dtype.type(label_smoothing)
    if target.ndim == 2:  # probability targets, smoothed: q' = (1 - eps) q + eps / C
        coef = wt * ((1 - eps) * work(target) + eps / n)
        return coef, np.ones(rows, dtype=bool), np.asarray(rows, dtype=w.dtype)
    t = np.asarray(target)
    ignored = t == ignore_index
    bad = ~ignored & ((t < 0) | (t >= n))
    if bad.any():
        i = int(np.argmax(bad))
        raise IndexError(f"row {i}: target {int(t[i])} is out of bounds for {n} classes")
    t = np.where(ignored, 0, t)
    onehot = np.zeros((rows, n), dtype=w.dtype)
    onehot[np.arange(rows), t] = 1
    coef = (1 - eps) * wt[t][:, None] * onehot + (eps / n) * wt
    coef = np.where(ignored[:, None], np.zeros_like(coef), coef)
    denominator = np.sum(np.where(ignored, np.zeros_like(wt[t]), wt[t]))
    return coef, ~ignored, denominator


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', not {reduction!r}")


def _cross_entropy(logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int,
                   reduction: str, label_smoothing: float, work: Work) -> np.ndarray:
    """The loss in working precision (not rounded back)."""
    _check_reduction(reduction)
    w = work(logits)
    coef, counted, denominator = _coefficients(w, target, weight, ignore_index, label_smoothing, work)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(coef != 0, coef * -_log_softmax(w), np.zeros_like(coef))  # 0 * inf counts as 0
        loss = np.where(counted, np.sum(terms, axis=-1), np.zeros_like(terms[:, 0]))
        if reduction == "none":
            return loss
        total = np.sum(loss)
        return np.asarray(total if reduction == "sum" else total / denominator)


def _cross_entropy_backward(logits: np.ndarray, target: np.ndarray, dloss: np.ndarray,
                            weight: np.ndarray | None, ignore_index: int, reduction: str,
                            label_smoothing: float, work: Work) -> np.ndarray:
    """G_ic = g_i * (A_i p_ic - coef_ic) in working precision (not rounded back)."""
    _check_reduction(reduction)
    w = work(logits)
    rows = w.shape[0]
    coef, counted, denominator = _coefficients(w, target, weight, ignore_index, label_smoothing, work)
    g = work(np.asarray(dloss))
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "mean":
            g = g / denominator
        g = np.broadcast_to(g, (rows,))
        grad = g[:, None] * (np.sum(coef, axis=-1, keepdims=True) * _softmax(w) - coef)
    return np.where(counted[:, None], grad, np.zeros_like(grad))


def cross_entropy(logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> np.ndarray:
    loss = _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, _working)
    return loss.astype(logits.dtype)


# --------------------------------------------------------------------------
# Backward passes: the textbook formulas


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _working(y), _working(dy)
    return (w * (g - np.sum(w * g, axis=-1, keepdims=True))).astype(y.dtype)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _working(y), _working(dy)
    return (g - np.exp(w) * np.sum(g, axis=-1, keepdims=True)).astype(y.dtype)


def logsumexp_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # dy * softmax(x), shifted; y is not used: exp(x - y) with y rounded into the
    # format is off by a factor up to exp(ulp(y) / 2) (e^4 for y near 1e4 in float16).
    # The shifted softmax also makes undefined rows (fully masked, +inf) all NaN.
    return (_working(dy)[:, None] * _softmax(_working(x))).astype(x.dtype)


def cross_entropy_backward(logits: np.ndarray, target: np.ndarray, dloss: np.ndarray,
                           weight: np.ndarray | None = None, ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0) -> np.ndarray:
    grad = _cross_entropy_backward(logits, target, dloss, weight, ignore_index, reduction, label_smoothing,
                                   _working)
    return grad.astype(logits.dtype)
