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
"""

import numpy as np


def _working(x: np.ndarray) -> np.ndarray:
    """x in working precision: float32 for 16-bit formats, else as is."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x: np.ndarray) -> np.ndarray:
    w = _working(x)
    e = np.exp(w - np.max(w, axis=-1, keepdims=True))
    # float32 -> float16/bfloat16 is a single rounding in numpy and ml_dtypes.
    return (e / np.sum(e, axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x: np.ndarray) -> np.ndarray:
    w = _working(x)
    z = w - np.max(w, axis=-1, keepdims=True)
    return (z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x: np.ndarray) -> np.ndarray:
    w = _working(x)
    a = np.max(w, axis=-1, keepdims=True)
    a = np.where(np.isinf(a), np.zeros_like(a), a)
    s = np.sum(np.exp(w - a), axis=-1, keepdims=True)
    return (a + np.log(s))[..., 0].astype(x.dtype)
