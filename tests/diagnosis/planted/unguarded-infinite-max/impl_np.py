"""Numpy logsumexp, shifted by the row max (planted corpus)."""
import numpy as np


def logsumexp(x):
    z = x.astype(np.float64)
    top = z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True)))[:, 0].astype(x.dtype)
