"""A textbook numpy softmax, log_softmax and logsumexp, as a user would write them.

Shows the plainest candidate: module-level functions named after the ops, no
decorator, nothing imported from softaudit; the auditor detects numpy from
the module. The algorithm is the stable one (subtract the row max before
exp, work in float32 for 16-bit inputs), so it should pass:

    softaudit run examples/seed_numpy.py
"""

import numpy as np


def _upcast(x):
    """16-bit inputs are computed in float32; wider ones as they are."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def softmax(x):
    z = _upcast(x)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    z = _upcast(x)
    z = z - z.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x):
    z = _upcast(x)
    m = z.max(axis=-1, keepdims=True)
    # An infinite max (all -inf, or some +inf) would make z - m NaN; shifting
    # by 0 instead gives the right -inf / +inf.
    m[np.isinf(m)] = 0
    return (m[:, 0] + np.log(np.exp(z - m).sum(axis=-1))).astype(x.dtype)
