"""log_softmax and cross-entropy in numpy (planted corpus)."""
import numpy as np


def _p(x):
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    with np.errstate(divide="ignore"):
        return np.log(_p(x)).astype(x.dtype)


def cross_entropy(logits, target):
    p = _p(logits)
    with np.errstate(divide="ignore"):
        return (-np.log(p[np.arange(p.shape[0]), target])).astype(logits.dtype)
