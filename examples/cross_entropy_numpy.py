"""A numpy cross-entropy with label smoothing, ignore_index and its gradient (no class weights).

The forward pass goes through the max-shifted log-softmax in float32 (float64 for
float64 input), with torch's semantics for label_smoothing, ignore_index and the
reductions. The backward pass follows softaudit's convention for numpy
candidates, cross_entropy_backward(logits, target, dloss, **the same keywords),
and returns dL/dlogits. It takes no `weight` keyword, so cases with class
weights are skipped for it, with that reason in the report.
"""

import numpy as np


def _work(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _log_softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _smoothed_targets(target, n, label_smoothing, ignore_index, dtype):
    """q' = (1 - eps) one_hot(t) + eps / C, and the mask of counted rows."""
    if target.ndim == 2:  # probability targets
        return (1 - label_smoothing) * target.astype(dtype) + label_smoothing / n, np.ones(len(target), bool)
    keep = target != ignore_index
    if np.any(keep & ((target < 0) | (target >= n))):
        raise IndexError(f"target out of range [0, {n})")
    q = np.full((len(target), n), label_smoothing / n, dtype=dtype)
    rows = np.flatnonzero(keep)
    q[rows, target[rows]] += 1 - label_smoothing
    return q, keep


def cross_entropy(logits, target, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    x = _work(logits)
    logp = _log_softmax(x)
    q, keep = _smoothed_targets(target, x.shape[-1], label_smoothing, ignore_index, x.dtype)
    # 0 * (-inf) is a NaN in floating point, but a zero target weight contributes nothing.
    terms = np.where(q > 0, -q * np.where(q > 0, logp, 0), 0)
    loss = np.where(keep, terms.sum(axis=-1), 0)
    if reduction == "mean":
        return np.asarray(loss.sum() / keep.sum()).astype(logits.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum()).astype(logits.dtype)
    return loss.astype(logits.dtype)


def cross_entropy_backward(logits, target, dloss, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    x = _work(logits)
    p = np.exp(_log_softmax(x))
    q, keep = _smoothed_targets(target, x.shape[-1], label_smoothing, ignore_index, x.dtype)
    g = np.broadcast_to(np.asarray(dloss, dtype=x.dtype), keep.shape)
    if reduction == "mean":
        g = g / keep.sum()
    grad = g[:, None] * (q.sum(axis=-1, keepdims=True) * p - q)
    return np.where(keep[:, None], grad, 0).astype(logits.dtype)
