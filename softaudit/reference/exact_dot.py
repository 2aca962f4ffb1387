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

The slice products are then added into a double-double (TwoSum on both parts, the low part's
dropped bits summed), so the result is hi + lo with a bound ``err`` that is 0 exactly when
nothing was dropped: then hi + lo is the exact product. Slicing stops when every remainder is 0 (the product is exact), at ``stop`` (a
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


def product_bits(n: int) -> int:
    """The bits two slices' entries may have together for n of their products to sum exactly."""
    return 53 - max(1, math.ceil(math.log2(max(n, 2))))


def slice_bits(n: int) -> int:
    """w: the bits per slice, split evenly between both sides (Ozaki's choice)."""
    return product_bits(n) // 2


@dataclass
class Split:
    """A (rows, n) array as 2^scale (sum of slices + rest), row by row."""

    slices: list[np.ndarray]
    scale: np.ndarray
    """(rows,) int64: each row was multiplied by 2^-scale."""
    scaled: np.ndarray | None
    """|the scaled array| (its parts' magnitudes, and the extra bound), for bounding products;
    None for a split that is its one exact slice (|slice| then)."""
    rest: np.ndarray | None
    """|what the slices leave out| (scaled; the extra bound included), or None: nothing."""

    def magnitude(self) -> np.ndarray:
        """|the scaled array| (see ``scaled``)."""
        return np.abs(self.slices[0]) if self.scaled is None else self.scaled


def _pow2(e: np.ndarray) -> np.ndarray:
    """2^e as float64 for integer e in [-1022, 1023] (exact)."""
    return np.ldexp(1.0, e.astype(np.int64))


def _scale_by(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """x 2^e row by row (e (rows,) ints in [-2100, 2100]), in two exact power-of-two steps."""
    half = e // 2
    return x * _pow2(half)[:, None] * _pow2(e - half)[:, None]


def split_rows(parts: Sequence[np.ndarray], n: int, stop: int = EXACT,
               extra: np.ndarray | None = None, bits: int | None = None) -> Split:
    """Slice sum(parts) (each (rows, n) float64, finite) row by row into slices of ``bits`` bits
    (default slice_bits(n); the two sides of a product must together stay within
    product_bits(n)); ``extra`` (>= 0) is a bound on an error of the value the parts stand for,
    carried into ``rest``."""
    parts = [np.asarray(p, dtype=np.float64) for p in parts]
    rows = parts[0].shape[0]
    w = slice_bits(n) if bits is None else bits
    big = np.zeros(rows)
    for p in parts:
        if p.shape[1]:
            big = np.maximum(big, np.max(np.abs(p), axis=1))
    _, e = np.frexp(big)
    scale = np.where(big > 0, e, 0).astype(np.int64)
    slices: list[np.ndarray] = []
    magnitude = np.zeros(parts[0].shape)
    rest = np.zeros(parts[0].shape)
    with np.errstate(under="ignore"):
        for p in parts:
            r = _scale_by(p, -scale)  # exact unless an entry falls below 2^-1022 (rows scaled down)
            down = scale > 0
            lost = np.zeros(p.shape, dtype=bool)
            if down.any():
                lost[down] = _scale_by(r[down], scale[down]) != p[down]
            magnitude += np.abs(r)
            for _ in range(MAX_SLICES):
                mu = np.max(np.abs(r), axis=1) if r.shape[1] else np.zeros(rows)
                _, er = np.frexp(mu)
                live = (mu > 0) & (er > -stop) & (er - w >= MIN_UNIT)
                if not live.any():
                    break
                # Rows with nothing left to take get factors 0: their slice is 0.
                unit = np.where(live, _pow2(np.where(live, er - w, 0)), 0.0)[:, None]
                inv = np.where(live, _pow2(np.where(live, w - er, 0)), 0.0)[:, None]
                s = np.rint(r * inv) * unit
                slices.append(s)
                r = r - s
            rest += np.abs(r)
            if lost.any():
                rest += np.where(lost, 2.0**-1022, 0.0)
    if extra is not None:
        ex = _scale_by(np.asarray(extra, dtype=np.float64), -scale)
        ex = np.where(np.asarray(extra) > 0, np.maximum(ex, TINY), 0.0)
        rest += ex
        magnitude += ex
    return Split(slices, scale, magnitude, rest if rest.any() else None)


def fit(b: np.ndarray, n: int, p: int = 53) -> tuple[int, Split]:
    """(bits for A's slices, B's split) for A @ B.T with B holding values of a p-bit format.

    Where every row of B needs at most product_bits(n) - 12 bits below its maximum (from its
    largest exponent to the last bit of its smallest nonzero entry) and every entry lies in
    [2^-400, 2^400] (no product with a scaled slice can underflow), B is its own single exact
    slice, unscaled and uncopied, and A gets the remaining bits: the product then needs as many
    matmuls as A has slices. Otherwise Ozaki's even split.
    """
    total = product_bits(n)
    v = np.abs(b)
    if v.size and v.any():
        top = np.frexp(v.max(axis=1))[1].astype(np.int64)
        small = np.where(v > 0, v, np.inf).min(axis=1)
        nonzero = np.isfinite(small)
        bottom = np.frexp(np.where(nonzero, small, 1.0))[1].astype(np.int64) - p
        need = int(np.max(np.where(nonzero, top - bottom, 1)))
        in_range = bool(np.all(~nonzero | ((small >= 2.0**-400) & (v.max(axis=1) <= 2.0**400))))
        if need <= total - 12 and in_range:
            return total - need, Split([b], np.zeros(b.shape[0], dtype=np.int64), None, None)
    return total // 2, split_rows([b], n, bits=total // 2)


@dataclass
class Product:
    """A @ B.T as 2^scale (hi + lo) with |exact - 2^scale (hi + lo)| <= 2^scale err."""

    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    scale: tuple[np.ndarray, np.ndarray]
    """The exponents of A's rows and of B's: element (i, j) is scaled by 2^(row_i + col_j)."""

    def unscaled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hi, lo, err, trusted): the product itself; trusted where no part left float64's normal
        range on the way (else the caller must not use the element)."""
        row, col = self.scale
        with np.errstate(under="ignore", over="ignore"):
            f = [_pow2(e)[:, None] for e in (row // 2, row - row // 2)]
            g = [_pow2(e)[None, :] for e in (col // 2, col - col // 2)]
            hi, lo, err = ((x * f[0] * g[0]) * f[1] * g[1] for x in (self.hi, self.lo, self.err))
        err = np.where(self.err > 0, np.maximum(err, TINY), 0.0)
        a = np.abs(hi)
        trusted = (np.isfinite(err) & (a <= 2.0**960) & ((a >= 2.0**-960) | (self.hi == 0))
                   & ((np.abs(lo) >= 2.0**-1021) | (self.lo == 0)))
        return hi, lo, err, trusted


def product(a: Split, b: Split, n: int, double: bool = True) -> Product:
    """A @ B.T from their splits (contraction length n, slice widths within product_bits(n)),
    every slice product exact; added into a double-double, or (``double`` False, cheaper) into
    float64 with each addition's rounding (u of its result) in the bound."""
    rows, cols = a.scale.shape[0], b.scale.shape[0]
    hi = np.zeros((rows, cols))
    lo = np.zeros((rows, cols))
    err = np.zeros((rows, cols))
    order = sorted(((p, q) for p in range(len(a.slices)) for q in range(len(b.slices))), key=lambda pq: pq[0] + pq[1])
    for j, (p, q) in enumerate(order):
        t = a.slices[p] @ b.slices[q].T
        if j == 0:
            hi = t
            continue
        if not double:
            hi = hi + t
            err += np.abs(hi)
            continue
        hi, e = two_sum(hi, t)
        lo, e2 = two_sum(lo, e)
        err += np.abs(e2)  # what the low part's addition dropped, exactly: 0 where it dropped nothing
    if double:
        hi, lo = two_sum(hi, lo)
        err = err * (1 + 2.0**-40)
    elif len(order) > 1:
        # u |result| per addition; a bound that underflows loses under 2^-1074 an addition.
        err = err * (U * (1 + 2.0**-40)) + (len(order) - 1) * TINY
    gamma = 1 + 2 * (n + 2) * U
    floor = (n + 2) * 2.0**-1072  # products that underflow, on the rows (columns) with a rest
    if a.rest is not None:
        err += (a.rest @ b.magnitude().T) * gamma + floor * np.any(a.rest, axis=1, keepdims=True)
    if b.rest is not None:
        err += (((a.magnitude() + (a.rest if a.rest is not None else 0.0)) @ b.rest.T) * gamma
                + floor * np.any(b.rest, axis=1)[None, :])
    return Product(hi, lo, err, (a.scale, b.scale))


__all__ = ["EXACT", "MAX_SLICES", "Product", "Split", "TINY", "fit", "product", "product_bits", "slice_bits",
           "split_rows"]
