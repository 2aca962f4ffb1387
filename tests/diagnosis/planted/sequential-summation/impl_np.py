"""Softmax in numpy with a running (prefix) sum for the denominator (planted corpus)."""
import numpy as np


def _w(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x):
    z = _w(x)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    total = np.cumsum(e, axis=-1)[:, -1:]
    return (e / total).astype(x.dtype)


def logsumexp(x):
    z = _w(x)
    m = z.max(axis=-1)
    m = np.where(np.isinf(m), 0, m).astype(z.dtype)
    e = np.exp(z - m[:, None])
    return (m + np.log(np.add.accumulate(e, axis=-1)[:, -1])).astype(x.dtype)
