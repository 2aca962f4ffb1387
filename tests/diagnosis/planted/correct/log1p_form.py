"""logsumexp and log_softmax in the log1p form: m + log1p(sum of the others) (correct)."""
import numpy as np


def _w(x):
    return x.astype(np.float64) if x.dtype.itemsize < 8 else x


def _rest(d):
    # d = x - max; the max's own term (exactly 1) is left out of the sum
    k = np.argmax(d, axis=-1)
    e = np.exp(d)
    e[np.arange(d.shape[0]), k] = 0.0
    return e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    z = _w(x)
    d = z - z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = d - np.log1p(_rest(d))
    return np.where(np.isnan(d.max(axis=-1, keepdims=True)), np.nan, out).astype(x.dtype)


def logsumexp(x):
    z = _w(x)
    m = z.max(axis=-1, keepdims=True)
    shift = np.where(np.isfinite(m), m, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        body = shift + np.log1p(_rest(z - shift))
    out = np.where(np.isinf(m) | np.isnan(m), m, body)
    return out[:, 0].astype(x.dtype)
