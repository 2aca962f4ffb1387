"""Single-pass tiled softmax in numpy, as a fused kernel would do it (planted corpus)."""
import numpy as np

TILE = 256


def _w(x):
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _stats(z):
    rows, n = z.shape
    m = np.full((rows, 1), -np.inf, dtype=z.dtype)
    s = np.zeros((rows, 1), dtype=z.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for lo in range(0, n, TILE):
            blk = z[:, lo:lo + TILE]
            m_new = np.maximum(m, blk.max(axis=-1, keepdims=True))
            s = s * np.exp(m - m_new) + np.exp(blk - m_new).sum(axis=-1, keepdims=True)
            m = m_new
    return m, s


def softmax(x):
    z = _w(x)
    m, s = _stats(z)
    with np.errstate(invalid="ignore"):
        return (np.exp(z - m) / s).astype(x.dtype)


def logsumexp(x):
    z = _w(x)
    m, s = _stats(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m + np.log(s))[:, 0].astype(x.dtype)
