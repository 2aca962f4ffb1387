"""Max-shifted softmax computed in float64 and rounded once into the input's format.

What differs from builtin:shifted: the same algorithm (and the same special
rows), but in float64 (in long double for float64 input, where the platform
has a wider one), so the working-precision errors are far below one ulp of
the target format and the result is, in practice, correctly rounded. The one
rounding back goes through softaudit's exact rounding: float64 -> bfloat16
via ml_dtypes would round twice (through float32) and could be off by one ulp
at halfway points. This is the accuracy a careful implementation can reach.

cross_entropy and the backward functions are builtin:shifted's, computed the
same way in the wide format (its helpers, with ``_wide`` as the working
precision) and rounded once.
"""

import numpy as np

from softaudit.builtins import shifted as _shifted
from softaudit.formats import format_of_dtype, round_float64_array

_WIDE = np.longdouble if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant else np.float64


def _wide(x: np.ndarray) -> np.ndarray:
    """x in the wide working format (exact: every audited format fits)."""
    return x.astype(_WIDE if x.dtype == np.float64 else np.float64)


def _round_once(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One correct rounding into ``dtype`` (long double -> float64 is one in numpy)."""
    if dtype == np.float64:
        return y.astype(np.float64)
    fmt = format_of_dtype(dtype)
    if fmt is None:
        raise TypeError(f"unsupported input dtype {dtype}")
    return round_float64_array(y, fmt)


def softmax(x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    e = np.exp(w - np.max(w, axis=-1, keepdims=True))
    return _round_once(e / np.sum(e, axis=-1, keepdims=True), x.dtype)


def log_softmax(x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    z = w - np.max(w, axis=-1, keepdims=True)
    return _round_once(z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True)), x.dtype)


def logsumexp(x: np.ndarray) -> np.ndarray:
    w = _wide(x)
    a = np.max(w, axis=-1, keepdims=True)
    a = np.where(np.isinf(a), np.zeros_like(a), a)  # masked / +inf rows, as in builtin:shifted
    s = np.sum(np.exp(w - a), axis=-1, keepdims=True)
    return _round_once((a + np.log(s))[..., 0], x.dtype)


def cross_entropy(logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> np.ndarray:
    loss = _shifted._cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, _wide)
    return _round_once(loss, logits.dtype)


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _wide(y), _wide(dy)
    return _round_once(w * (g - np.sum(w * g, axis=-1, keepdims=True)), y.dtype)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _wide(y), _wide(dy)
    return _round_once(g - np.exp(w) * np.sum(g, axis=-1, keepdims=True), y.dtype)


def logsumexp_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # dy * softmax(x), as builtin:shifted: the rounded y would cost up to exp(ulp(y) / 2).
    return _round_once(_wide(dy)[:, None] * _shifted._softmax(_wide(x)), x.dtype)


def cross_entropy_backward(logits: np.ndarray, target: np.ndarray, dloss: np.ndarray,
                           weight: np.ndarray | None = None, ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0) -> np.ndarray:
    grad = _shifted._cross_entropy_backward(logits, target, dloss, weight, ignore_index, reduction,
                                            label_smoothing, _wide)
    return _round_once(grad, logits.dtype)
