"""Known-bad: the mean divides by every row, ignored ones included.

Textbook in every other respect (float64 log-softmax, rounded once): only
reduction="mean" with ignored rows is wrong, by the factor rows / kept rows.
"""

import numpy as np


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    x = logits.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    loss = np.where(keep, -logp[np.arange(x.shape[0]), t], 0.0)
    if reduction == "mean":
        return np.asarray(loss.sum() / loss.size).astype(logits.dtype)  # the bug: counts ignored rows
    if reduction == "sum":
        return np.asarray(loss.sum()).astype(logits.dtype)
    return loss.astype(logits.dtype)
