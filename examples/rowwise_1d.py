"""Functions written for one 1-D vector, audited row by row.

Shows row-by-row mode. ``softmax`` and ``log_softmax`` take the max and the
sum of the whole array, which is right for a vector but silently wrong for a
2-D batch; ``logsumexp`` walks a Python list and returns one float. The
auditor's probe notices that the 2-D call gives wrong values (or a scalar)
while per-row calls are right, calls them once per row, and says so in a
note "audited row by row (1-D only)". Pass ``--rowwise`` to ask for it
outright.

    softaudit run examples/rowwise_1d.py
"""

import math

import numpy as np


def softmax(v):
    v = v.astype(np.float32) if v.dtype.itemsize < 4 else v
    e = np.exp(v - v.max())
    return e / e.sum()


def log_softmax(v):
    v = v.astype(np.float32) if v.dtype.itemsize < 4 else v
    z = v - v.max()
    return z - np.log(np.exp(z).sum())


def logsumexp(v):
    values = [float(t) for t in v]
    if any(math.isnan(t) for t in values):
        return math.nan
    m = max(values)
    if math.isinf(m):  # all -inf (fully masked): -inf; any +inf: +inf
        return m
    return m + math.log(math.fsum(math.exp(t - m) for t in values))
