"""Numpy softmax using a base-2 exponential (planted corpus)."""
import numpy as np

LOG2E = 1.4426950408889634


def _pow2(t):
    return np.exp2(t)


def softmax(x):
    z = x.astype(np.float32) if x.dtype.itemsize <= 4 else x
    d = z - z.max(axis=-1, keepdims=True)
    e = _pow2(d * d.dtype.type(LOG2E))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    z = x.astype(np.float32) if x.dtype.itemsize <= 4 else x
    d = z - z.max(axis=-1, keepdims=True)
    s = _pow2(d * d.dtype.type(LOG2E)).sum(axis=-1, keepdims=True)
    return (d - np.log(s)).astype(x.dtype)
