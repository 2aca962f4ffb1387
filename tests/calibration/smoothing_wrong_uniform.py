"""Known-bad: label smoothing spread over the C - 1 wrong classes instead of all C.

loss = (1 - eps)(-l_t) + eps/(C-1) * sum_{c != t} (-l_c): a common reading of
"label smoothing" that differs from torch's (1 - eps)(-l_t) + eps/C * sum_c (-l_c).
Everything else (shift, working precision, ignore_index, mean) is textbook.
"""

import numpy as np


def cross_entropy(logits, target, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    x = logits.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    rows, n = x.shape
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    nll = -logp[np.arange(rows), t]
    others = -(logp.sum(axis=-1)) - nll
    loss = (1 - label_smoothing) * nll + label_smoothing / (n - 1) * others
    loss = np.where(keep, loss, 0.0)
    if reduction == "mean":
        return np.asarray(loss.sum() / keep.sum()).astype(logits.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum()).astype(logits.dtype)
    return loss.astype(logits.dtype)
