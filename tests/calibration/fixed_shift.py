"""Known-bad: subtracts a fixed constant (80) instead of the row max.

Fine for logits in a narrow band, overflows or underflows on large offsets.
"""

import numpy as np

SHIFT = 80.0


def _work(x):
    return x.astype(np.float32) if x.dtype.itemsize == 2 else x


def softmax(x):
    w = _work(x)
    e = np.exp(w - SHIFT)
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    w = _work(x)
    return (w - SHIFT - np.log(np.exp(w - SHIFT).sum(axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x):
    w = _work(x)
    return (SHIFT + np.log(np.exp(w - SHIFT).sum(axis=-1))).astype(x.dtype)
