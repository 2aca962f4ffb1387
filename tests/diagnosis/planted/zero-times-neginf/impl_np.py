"""Numpy cross-entropy for class and probability targets (planted corpus)."""
import numpy as np


def _logp(z):
    m = z.max(axis=-1, keepdims=True)
    d = z - m
    return d - np.log(np.exp(d).sum(axis=-1, keepdims=True))


def cross_entropy(logits, target):
    z = logits.astype(np.float64)
    lp = _logp(z)
    if target.ndim == 2:
        with np.errstate(invalid="ignore"):
            return (-(target.astype(np.float64) * lp).sum(axis=-1)).astype(logits.dtype)
    return (-lp[np.arange(z.shape[0]), target]).astype(logits.dtype)
