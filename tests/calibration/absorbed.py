"""Known-bad: forms lse = max + log(sum) first, then subtracts it from x.

At large offsets max + log(sum) absorbs the low bits of log(sum), so
log_softmax = x - lse and the division-free softmax = exp(x - lse) lose
|max| * u absolutely: the bug of losses that fold the max into the normaliser.
"""

import numpy as np


def _work(x):
    return x.astype(np.float32) if x.dtype.itemsize == 2 else x


def _lse(w):
    a = w.max(axis=-1, keepdims=True)
    a = np.where(np.isfinite(a), a, 0)
    return a + np.log(np.exp(w - a).sum(axis=-1, keepdims=True))


def softmax(x):
    w = _work(x)
    return np.exp(w - _lse(w)).astype(x.dtype)


def log_softmax(x):
    w = _work(x)
    return (w - _lse(w)).astype(x.dtype)
