"""Numpy cross-entropy with torch's keywords (planted corpus)."""
import numpy as np


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    z = logits.astype(np.float64)
    rows, n = z.shape
    m = z.max(axis=1, keepdims=True)
    lp = (z - m) - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if target.ndim == 2:
        coef = ((1 - label_smoothing) * target.astype(np.float64) + label_smoothing / n) * w
        keep = np.ones(rows, dtype=bool)
    else:
        keep = target != ignore_index
        t = np.where(keep, target, 0)
        coef = np.full((rows, n), label_smoothing / n) * w
        coef[np.arange(rows), t] += (1 - label_smoothing) * w[t]
    with np.errstate(invalid="ignore"):
        loss = np.where(keep, -np.where(coef != 0, coef * lp, 0.0).sum(axis=1), 0.0)
    if reduction == "none":
        return loss.astype(logits.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum()).astype(logits.dtype)
    return np.asarray(loss.mean()).astype(logits.dtype)
