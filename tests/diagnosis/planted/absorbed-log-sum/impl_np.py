"""log_softmax and cross-entropy in numpy (planted corpus)."""
import numpy as np


def _w(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _lse(z):
    m = z.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def log_softmax(x):
    z = _w(x)
    return (z - _lse(z)).astype(x.dtype)


def cross_entropy(logits, target):
    z = _w(logits)
    rows = np.arange(z.shape[0])
    return (_lse(z)[:, 0] - z[rows, target]).astype(logits.dtype)
