"""Softmax family in float64 (long double for float64 input), rounded once (correct)."""
import numpy as np


def _wide(x):
    return x.astype(np.longdouble if x.dtype == np.float64 else np.float64)


def softmax(x):
    z = _wide(x)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def log_softmax(x):
    z = _wide(x)
    d = z - z.max(axis=-1, keepdims=True)
    return (d - np.log(np.exp(d).sum(axis=-1, keepdims=True))).astype(x.dtype)


def logsumexp(x):
    z = _wide(x)
    m = z.max(axis=-1)
    m = np.where(np.isinf(m), 0, m)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(z - m[:, None]).sum(axis=-1))).astype(x.dtype)


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    z = _wide(logits)
    rows, n = z.shape
    d = z - z.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = d - np.log(np.exp(d).sum(axis=1, keepdims=True))
    w = np.ones(n, dtype=z.dtype) if weight is None else _wide(np.asarray(weight))
    if target.ndim == 2:
        coef = ((1 - label_smoothing) * _wide(target) + label_smoothing / n) * w
        keep = np.ones(rows, dtype=bool)
        denom = rows
    else:
        keep = target != ignore_index
        if np.any(keep & ((target < 0) | (target >= n))):
            raise IndexError("target out of range")
        t = np.where(keep, target, 0)
        coef = np.zeros((rows, n), dtype=z.dtype) + (label_smoothing / n) * w
        coef[np.arange(rows), t] += (1 - label_smoothing) * w[t]
        denom = np.where(keep, w[t], 0).sum()
    with np.errstate(invalid="ignore"):
        loss = np.where(keep, np.where(coef != 0, -coef * lp, 0).sum(axis=1), 0)
    if reduction == "none":
        return loss.astype(logits.dtype)
    total = loss.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total if reduction == "sum" else total / denom).astype(logits.dtype)
