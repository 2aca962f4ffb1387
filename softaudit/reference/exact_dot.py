"""Error-free matrix products in float64 BLAS (Ozaki splitting), for the fused linear
cross-entropy's exact logits and its gradients (reference.linear_loss).

Ozaki, Ogita, Oishi and Rump, "Error-free transformations of matrix multiplication by using fast
routines of matrix multiplication and its applications" (Numer. Algorithms 59, 2012). Each row
of A and of B (the contraction runs along their last axis, length n) is scaled by a power of two
to a maximum in [1/2, 1), then cut into slices: slice j holds the row's remainder rounded to a
grid of unit 2^(e_j - w), where 2^e_j bounds the remainder and w = floor((53 - ceil(log2 n)) / 2).
A slice entry is an integer of at most w bits times its row's unit, so a product of an A slice
and a B slice is an integer of at most 2w bits times the pair's unit, and n of them sum to at
most 2^53 units: **every float64 matmul of two slices is exact, whatever order BLAS sums in**
(every partial sum is an integer number of units below 2^53). Rounding to the grid (rint of an
exact power-of-two scaling) and the remainder (a float minus its rounded self) are exact too.

The slice products are then added into a double-double (TwoSum, the low part's roundings
bounded), so the result is hi + lo with a bound ``err`` that is 0 when no low-part addition
rounded. Slicing stops when every remainder is 0 (the product is exact), at ``stop`` (a
remainder below 2^-stop of the row's maximum is left over and bounded), or at MAX_SLICES.
What is left over enters ``err`` through |rest| |B| in float64 rounded up, with a floor for the
products that underflow: **no bound is ever 0 where something was left out.**
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from softaudit.double_double import two_sum

U = 2.0**-53
TINY = 2.0**-1074
"""The smallest subnormal: a stand-in for a bound that underflows (a larger number, still a bound)."""
MAX_SLICES = 24
"""A row needs about (its exponent range + its precision) / w slices; past this many the rest is
bounded instead."""
MIN_UNIT = -500
"""No slice has a unit below 2^-500 (of its row's scaled maximum), so no product of two slice
entries underflows; what lies below is bounded as the rest."""
EXACT = 10_000
"""``stop`` for slicing until nothing is left (format values: the product is then exact)."""


def slice_bits(n: int) -> int:
    """w: the bits per slice for which n products of two slices sum exactly in float64."""
    return (53 - max(1, math.ceil(math.log2(max(n, 2))))) // 2


@dataclass
class Split:
    """A (rows, n) array as 2^scale (sum of slices + rest), row by row."""

    slices: list[np.ndarray]
    scale: np.ndarray
    """(rows,) int64: each row was multiplied by 2^-scale."""
    scaled: np.ndarray
    """|the scaled array| (its parts' magnitudes, and the extra bound), for bounding products."""
    rest: np.ndarray | None
    """|what the slices leave out| (scaled; the extra bound included), or None: nothing."""


def split_rows(parts: Sequence[np.ndarray], n: int, stop: int = EXACT,
               extra: np.ndarray | None = None) -> Split:
    """Slice sum(parts) (each (rows, n) float64, finite) row by row; ``extra`` (>= 0) is a bound
    on an error of the value the parts stand for, carried into ``rest``."""
    parts = [np.asarray(p, dtype=np.float64) for p in parts]
    w = slice_bits(n)
    big = np.max(np.abs(parts[0]), axis=1) if parts[0].shape[1] else np.zeros(parts[0].shape[0])
    for p in parts[1:]:
        big = np.maximum(big, np.max(np.abs(p), axis=1)) if p.shape[1] else big
    _, e = np.frexp(big)
    scale = np.where(big > 0, e, 0).astype(np.int64)
    slices: list[np.ndarray] = []
    magnitude = np.zeros(parts[0].shape)
    rest = np.zeros(parts[0].shape)
    with np.errstate(under="ignore"):
        for p in parts:
            r = np.ldexp(p, -scale[:, None])  # exact unless an entry falls below 2^-1022
            lost = np.ldexp(r, scale[:, None]) != p
            magnitude += np.abs(r)
            for _ in range(MAX_SLICES):
                mu = np.max(np.abs(r), axis=1)
                if not mu.any():
                    break
                _, er = np.frexp(mu)
                live = (mu > 0) & (er > -stop) & (er - w >= MIN_UNIT)
                if not live.any():
                    break
                # Rows with nothing left to take get a unit so large that their slice is 0.
                unit = np.where(live, er - w, 1100).astype(np.int64)[:, None]
                s = np.ldexp(np.rint(np.ldexp(r, -unit)), unit)
                slices.append(s)
                r = r - s
            rest += np.abs(r) + np.where(lost, 2.0**-1022, 0.0)
    if extra is not None:
        ex = np.ldexp(np.asarray(extra, dtype=np.float64), -scale[:, None])
        ex = np.where(np.asarray(extra) > 0, np.maximum(ex, TINY), 0.0)
        rest += ex
        magnitude += ex
    return Split(slices, scale, magnitude, rest if rest.any() else None)


@dataclass
class Product:
    """A @ B.T as 2^scale (hi + lo) with |exact - 2^scale (hi + lo)| <= 2^scale err."""

    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    scale: np.ndarray
    """(rows of A, rows of B) int64."""

    def unscaled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hi, lo, err, trusted): the product itself; trusted where no part left float64's normal
        range on the way (else the caller must not use the element)."""
        with np.errstate(under="ignore", over="ignore"):
            hi = np.ldexp(self.hi, self.scale)
            lo = np.ldexp(self.lo, self.scale)
            err = np.ldexp(self.err, self.scale)
        err = np.where(self.err > 0, np.maximum(err, TINY), 0.0)
        a = np.abs(hi)
        trusted = np.isfinite(hi) & np.isfinite(err) & ((a == 0) | ((a >= 2.0**-960) & (a <= 2.0**960))) \
            & ((self.lo == 0) | (np.abs(lo) >= 2.0**-1021))
        return hi, lo, err, trusted


def product(a: Split, b: Split, n: int) -> Product:
    """A @ B.T from their splits (contraction length n), every slice product exact."""
    rows, cols = a.scaled.shape[0], b.scaled.shape[0]
    hi = np.zeros((rows, cols))
    lo = np.zeros((rows, cols))
    err = np.zeros((rows, cols))
    order = sorted(((p, q) for p in range(len(a.slices)) for q in range(len(b.slices))), key=lambda pq: pq[0] + pq[1])
    for p, q in order:
        t = a.slices[p] @ b.slices[q].T
        hi, e = two_sum(hi, t)
        lo = lo + e
        err += np.abs(lo)  # each low-part addition rounds by at most u of its result
    hi, lo = two_sum(hi, lo)
    err = err * (U * (1 + 2.0**-40))
    gamma = 1 + 2 * (n + 2) * U
    floor = (n + 2) * 2.0**-1072
    if a.rest is not None:
        err += (a.rest @ b.scaled.T) * gamma + floor
    if b.rest is not None:
        err += ((a.scaled + (a.rest if a.rest is not None else 0.0)) @ b.rest.T) * gamma + floor
    return Product(hi, lo, err, a.scale[:, None] + b.scale[None, :])


__all__ = ["EXACT", "MAX_SLICES", "Product", "Split", "TINY", "product", "slice_bits", "split_rows"]
