"""Softmax in numpy that keeps the running sum in the input's storage format (planted corpus)."""
import numpy as np


def _denominator(e, fmt):
    if fmt.itemsize < 4:
        return np.cumsum(e.astype(fmt), axis=-1, dtype=fmt)[:, -1:].astype(np.float32)
    return np.sum(e.astype(np.float64), axis=-1, keepdims=True).astype(e.dtype)


def softmax(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / _denominator(e, x.dtype)).astype(x.dtype)


def logsumexp(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    m = z.max(axis=-1, keepdims=True)
    m = np.where(np.isinf(m), 0, m).astype(z.dtype)
    e = np.exp(z - m)
    return (m + np.log(_denominator(e, x.dtype)))[:, 0].astype(x.dtype)
