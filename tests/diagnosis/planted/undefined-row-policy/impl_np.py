"""Numpy softmax with a uniform answer where every score is masked (planted corpus)."""
import numpy as np


def _w(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x):
    z = _w(x)
    m = z.max(axis=-1, keepdims=True)
    dead = np.isneginf(m)
    with np.errstate(invalid="ignore"):
        e = np.exp(z - np.where(dead, 0, m))
        out = e / e.sum(axis=-1, keepdims=True)
    out = np.where(dead, 1.0 / z.shape[-1], out)
    return out.astype(x.dtype)


def log_softmax(x):
    z = _w(x)
    m = z.max(axis=-1, keepdims=True)
    dead = np.isneginf(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = z - np.where(dead, 0, m)
        out = d - np.log(np.exp(d).sum(axis=-1, keepdims=True))
    out = np.where(dead, -np.log(z.shape[-1]), out)
    return out.astype(x.dtype)
