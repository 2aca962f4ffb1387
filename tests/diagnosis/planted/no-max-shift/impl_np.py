"""Softmax family in numpy (planted corpus)."""
import numpy as np


def _w(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x):
    e = np.exp(_w(x))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    z = _w(x)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x):
    return np.log(np.sum(np.exp(_w(x)), axis=-1)).astype(x.dtype)
