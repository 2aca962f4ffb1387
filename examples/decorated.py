"""Two named candidates in one file, declared with the @candidate decorator.

"two-pass" is the textbook algorithm (one pass for the max, one for the sum);
"online" is the single-pass online softmax (running max m and running sum s,
rescaled by exp(m_old - m_new) when the max grows), processing columns in
blocks as a fused kernel would. Both work in float32 for 16-bit inputs and
guard infinite maxima, so both should pass; the report compares them.
The decorator names each candidate and states its op and backend, so the
functions may have any name:

    softaudit run examples/decorated.py
"""

import numpy as np

from softaudit import candidate

_BLOCK = 1024


def _working(x):
    """x in float32 for 16-bit formats, else as is."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _finite_or_zero(m):
    """m with ±inf replaced by 0: logsumexp then gives -inf for masked rows, +inf for +inf entries."""
    return np.where(np.isinf(m), np.zeros_like(m), m)


@candidate("two-pass", op="softmax", backend="numpy")
def two_pass_softmax(x):
    """Two passes: row max, then normalised exponentials."""
    w = _working(x)
    e = np.exp(w - w.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


@candidate("two-pass", backend="numpy")
def logsumexp(x):
    w = _working(x)
    m = _finite_or_zero(w.max(axis=-1, keepdims=True))
    return (m[:, 0] + np.log(np.exp(w - m).sum(axis=-1))).astype(x.dtype)


def _online_max_and_sum(w):
    """One pass over column blocks: the row max m and the sum s of exp(w - m)
    (with an infinite m taken as 0 for the sum)."""
    m = np.full(w.shape[:-1], -np.inf, dtype=w.dtype)
    s = np.zeros(w.shape[:-1], dtype=w.dtype)
    for start in range(0, w.shape[-1], _BLOCK):
        block = w[:, start:start + _BLOCK]
        m_new = np.maximum(m, block.max(axis=-1))
        shift = _finite_or_zero(m_new)
        # Rescale the old sum to the new max; m - shift <= 0 unless m is +inf,
        # and exp(-inf - shift) = 0 empties the sum before the first finite max.
        s = s * np.exp(m - shift) + np.exp(block - shift[:, None]).sum(axis=-1)
        m = m_new
    return m, s


@candidate("online", op="softmax", backend="numpy")
def online_softmax(x):
    """Single pass for max and sum (online softmax), then one to normalise."""
    w = _working(x)
    m, s = _online_max_and_sum(w)
    # An infinite max leaves softmax undefined: NaN, as torch gives.
    m = np.where(np.isinf(m), np.nan, m)
    return (np.exp(w - m[:, None]) / s[:, None]).astype(x.dtype)


@candidate("online", op="logsumexp", backend="numpy")
def online_logsumexp(x):
    w = _working(x)
    m, s = _online_max_and_sum(w)
    return (_finite_or_zero(m) + np.log(s)).astype(x.dtype)
