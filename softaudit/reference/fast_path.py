"""What the certified fast paths share: the FastPath protocol, their result types and array plumbing.

A fast path computes references in numpy at a fixed working precision with a rigorous error bound
per element and marks what it proves (fast_long_double: long double, for the narrow formats;
fast_double_double: double-double, for float64). The exact engine (exact, gradients, loss) takes
those results and computes only the elements left unproven, so both paths return the same types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol

import numpy as np

from softaudit.formats import Format

if TYPE_CHECKING:
    from softaudit.cases.inputs import LossInputs


REQUIRED_ULP_ACCURACY = 2.0**-16
"""A value the fast path stores is known to this many ulps (1.5e-5: reported ulp errors, which
reports print to 3 or 4 digits, are exact to 5; the mpmath engine keeps 2^-30). Tighter sends
the elements whose computation cancels (a gradient dy_i - c with dy_i within ~1e-5 of c: one
or two per 262,144-wide float32 row at 2^-20) to mpmath, which must then recompute the whole
row (seconds), for digits no report shows; the rounding itself is proven either way."""


@dataclass
class Certified:
    """Elements in the stored form (see exact.OpReference), and which of them are proven."""

    rounded: np.ndarray
    k: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    ok: np.ndarray


def zero_entry(fmt: Format, shape: tuple[int, ...]) -> Certified:
    """Exact zeros (or values below 2^-66 of the smallest subnormal), as the mpmath engine stores them."""
    return Certified(np.zeros(shape), np.full(shape, fmt.emin - fmt.p + 1, dtype=np.int64),
                     np.zeros(shape), np.zeros(shape), np.ones(shape, dtype=bool))


def put(dst: Certified, mask: np.ndarray, src: Certified, compact: bool = False) -> None:
    """dst[mask] = src[mask], field by field (src broadcast to dst's shape); with ``compact``,
    src holds only the masked elements, in order."""
    for name in ("rounded", "k", "hi", "lo", "ok"):
        value = getattr(src, name)
        getattr(dst, name)[mask] = value if compact else np.broadcast_to(value, mask.shape)[mask]


def unproven(shape: tuple[int, ...]) -> Certified:
    """Entries of ``shape`` with nothing proven yet (every ok False)."""
    return Certified(np.zeros(shape), np.zeros(shape, dtype=np.int64), np.zeros(shape), np.zeros(shape),
                     np.zeros(shape, dtype=bool))


def store_rows(dst: Certified, idx: np.ndarray, src: Certified) -> None:
    """dst[idx] = src, field by field (whole rows)."""
    for name in ("rounded", "k", "hi", "lo", "ok"):
        getattr(dst, name)[idx] = getattr(src, name)


def store_where(dst: Certified, row: int, cols: np.ndarray, src: Certified) -> None:
    """dst[row, cols] = src, field by field."""
    for name in ("rounded", "k", "hi", "lo", "ok"):
        getattr(dst, name)[row, cols] = getattr(src, name)


def special_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows holding NaN, rows whose exact answer is undefined: a +inf or every entry -inf)."""
    nan_rows = np.isnan(x).any(axis=1)
    undefined = ~nan_rows & ((x == np.inf).any(axis=1) | (x == -np.inf).all(axis=1))
    return nan_rows, undefined


def row_chunks(rows: int, n: int, chunk_elements: int) -> list[slice]:
    """Slices of rows holding about ``chunk_elements`` elements each (at least one row): each path
    takes the size its arrays work fastest at."""
    step = max(1, chunk_elements // max(n, 1))
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)]


def cut(fmt: Format, n: int, margin: float = 0.0) -> float:
    """Terms exp(d) with d below this move no output by 2^-66 of the smallest subnormal
    (the mpmath engine's cut at its base precision); ``margin`` lowers it for outputs that
    multiply probabilities by factors above 1."""
    return (fmt.emin - fmt.p - 66) * math.log(2) - math.log(max(n, 1)) - margin


def cut_term(d_cut: np.ndarray) -> np.ndarray:
    """An upper bound of exp(d) for every d below the cut, never 0: exp(d_cut) underflows below
    -745 (float64's cut is there), and a zero bound on a cut-off tail would be taken as proof that
    the tail is absent. The smallest subnormal stands in: larger, so still a bound."""
    with np.errstate(under="ignore"):
        return np.maximum(np.exp(d_cut), np.nextafter(0.0, 1.0))


@dataclass
class ForwardFast:
    """The fast path's forward references of a (rows, n) input; ``ok`` False where mpmath must decide."""

    ops: dict[str, Certified]
    amax: np.ndarray
    log_s: np.ndarray
    undefined: np.ndarray


