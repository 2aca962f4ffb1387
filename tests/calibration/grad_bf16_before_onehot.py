"""Known-bad: the cross-entropy gradient stores softmax in bfloat16, then subtracts the one-hot.

Fused kernels that keep probabilities in a 16-bit buffer compute p - onehot from
the rounded p: on a confident row p_t ~ 1 - 1e-3 becomes 1 - 2^-9k, and the
target's gradient p_t - 1 is wrong by up to 2^-9 absolutely, far beyond a
float32 computation's error. The forward loss is textbook.
"""

import ml_dtypes
import numpy as np


def _probabilities(x):
    w = x.astype(np.float32)
    e = np.exp(w - w.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits, target):
    w = logits.astype(np.float64)
    z = w - w.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return (-logp[np.arange(w.shape[0]), target]).astype(logits.dtype)


def cross_entropy_backward(logits, target, dloss):
    p = _probabilities(logits).astype(ml_dtypes.bfloat16).astype(np.float32)  # the bug
    p[np.arange(p.shape[0]), target] -= 1.0
    return (p * np.asarray(dloss, dtype=np.float32)[:, None]).astype(logits.dtype)
