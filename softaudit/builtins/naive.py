"""Naive softmax without the max shift: exp(x) / sum(exp(x)).

What differs: nothing is subtracted before exp, so exp(x) overflows to inf
for x above ~88.7 (float32 working precision) and underflows to 0 below
~-103.9, giving NaN (inf/inf), 0/0 or log(0) = -inf. It is here as the known-bad
baseline the audit must catch. Working precision matches builtin:shifted
(float32 for 16-bit inputs, else the input's), so the shift is the only
difference between the two.
"""

import numpy as np


def _working(x: np.ndarray) -> np.ndarray:
    """x in working precision: float32 for 16-bit formats, else as is."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(_working(x))
    # float32 -> float16/bfloat16 is a single rounding in numpy and ml_dtypes.
    return (e / np.sum(e, axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x: np.ndarray) -> np.ndarray:
    w = _working(x)
    return (w - np.log(np.sum(np.exp(w), axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x: np.ndarray) -> np.ndarray:
    return np.log(np.sum(np.exp(_working(x)), axis=-1)).astype(x.dtype)
