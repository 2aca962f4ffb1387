"""Numpy softmax as exp(x - logsumexp(x)): no division (planted corpus)."""
import numpy as np


def softmax(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    m = z.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    return np.exp(z - lse).astype(x.dtype)
