"""Numpy softmax that saves memory (planted corpus)."""
import numpy as np


def softmax(x):
    x -= x.max(axis=-1, keepdims=True)
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0
    np.subtract(x, m, out=x)
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    with np.errstate(divide="ignore"):
        return (m[:, 0].astype(z.dtype) + np.log(np.exp(z).sum(axis=-1))).astype(x.dtype)
