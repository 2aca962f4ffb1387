"""Numpy softmax family in single precision throughout (planted corpus)."""
import numpy as np


def _s(x):
    return x.astype(np.float32)


def softmax(x):
    z = _s(x)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    z = _s(x)
    z = z - z.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x):
    z = _s(x)
    m = z.max(axis=-1, keepdims=True)
    m = np.where(np.isinf(m), 0, m).astype(np.float32)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0].astype(x.dtype)
