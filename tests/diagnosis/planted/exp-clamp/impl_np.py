"""Numpy softmax with a floor on the exponent (planted corpus)."""
import numpy as np


def softmax(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    d = np.maximum(z - z.max(axis=-1, keepdims=True), z.dtype.type(-30.0))
    e = np.exp(d)
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
