"""An online softmax over tiles of 1024 (float32 arithmetic for 16-bit inputs) with a bug that the
case library does not catch: its remainder step (the last, partial tile) forgets to rescale the
running sum when the max rises there. Rows shorter than a tile, rows that are a whole number of
tiles and rows whose max lies elsewhere are right, so `softaudit run` passes it in every format;
`softaudit search examples/tiled_softmax.py --op softmax` finds the bug and shrinks it to one row
of 1025 (README, "Searching for failing inputs")."""

import numpy as np

TILE = 1024


def softmax(x):
    x = np.asarray(x)
    work = np.float64 if x.dtype == np.float64 else np.float32
    xw = x.astype(work)
    rows, n = xw.shape
    m = np.full(rows, -np.inf, dtype=work)
    s = np.zeros(rows, dtype=work)
    full = n // TILE * TILE
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, full, TILE):
            tile = xw[:, start:start + TILE]
            m_new = np.maximum(m, tile.max(axis=1))
            shift = np.where(m_new == -np.inf, 0, m_new).astype(work)
            s = s * np.exp(np.where(m == -np.inf, -np.inf, m - shift)) + np.exp(tile - shift[:, None]).sum(axis=1)
            m = m_new
        if full < n:
            tile = xw[:, full:]
            m_new = np.maximum(m, tile.max(axis=1))
            shift = np.where(m_new == -np.inf, 0, m_new).astype(work)
            s = s + np.exp(tile - shift[:, None]).sum(axis=1)  # the bug: s is not rescaled to the new max
            m = m_new
        shift = np.where(m == -np.inf, 0, m).astype(work)
        return (np.exp(xw - shift[:, None]) / s[:, None]).astype(x.dtype)