def forward_frame(x: np.ndarray, fmt: Format) -> tuple[ForwardFast, np.ndarray]:
    """The forward result with its special rows settled (no arithmetic) and every other entry
    still unproven; and the ordinary rows' indices, for a fast path to fill."""
    rows, n = x.shape
    zero_k = fmt.emin - fmt.p + 1
    ops = {"softmax": unproven((rows, n)), "log_softmax": unproven((rows, n)), "logsumexp": unproven((rows,))}
    amax = np.full(rows, np.nan)
    log_s = np.full(rows, np.nan)
    nan_rows, undefined = special_rows(x)
    for op, c in ops.items():  # NaN rows: NaN everywhere; undefined rows: NaN filler (the logsumexp below)
        fill = nan_rows | undefined if op != "logsumexp" else nan_rows
        c.rounded[fill] = np.nan
        c.hi[fill] = np.nan
        c.k[fill] = np.where(undefined[fill], 0, zero_k)[(...,) + (None,) * (c.k.ndim - 1)]
        c.ok[fill] = True
    lse = ops["logsumexp"]
    with np.errstate(invalid="ignore"):
        amax[undefined] = x[undefined].max(axis=1)
    lse.rounded[undefined] = np.where((x[undefined] == np.inf).any(axis=1), np.inf, -np.inf)
    lse.k[undefined] = zero_k
    lse.ok[undefined] = True
    return ForwardFast(ops, amax, log_s, undefined), np.flatnonzero(~nan_rows & ~undefined)


@dataclass
class LossCoefficients:
    """coef_ic (the loss's weights of -log_softmax, reference.loss) in a path's working precision,
    with what is exact about them."""

    coef: np.ndarray
    """(rows, n) in the working type (long double, or the high float64 of a double-double); 0 on
    ignored and out-of-range rows."""
    positive: np.ndarray
    """(rows, n) bool, exact: coef_ic > 0."""
    rel: float
    """Relative error bound of every coef_ic."""
    ignored: np.ndarray
    out_of_range: np.ndarray
    totals: list
    """A_i = sum_c coef_ic per row, exact (Fractions)."""
    coef_lo: np.ndarray
    """(rows, n) float64: coef + coef_lo is coef_ic within ``rel`` (0 where the working type holds
    it in one number, as long double does)."""


@dataclass
class RowLosses:
    """Per-row cross-entropy: the kind of each row, the value of the finite ones with its bound,
    and their certified entries."""

    kind: np.ndarray
    """Per row: "finite", "zero", "nan", "+inf" or "undefined", decided exactly (row_kinds)."""
    hi: np.ndarray
    lo: np.ndarray
    """(rows,) float64: the loss is hi + lo (0 on the rows that are not finite)."""
    err: np.ndarray
    """(rows,) float64: a bound on |exact - (hi + lo)|."""
    entries: Certified
    """The finite rows' entries, in row order (``kind == "finite"``); ok False where the path could
    not prove the rounding (the exact engine computes those rows)."""


def row_kinds(x: np.ndarray, lc: LossCoefficients) -> np.ndarray:
    """Each row's kind of loss ("finite", "zero", "nan", "+inf", "undefined"), decided exactly."""
    rows = x.shape[0]
    kind = np.full(rows, "finite", dtype=object)
    nan_rows, undefined = special_rows(x)
    masked = x == -np.inf
    inf_rows = (masked & lc.positive).any(axis=1)
    one_finite = (~masked).sum(axis=1) == 1
    no_weight = ~lc.positive.any(axis=1)
    kind[no_weight | one_finite] = "zero"
    kind[inf_rows] = "+inf"
    kind[undefined] = "undefined"
    kind[nan_rows | lc.out_of_range] = "nan"
    kind[lc.ignored] = "zero"
    return kind


class FastPath(Protocol):
    """A certified fast path: every method returns entries with ``ok`` False where it proved nothing."""

    name: str

    def applies(self, fmt: Format) -> bool:
        """Whether this path certifies references in ``fmt`` on this machine."""
        ...

    def forward(self, x: np.ndarray, fmt: Format) -> ForwardFast:
        """softmax, log_softmax and logsumexp of every row of ``x`` (rows, n)."""
        ...

    def backward(self, op: str, x: np.ndarray, dy: np.ndarray, fmt: Format) -> tuple[Certified, np.ndarray]:
        """The VJP of ``op`` at ``x`` for upstream ``dy``, and the rows it covered (NaN and undefined
        rows are left to the caller)."""
        ...

    def loss_coefficients(self, loss: LossInputs, rows: int, n: int) -> LossCoefficients:
        """Cross-entropy's coef_ic for every row, in this path's working precision."""
        ...

    def row_losses(self, x: np.ndarray, lc: LossCoefficients, fmt: Format) -> RowLosses:
        """Per-row cross-entropy of logits ``x`` with the coefficients ``lc``."""
        ...

    def loss_gradient(self, x: np.ndarray, lc: LossCoefficients, scale: list[Fraction],
                      fmt: Format) -> tuple[Certified, np.ndarray]:
        """Cross-entropy's gradient G_ic = g_i (A_i p_ic - coef_ic), ``scale`` the exact g_i; and the
        rows it covered."""
        ...
