"""Numpy softmax: exponentials in float32, the normaliser stored in the input's format (planted corpus)."""
import numpy as np


def softmax(x):
    w = x.astype(np.float32) if x.dtype.itemsize < 4 else x.astype(np.float64)
    e = np.exp(w - w.max(axis=1, keepdims=True))
    with np.errstate(over="ignore"):
        norm = e.sum(axis=1, dtype=np.float64, keepdims=True).astype(x.dtype)
    return (e / norm.astype(e.dtype)).astype(x.dtype)


def logsumexp(x):
    w = x.astype(np.float32) if x.dtype.itemsize < 4 else x.astype(np.float64)
    mx = w.max(axis=1)
    mx = np.where(np.isinf(mx), 0, mx).astype(w.dtype)
    with np.errstate(over="ignore"):
        norm = np.exp(w - mx[:, None]).sum(axis=1, dtype=np.float64).astype(x.dtype)
    return (mx + np.log(norm.astype(w.dtype))).astype(x.dtype)
