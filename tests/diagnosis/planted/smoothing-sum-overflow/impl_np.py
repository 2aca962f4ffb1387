"""Numpy cross-entropy: the smoothing term as a plain sum of -log p over the classes, scaled after (planted corpus)."""
import numpy as np


def _work(a):
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.itemsize < 4 else a


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    z = _work(logits)
    rows, n = z.shape
    d = z - z.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lp = d - np.log(np.exp(d).sum(axis=1, keepdims=True))
        w = np.ones(n, dtype=z.dtype) if weight is None else _work(weight).astype(z.dtype)
        smooth = (w * -lp).sum(axis=1) / n          # sums huge -log p of masked classes first
        if target.ndim == 2:
            q = _work(target).astype(z.dtype)
            hard = np.where(q != 0, -q * w * lp, 0).sum(axis=1)
            keep = np.ones(rows, dtype=bool)
            denom = rows
        else:
            keep = target != ignore_index
            if np.any(keep & ((target < 0) | (target >= n))):
                raise IndexError("target out of range")
            t = np.where(keep, target, 0)
            hard = -w[t] * lp[np.arange(rows), t]
            denom = np.where(keep, w[t], 0).sum()
        loss = (1 - label_smoothing) * hard + (label_smoothing * smooth if label_smoothing else 0)
        loss = np.where(keep, loss, 0)
        if reduction == "none":
            return loss.astype(logits.dtype)
        total = loss.sum()
        return np.asarray(total if reduction == "sum" else total / denom).astype(logits.dtype)
