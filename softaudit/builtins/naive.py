"""Naive softmax without the max shift: exp(x) / sum(exp(x)).

What differs: nothing is subtracted before exp, so exp(x) overflows to inf
for x above ~88.7 (float32 working precision) and underflows to 0 below
~-103.9, giving NaN (inf/inf), 0/0 or log(0) = -inf. It is here as the known-bad
baseline the audit must catch. Working precision matches builtin:shifted
(float32 for 16-bit inputs, else the input's), so the shift is the only
difference between the two.

cross_entropy is -log(softmax(x)[row, target]): per-row losses for class-index
targets only, with none of torch's keywords (cases that need them are skipped;
probability targets fail the probe, since they cannot index). Its log of a
probability rounded to 0 gives inf where the exact loss is finite. The
backward functions are the textbook formulas; logsumexp_backward and
cross_entropy_backward recompute softmax without the shift, so they overflow
exactly where the forward does.
"""

import numpy as np


def _working(x: np.ndarray) -> np.ndarray:
    """x in working precision: float32 for 16-bit formats, else as is."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _softmax(w: np.ndarray) -> np.ndarray:
    """exp(w) / sum(exp(w)) in w's precision, without the shift."""
    e = np.exp(w)
    return e / np.sum(e, axis=-1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    # float32 -> float16/bfloat16 is a single rounding in numpy and ml_dtypes.
    return _softmax(_working(x)).astype(x.dtype)


def log_softmax(x: np.ndarray) -> np.ndarray:
    w = _working(x)
    return (w - np.log(np.sum(np.exp(w), axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x: np.ndarray) -> np.ndarray:
    return np.log(np.sum(np.exp(_working(x)), axis=-1)).astype(x.dtype)


def cross_entropy(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    p = _softmax(_working(logits))
    return (-np.log(p[np.arange(p.shape[0]), target])).astype(logits.dtype)


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _working(y), _working(dy)
    return (w * (g - np.sum(w * g, axis=-1, keepdims=True))).astype(y.dtype)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    w, g = _working(y), _working(dy)
    return (g - np.exp(w) * np.sum(g, axis=-1, keepdims=True)).astype(y.dtype)


def logsumexp_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # y is not used: softmax again, unshifted.
    return (_working(dy)[:, None] * _softmax(_working(x))).astype(x.dtype)


def cross_entropy_backward(logits: np.ndarray, target: np.ndarray, dloss: np.ndarray) -> np.ndarray:
    p = _softmax(_working(logits))
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), target] = 1
    return (_working(np.asarray(dloss))[..., None] * (p - onehot)).astype(logits.dtype)
