"""Numpy softmax that cleans its input first (planted corpus)."""
import numpy as np


def _clean(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x.copy()
    z[np.isnan(z)] = -np.inf
    return z


def softmax(x):
    z = _clean(x)
    with np.errstate(invalid="ignore"):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def logsumexp(x):
    z = _clean(x)
    m = z.max(axis=-1)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(z - m[:, None]).sum(axis=-1))).astype(x.dtype)
