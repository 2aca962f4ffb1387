"""The classic naive softmax: exp(x) / exp(x).sum(), with no max shift.

Shows what the audit catches: it looks right and is right on small logits,
but exp overflows once a logit exceeds ~88.7 in float32 (~11.09 in float16),
giving inf/inf = NaN, and underflows on large negative offsets, giving 0/0.
Expect FAILs on the offset and dynamic-range cases:

    softaudit run examples/naive_numpy.py
"""

import numpy as np


def softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logsumexp(x):
    return np.log(np.exp(x).sum(axis=-1))
