"""Certified fast references: extended-precision arithmetic with rigorous error bounds.

Correctly rounded math libraries evaluate in a wider format with an error bound
and fall back to slow exact arithmetic only where the bound cannot decide the
rounding (Ziv's strategy). This module is that fast path for softaudit's
references. Every element is computed with numpy in long double (x87 extended
precision on x86-64: a 64-bit significand, unit roundoff 2^-64) together with
a bound on its absolute error, and accepted when

* both ends of [v - err, v + err] round to the same value of the target
  format (so the class - zero, subnormal, infinity - is certain too; a zero's
  sign is not part of a reference), in the same binade (so ulp(exact) is
  certain), and
* err <= 2^-16 ulp(v) (:data:`REQUIRED_ULP_ACCURACY`), so reported ulp
  errors are exact to 5 digits (the mpmath engine keeps 2^-30).

Elements that fail either test are recomputed by the mpmath engine
(:mod:`softaudit.reference.exact`, :mod:`softaudit.reference.gradients`,
:mod:`softaudit.reference.loss`): the row's exact terms at Ziv's precision,
and only the failed elements taken from it.

The bounds rest on three facts: IEEE long double addition, multiplication and
division round to nearest (error <= u |result|); TwoSum gives the exact error
of an addition; and the C library's expl, logl and log1pl are within
:data:`LIBM_ULPS` ulps (tests/test_reference_fast.py measures them against
mpmath on every machine the tests run on). Intermediate bounds (FastTerms) are
sums of first-order terms; each output's bound doubles its sum once
(:data:`_SAFETY`), which covers the second-order terms (products of relative
errors under 2^-50).

The fast path applies to a format when long double carries at least
:data:`MARGIN_BITS` more bits than it: float32, float16 and bfloat16 on
x86-64. float64 targets (and every format where long double is only double,
e.g. on macOS/arm64 or MSVC) use the mpmath engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from softaudit.formats import Format, exact_dot, exact_sum
from softaudit.reference.fast_path import (
    REQUIRED_ULP_ACCURACY,
    Certified,
    ForwardFast,
    LossCoefficients,
    RowLosses,
    cut,
    cut_term,
    forward_frame,
    put,
    row_chunks,
    row_kinds,
    special_rows,
    store_rows,
    store_where,
    unproven,
    zero_entry,
)

if TYPE_CHECKING:
    from softaudit.cases.inputs import LossInputs

W = np.longdouble
"""The working type."""

W_BITS = int(np.finfo(W).nmant) + 1
"""Significand bits of the working type (64 on x86-64)."""

U_W = math.ldexp(1.0, -W_BITS)
"""Unit roundoff of the working type."""

LIBM_ULPS = 2.0
"""Assumed bound on the error of expl, logl and log1pl, in ulps of the result: twice the largest
error measured against mpmath (under 0.91 ulp on glibc; tests/test_reference_fast.py checks it)."""

_REL_LIBM = 2 * LIBM_ULPS * U_W
"""The same bound as a relative error (one ulp is at most 2u of the value)."""

MARGIN_BITS = 36
"""The fast path needs W_BITS >= p + MARGIN_BITS: its relative error bounds reach ~2^8 u
(|x_i - max| to ~2^8 before the cut where a subtraction was inexact, doubled), and for
elements to certify that must be under 2^-16 ulp, at least 2^-16 2^-p of the value: that
leaves room for a cancellation of 2^12 (x86-64's 64 bits against float32's 24)."""

_SAFETY = 2.0

CHUNK_ELEMENTS = 1 << 20
"""Rows are processed in chunks of about this many elements (long doubles take 16 bytes)."""


def applies(fmt: Format) -> bool:
    """Whether the fast path can certify references in ``fmt`` on this machine."""
    return W_BITS >= fmt.p + MARGIN_BITS


# --------------------------------------------------------------------------
# Rounding long doubles into a format, exactly


def ulp_exponents(v: np.ndarray, fmt: Format) -> np.ndarray:
    """k with ulp(v) = 2^k in fmt, per element (docs/formats.md#error-in-ulps; ulp(0) is the smallest subnormal);
    v long double or float64."""
    _, e2 = np.frexp(v)  # v = m 2^e2 with 0.5 <= |m| < 1: floor(log2 |v|) = e2 - 1
    k = np.maximum(e2.astype(np.int64) - 1, fmt.emin) - fmt.p + 1
    return np.where(v == 0, fmt.emin - fmt.p + 1, k)


def round_to_format(v: np.ndarray, fmt: Format, below: bool = False) -> np.ndarray:
    """Round finite long doubles correctly (nearest, ties to even) into fmt, as float64.

    With ``below``, round v - (an infinitesimal) instead: what a value just under an
    exactly known v rounds to (a midpoint goes down, 0 gives -0).
    """
    return _round_at(v, ulp_exponents(v, fmt), fmt, below)


def _round_at(v: np.ndarray, k: np.ndarray, fmt: Format, below: bool = False) -> np.ndarray:
    """round_to_format with ulp(v) = 2^k already known (v long double or float64)."""
    q = np.ldexp(v, -k)  # |q| < 2^(p+1) <= 2^64: exact, as are the rint and floor below
    n = np.rint(q)
    if below:
        f = np.where(n > q, n - 1, n)  # floor (numpy's long double floor is slow)
        frac = q - f
        n = np.where(frac == 0, q, np.where(frac <= 0.5, f, f + 1))
    out = np.ldexp(n, k).astype(np.float64)  # n 2^k has <= p + 1 bits: exact in float64
    with np.errstate(invalid="ignore"):
        big = np.abs(out) > fmt.max_finite
    out[big] = np.copysign(np.inf, out[big])
    if below:
        out[v == 0] = -0.0
    return out


def nudged(a: np.ndarray, direction: np.ndarray | int, fmt: Format) -> Certified:
    """Entries for exact values a + direction * (an infinitesimal): a known exactly (in W),
    direction +1 or -1, the perturbation far below 2^-60 ulp(a).

    Rounding goes the way the perturbation points at a midpoint (or at a zero's sign), and
    ulp(exact) drops to the binade below when a is a power of two and the perturbation points
    toward zero. The stored value is a itself (the perturbation is below the accuracy kept).
    """
    a = np.asarray(a, dtype=W)
    direction = np.broadcast_to(np.asarray(direction), a.shape)
    down = direction < 0
    r_down = round_to_format(a, fmt, below=True)
    r_up = -round_to_format(-a, fmt, below=True)
    rounded = np.where(down, r_down, r_up)
    mant, e2 = np.frexp(a)
    power_of_two = (np.abs(mant) == 0.5)
    toward_zero = (a > 0) & down | (a < 0) & ~down
    e = np.where(power_of_two & toward_zero, e2.astype(np.int64) - 2, e2.astype(np.int64) - 1)
    k = np.where(a == 0, fmt.emin - fmt.p + 1, np.maximum(e, fmt.emin) - fmt.p + 1)
    w = np.ldexp(a, -k)
    hi = w.astype(np.float64)
    lo = (w - hi.astype(W)).astype(np.float64)
    return Certified(rounded, k, hi, lo, np.ones(a.shape, dtype=bool))


def certify(v: np.ndarray, err: np.ndarray, fmt: Format) -> Certified:
    """Round v into fmt; ok where every real within ``err`` of v provably rounds the same way,
    in the same binade, and err <= REQUIRED_ULP_ACCURACY ulp(v). A zero's sign is not part of
    a reference (nothing judges it): a zero takes v's sign.

    The rounding test runs in float64 (numpy's long double functions are slow): v is split
    exactly into v64 + r, and the interval widened by |r| to [v64 - err - |r|, v64 + err + |r|],
    its ends stepped one float64 ulp outward. Wider than need be by 2^-53 |v|, about 2^-29 ulp
    for float32: the few elements that then straddle a boundary go to mpmath.
    """
    v = np.asarray(v, dtype=W)
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = (v - v64.astype(W)).astype(np.float64)  # exact: v64 is v rounded to 53 bits
        err = np.broadcast_to(np.asarray(err, dtype=np.float64), v.shape)
        widened = err + np.abs(r)
        widened = np.where(widened > 0, np.nextafter(widened, np.inf), 0.0)  # the sum rounded up
        lo_end = np.where(widened > 0, np.nextafter(v64 - widened, -np.inf), v64)
        hi_end = np.where(widened > 0, np.nextafter(v64 + widened, np.inf), v64)
        finite = np.isfinite(lo_end) & np.isfinite(hi_end) & (np.abs(v64) < 2.0**1000)
        lo_end = np.where(finite, lo_end, 0.0)
        hi_end = np.where(finite, hi_end, 0.0)
        k = ulp_exponents(lo_end, fmt)
        same_binade = k == ulp_exponents(hi_end, fmt)  # then v, between the ends, shares it
        r_lo = _round_at(lo_end, k, fmt)
        same = r_lo == _round_at(hi_end, k, fmt)  # a zero's sign is not part of a reference
        r_lo = np.where(r_lo == 0, np.copysign(0.0, v64), r_lo)
        hi = np.ldexp(np.where(finite, v64, 0.0), -k)  # exact scalings by powers of two
        lo = np.ldexp(np.where(finite, r, 0.0), -k)
        accurate = np.ldexp(err, -k) <= REQUIRED_ULP_ACCURACY
    ok = finite & same & same_binade & accurate
    return Certified(r_lo, k, hi, lo, ok)


# --------------------------------------------------------------------------
# Row terms


def pairwise_sum(values: np.ndarray) -> np.ndarray:
    """Sum along the last axis by halving, every addition compensated (TwoSum), in W.

    The halving sums carry their exact rounding errors in a second array, summed the same way
    (uncompensated) and added once at the end, so the result's error is at most
    u |sum| + depth^2 u^2 sum |terms| (depth = ceil(log2 n), :func:`sum_error`): a signed sum
    that cancels keeps nearly all its digits.
    """
    hi = values
    lo = np.zeros(values.shape, dtype=values.dtype)
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = np.zeros(hi.shape[:-1] + (1,), dtype=hi.dtype)
            hi = np.concatenate([hi, pad], axis=-1)
            lo = np.concatenate([lo, pad], axis=-1)
        half = hi.shape[-1] // 2
        a, b = hi[..., :half], hi[..., half:]
        total = a + b
        bb = total - a
        err = (a - (total - bb)) + (b - bb)  # TwoSum: a + b = total + err exactly
        lo = lo[..., :half] + lo[..., half:] + err
        hi = total
    if hi.shape[-1] == 0:
        return np.zeros(hi.shape[:-1], dtype=hi.dtype)
    return hi[..., 0] + lo[..., 0]


def sum_depth(n: int) -> int:
    """ceil(log2 n): the additions each term of a pairwise_sum over n takes part in."""
    return max(1, (max(n, 1) - 1).bit_length())


def sum_error(total: np.ndarray | float, abs_total: np.ndarray | float, n: int) -> np.ndarray:
    """The bound on pairwise_sum's rounding error: u |sum| + depth^2 u^2 sum |terms| (+1 for slack)."""
    depth = sum_depth(n)
    return U_W * np.abs(total) + (depth * depth + 1) * U_W * U_W * abs_total


@dataclass
class FastTerms:
    """The pieces of a chunk of ordinary rows (no NaN, no +inf, not all -inf) in W with bounds.

    Mirrors exact.RowTerms: d = x - max (exact up to d_err), e = exp(d) (0 below the cut
    and on masked entries), s = k_ties + t, L = log s. Every err_* bounds an absolute error,
    rel_* a relative one.
    """

    a: np.ndarray
    """Row maxima, (rows,) float64."""
    masked: np.ndarray
    is_max: np.ndarray
    live: np.ndarray
    """Entries whose exp is computed (not masked, not a max, d >= the cut)."""
    tail_entries: np.ndarray
    """Entries below the cut: each exp(d) < exp(d_cut), left out of the sums and bounded."""
    d: np.ndarray
    d_err: np.ndarray
    """|x - max - d| exactly (0 where the subtraction was exact), float64."""
    e: np.ndarray
    rel_e: np.ndarray
    k_ties: np.ndarray
    t: np.ndarray
    err_t: np.ndarray
    s: np.ndarray
    err_s: np.ndarray
    big_l: np.ndarray
    err_l: np.ndarray
    rel_p: np.ndarray
    """Relative error bound of p = e / s, less e's own (rel_e): (rows, 1)."""
    d_cut: np.ndarray
    """Per row (rows,): the cut (margins lower it row by row)."""
    tail: np.ndarray
    """Per row: a bound on the sum of the exps left out below the cut."""
    depth: int


def fast_terms(x: np.ndarray, fmt: Format, margin: float | np.ndarray = 0.0,
               counts: np.ndarray | None = None) -> FastTerms:
    """Row terms of ``x`` (rows, n) float64, every row ordinary. With ``counts`` (rows, n), x holds
    each row's distinct values and counts how often each occurs (the row length is the total):
    every per-value quantity is computed once."""
    rows, m = x.shape
    n = m if counts is None else int(counts.sum(axis=1).max())
    a = x.max(axis=1)
    masked = x == -np.inf
    is_max = x == a[:, None]
    xw = x.astype(W)
    aw = a.astype(W)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        d = xw - aw
        bb = d - xw
        d_err_w = (xw - (d - bb)) + (-aw - bb)  # TwoSum: x - a = d + d_err_w exactly
    d_err = np.where(masked, 0.0, np.abs(d_err_w.astype(np.float64)))
    d_cut_rows = np.asarray(cut(fmt, n) - np.asarray(margin, dtype=np.float64)).reshape(-1, 1)
    d_cut_rows = np.broadcast_to(d_cut_rows, (rows, 1))
    finite_d = np.where(masked, -np.inf, d)
    live = ~masked & ~is_max & (finite_d >= d_cut_rows)
    tail_entries = ~masked & ~is_max & ~live
    e = np.zeros(x.shape, dtype=W)
    with np.errstate(under="ignore"):
        e[live] = np.exp(d[live])
    e[is_max] = 1
    rel_e = np.where(live, _REL_LIBM + d_err * (1 + 2 * d_err), 0.0)
    depth = sum_depth(m)
    if counts is None:
        k_ties = is_max.sum(axis=1)
        t = pairwise_sum(np.where(is_max, W(0), e))
        tail = tail_entries.sum(axis=1) * cut_term(d_cut_rows[:, 0]) * 2  # x2: d may sit just below the cut
        rel_terms = rel_e.max(axis=1, initial=0.0)
    else:
        k_ties = (is_max * counts).sum(axis=1)
        t = pairwise_sum(np.where(is_max, W(0), e * counts.astype(W)))  # each product rounded once more
        tail = (tail_entries * counts).sum(axis=1) * cut_term(d_cut_rows[:, 0]) * 2
        rel_terms = rel_e.max(axis=1, initial=0.0) + U_W
    t64 = t.astype(np.float64)
    # First-order bounds here; each output's bound doubles their sum once (_SAFETY).
    err_t = t64 * rel_terms + sum_error(t64, t64, m) + tail
    s = k_ties.astype(W) + t
    s64 = s.astype(np.float64)
    exact_s = (t == 0) & (tail == 0)  # s = k_ties: an integer, exact
    err_s = err_t + np.where(exact_s, 0.0, U_W * s64)
    single = k_ties == 1
    with np.errstate(divide="ignore"):
        big_l = np.where(single, np.log1p(t), np.log(s))
    l64 = big_l.astype(np.float64)
    # d log1p(t) / dt = 1 / (1 + t) and d log(s) / ds = 1 / s: divide by the smallest value in reach.
    err_l = (np.where(single, err_t / np.maximum(1 + t64 - err_t, 0.5), err_s / np.maximum(s64 - err_s, 0.5))
             + _REL_LIBM * l64)
    rel_p = (err_s / s64)[:, None]
    return FastTerms(a, masked, is_max, live, tail_entries, d, d_err, e, rel_e, k_ties, t, err_t, s, err_s,
                     big_l, err_l, rel_p, d_cut_rows[:, 0].copy(), tail, depth)


# --------------------------------------------------------------------------
# Forward: softmax, log_softmax, logsumexp


def forward(x: np.ndarray, fmt: Format) -> ForwardFast:
    """softmax, log_softmax and logsumexp of every row, as exact.reference_rows stores them."""
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    ff, ordinary = forward_frame(x, fmt)
    ops, amax, log_s, undefined = ff.ops, ff.amax, ff.log_s, ff.undefined
    if n >= GROUP_MIN_N and fmt.p <= 11:
        # Long 16-bit rows hold a few thousand distinct values at most (65,536 at all): each
        # row's outputs are computed once per distinct value and gathered.
        for i in ordinary.tolist():
            uniq, inverse, counts = _distinct_16_bit(x[i], fmt)
            part = _forward_chunk(uniq[None, :], fmt, counts[None, :])
            amax[i], log_s[i] = part.pop("amax")[0], part.pop("log_s")[0]
            for op, c in part.items():
                for name in ("rounded", "k", "hi", "lo", "ok"):
                    if op == "logsumexp":
                        getattr(ops[op], name)[i] = getattr(c, name)[0]
                    else:  # gathered straight into the row (np.take: no temporary; "clip" is unbuffered)
                        np.take(getattr(c, name)[0], inverse, out=getattr(ops[op], name)[i], mode="clip")
        return ForwardFast(ops, amax, log_s, undefined)
    for chunk in row_chunks(ordinary.size, n, CHUNK_ELEMENTS):
        idx = ordinary[chunk]
        part = _forward_chunk(x[idx], fmt)
        amax[idx], log_s[idx] = part.pop("amax"), part.pop("log_s")
        for op, c in part.items():
            store_rows(ops[op], idx, c)
    return ForwardFast(ops, amax, log_s, undefined)


def _distinct_16_bit(row: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct values, index of each entry's value, counts) of a row of a 16-bit format, by
    counting bit patterns (no sort). +0 and -0 are counted apart (the same outputs)."""
    if fmt.name == "bfloat16":
        # A bfloat16 is the top half of a float32: float32 conversion (exact here) is far faster
        # than ml_dtypes' float64 -> bfloat16.
        bits = (row.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        bits = row.astype(fmt.np_dtype).view(np.uint16)  # exact: the row holds values of the format
    counts = np.bincount(bits, minlength=1 << 16)
    present = np.flatnonzero(counts)
    position = np.zeros(1 << 16, dtype=np.int64)
    position[present] = np.arange(present.size)
    if fmt.name == "bfloat16":
        values = (present.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        values = present.astype(np.uint16).view(fmt.np_dtype).astype(np.float64)
    return values, position[bits], counts[present]


GROUP_MIN_N = 4096
"""16-bit rows at least this long are computed per distinct value (forward.)"""


def _forward_chunk(x: np.ndarray, fmt: Format, counts: np.ndarray | None = None) -> dict:
    """The three ops' entries for ordinary rows x (or, with ``counts``, for the distinct values of
    one row: fast_terms); also "amax" and "log_s" per row."""
    ft = fast_terms(x, fmt, counts=counts)
    result: dict = {"amax": ft.a, "log_s": ft.big_l.astype(np.float64)}
    shape = x.shape

    # softmax: e / s; exactly 0 on masked entries; below the cut, 0 to within 2^-66 ulp(0).
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ft.e / ft.s[:, None]
    p_err = _SAFETY * p.astype(np.float64) * (ft.rel_e + ft.rel_p + U_W)
    # s = k exactly (every other entry masked) and k a power of two: p = 1/k is exact.
    exact_rows = (ft.t == 0) & (ft.tail == 0) & ((ft.k_ties & (ft.k_ties - 1)) == 0)
    p_err[exact_rows[:, None] & ft.is_max] = 0.0
    sm = certify(p, p_err, fmt)
    put(sm, ft.masked | ft.tail_entries, zero_entry(fmt, shape))
    negligible, kept_apart, top_entry = max_probability(ft, fmt)
    put(sm, (negligible | kept_apart)[:, None] & ft.is_max, top_entry)
    result["softmax"] = sm

    # log_softmax: d - L; -inf on masked entries.
    l_upper = (ft.big_l.astype(np.float64) + ft.err_l)[:, None]
    with np.errstate(invalid="ignore"):
        ls_v = ft.d - ft.big_l[:, None]
        ls_err = _SAFETY * (ft.d_err + ft.err_l[:, None] + U_W * np.abs(ls_v.astype(np.float64)))
    ls = certify(np.where(ft.masked, 0, ls_v), np.where(ft.masked, 0.0, ls_err), fmt)
    # L far below ulp(d) (< 2^-60 of it) and d exact: the value is d minus an infinitesimal, which
    # settles a d exactly halfway between two values of the format (no precision could).
    t_positive = ((ft.t > 0) | (ft.tail > 0))[:, None]
    d_safe = np.where(ft.masked, 0, ft.d)
    k_d = ulp_exponents(d_safe, fmt)
    with np.errstate(over="ignore"):
        negligible = (~ft.masked & (ft.d_err == 0) & t_positive
                      & (np.ldexp(np.broadcast_to(l_upper, shape), -k_d) < 2.0**-60))
    if negligible.any():
        put(ls, negligible, nudged(d_safe[negligible], -1, fmt), compact=True)
    masked_entry = Certified(np.full(shape, -np.inf), np.full(shape, fmt.emin - fmt.p + 1, dtype=np.int64),
                             np.zeros(shape), np.zeros(shape), np.ones(shape, dtype=bool))
    put(ls, ft.masked, masked_entry)
    result["log_softmax"] = ls

    # logsumexp: max + L.
    lse_v = ft.a.astype(W) + ft.big_l
    lse_err = _SAFETY * (ft.err_l + U_W * np.abs(lse_v.astype(np.float64)))
    result["logsumexp"] = certify(lse_v, lse_err, fmt)
    return result


def max_probability(ft: FastTerms, fmt: Format) -> tuple[np.ndarray, np.ndarray, Certified]:
    """Per row, where it applies, the softmax at the maxima: p = 1/k - delta, delta = t / (k s) > 0.

    With k a power of two, 1/k is a value of the format and p lies just below it, in the binade
    below: a quotient 1/s rounded in W would land on 1/k itself whenever delta is under 2^-64
    and leave ulp(exact) unknown. Here delta is kept apart: where it is negligible (under 2^-60
    ulp) the value is 1/k minus an infinitesimal (the mpmath engine's rule too); where it is
    below half an ulp, p rounds to 1/k and is stored as 1/k - delta. Rows where neither holds
    (or k is not a power of two) are left to the quotient. Returns (row applies, (rows,) entries).
    """
    k = ft.k_ties
    t_positive = (ft.t > 0) | (ft.tail > 0)
    pow2 = (k & (k - 1)) == 0
    inv_k = np.ldexp(W(1), -(np.frexp(k.astype(np.float64))[1] - 1))  # 1/k for k a power of two
    kw = k.astype(W)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = ft.t / (kw * ft.s)
    s64 = ft.s.astype(np.float64)
    err_delta = _SAFETY * (ft.err_t / (k * np.maximum(s64 - ft.err_s, 0.5))
                           + delta.astype(np.float64) * (ft.err_s / s64 + 2 * U_W))
    below = nudged(inv_k, -1, fmt)
    scale = np.ldexp(1.0, -below.k)  # 1 / ulp in the binade below 1/k
    d_ulps = delta.astype(np.float64) * scale
    e_ulps = err_delta * scale
    negligible = pow2 & t_positive & (d_ulps + e_ulps < 2.0**-60)
    kept_apart = (pow2 & t_positive & ~negligible & (d_ulps - e_ulps > 0) & (d_ulps + e_ulps < 0.5)
                  & (e_ulps <= REQUIRED_ULP_ACCURACY))
    entry = Certified(below.rounded[:, None], below.k[:, None], below.hi[:, None],
                      np.where(kept_apart, -d_ulps, below.lo)[:, None], np.ones((k.size, 1), dtype=bool))
    return negligible, kept_apart, entry


# --------------------------------------------------------------------------
# Backward: vector-Jacobian products (formulas in gradients)


def backward(op: str, x: np.ndarray, dy: np.ndarray, fmt: Format) -> tuple[Certified, np.ndarray]:
    """The VJP of ``op`` at every ordinary row of ``x`` for upstream ``dy``.

    Returns the (rows, n) entries and a per-row mask of the rows it covered (NaN and undefined
    rows are left to the caller, which handles them without arithmetic).
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    rows, n = x.shape
    out = unproven((rows, n))
    nan_rows, undefined = special_rows(x)
    ordinary = np.flatnonzero(~nan_rows & ~undefined)
    fn = {"softmax": _softmax_vjp, "log_softmax": _log_softmax_vjp, "logsumexp": _logsumexp_vjp}[op]
    for chunk in row_chunks(ordinary.size, n, CHUNK_ELEMENTS):
        idx = ordinary[chunk]
        store_rows(out, idx, fn(x[idx], dy[idx], fmt))
    covered = np.zeros(rows, dtype=bool)
    covered[ordinary] = True
    return out, covered


def _probabilities(ft: FastTerms) -> tuple[np.ndarray, np.ndarray]:
    """p = e / s in W and its relative error bound (float64)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ft.e / ft.s[:, None]
    return p, ft.rel_e + ft.rel_p + U_W


def _softmax_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = p (dy - c), c = sum_j p_j dy_j."""
    n = x.shape[1]
    big = np.abs(dy).max(axis=1)
    ft = fast_terms(x, fmt, margin=np.log(4 * big + 4))
    p, rel_p = _probabilities(ft)
    dyw = dy.astype(W)
    prod = ft.e * dyw
    big_p = pairwise_sum(prod)
    abs_p = pairwise_sum(np.abs(prod)).astype(np.float64)
    p_sum64 = big_p.astype(np.float64)
    # Each product: e's error and one rounding; then the sum's; the terms below the cut.
    err_big_p = (abs_p * (ft.rel_e.max(axis=1, initial=0.0) + U_W) + sum_error(p_sum64, abs_p, n)
                 + ft.tail * big)
    s64 = ft.s.astype(np.float64)
    c = big_p / ft.s
    c64 = c.astype(np.float64)
    err_c = (err_big_p + np.abs(p_sum64) * ft.err_s / s64) / np.maximum(s64 - ft.err_s, 0.5) + U_W * np.abs(c64)
    h = dyw - c[:, None]
    err_h = err_c[:, None] + U_W * np.abs(h.astype(np.float64))
    # At a row's single maximum dy - c = (dy t - sum_live e dy) / s: formed that way it does
    # not cancel to the size of t (dominant rows, where p ~ 1 and dy - c is tiny).
    single = ft.k_ties == 1
    if single.any():
        live_p = pairwise_sum(np.where(ft.is_max, W(0), prod))
        live64 = live_p.astype(np.float64)
        abs_live = pairwise_sum(np.where(ft.is_max, W(0), np.abs(prod))).astype(np.float64)
        top = ft.is_max.argmax(axis=1)
        dy_top = dyw[np.arange(x.shape[0]), top]
        dy_top64 = dy_top.astype(np.float64)
        numer = dy_top * ft.t - live_p
        numer64 = numer.astype(np.float64)
        # dy t (t's error, one rounding), the live sum (as big_p's), the tail's share, the subtraction.
        err_numer = (np.abs(dy_top64) * (ft.err_t + U_W * ft.t.astype(np.float64))
                     + abs_live * (ft.rel_e.max(axis=1, initial=0.0) + U_W) + sum_error(live64, abs_live, n)
                     + ft.tail * big + U_W * np.abs(numer64))
        h_top = numer / ft.s
        h_top64 = h_top.astype(np.float64)
        err_top = ((err_numer + np.abs(numer64) * ft.err_s / s64) / np.maximum(s64 - ft.err_s, 0.5)
                   + U_W * np.abs(h_top64))
        rows = np.flatnonzero(single)
        h[rows, top[rows]] = h_top[rows]
        err_h[rows, top[rows]] = err_top[rows]
    g = p * h
    p64 = p.astype(np.float64)
    err_g = _SAFETY * (p64 * err_h + np.abs(g.astype(np.float64)) * (rel_p + U_W))
    out = certify(g, err_g, fmt)
    # Below the cut |g| < exp(cut) (|dy| + |c|): a zero (of dy - c's sign where that is certain;
    # a zero's sign is not part of a reference).
    tail = ft.tail_entries
    if tail.any():
        h_tail = h.astype(np.float64)[tail]
        signed = zero_entry(fmt, h_tail.shape)
        signed.rounded = np.where(np.abs(h_tail) > _SAFETY * err_h[tail], np.copysign(0.0, h_tail), 0.0)
        put(out, tail, signed, compact=True)
    # Every finite entry equal: p = 1/k exactly and g = (dy - DY/k) / k, DY the sum of their dy.
    for i in np.flatnonzero(np.all(ft.is_max | ft.masked, axis=1)).tolist():
        finite = ~ft.masked[i]
        k = int(ft.k_ties[i])
        store_where(out, i, finite, dy_minus_rational(dy[i, finite], exact_sum(dy[i, finite]) / k, k, fmt))
    # Masked entries (p = 0): 0. A row whose finite entries share one dy has c = that dy exactly
    # (sum p = 1): 0 everywhere.
    finite = ~ft.masked
    first = dy[np.arange(dy.shape[0]), np.argmax(finite, axis=1)]
    constant = np.all((dy == first[:, None]) | ~finite, axis=1)
    put(out, ft.masked | constant[:, None], zero_entry(fmt, x.shape))
    return out


def _log_softmax_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = dy - p D, D = sum_j dy_j over every entry."""
    dyw = dy.astype(W)
    big_d = pairwise_sum(dyw)
    d64 = big_d.astype(np.float64)
    err_d = sum_error(d64, np.abs(dy).sum(axis=1) * (1 + 2.0**-40), x.shape[1])
    ft = fast_terms(x, fmt, margin=np.log(4 * (np.abs(d64) + err_d + 1)))
    p, rel_p = _probabilities(ft)
    pd = p * big_d[:, None]
    p64 = p.astype(np.float64)
    err_pd = np.abs(pd.astype(np.float64)) * (rel_p + U_W) + p64 * err_d[:, None]
    g = dyw - pd
    err_g = _SAFETY * (err_pd + U_W * np.abs(g.astype(np.float64)))
    out = certify(g, err_g, fmt)
    # Masked entries: p = 0, g = dy exactly.
    exact_dy = certify(dyw, np.zeros(x.shape), fmt)
    put(out, ft.masked, exact_dy)
    # Below the cut: dy minus an infinitesimal of D's sign, when that sign is certain.
    sign_known = np.abs(d64) > _SAFETY * err_d
    tail = ft.tail_entries & sign_known[:, None]
    if tail.any():
        direction = -np.sign(np.broadcast_to(d64[:, None], x.shape)[tail])
        put(out, tail, nudged(dyw[tail], direction, fmt), compact=True)
    out.ok &= ~(ft.tail_entries & ~sign_known[:, None])
    # Every finite entry equal: p = 1/k exactly and g = dy - D/k on them.
    for i in np.flatnonzero(np.all(ft.is_max | ft.masked, axis=1)).tolist():
        finite = ~ft.masked[i]
        store_where(out, i, finite, dy_minus_rational(dy[i, finite], exact_sum(dy[i]) / int(ft.k_ties[i]), 1, fmt))
    return out


def fraction_to_w2(q: Fraction) -> tuple[np.longdouble, np.longdouble]:
    """An exact rational as hi + lo in W, |q - hi - lo| <= 2^-126 |q| (two W roundings)."""
    hi = fraction_to_w([q])[0]
    hi_exact = Fraction(float(hi)) + Fraction(float(hi - W(float(hi))))
    lo = fraction_to_w([q - hi_exact])[0]
    return hi, lo


def dy_minus_rational(dy: np.ndarray, q: Fraction, k: int, fmt: Format) -> Certified:
    """(dy - q) / k for format values dy, an exact rational q and an integer k, certified;
    exactly 0 where dy equals q. q is held as hi + lo, so dy - q does not lose digits when
    dy is close to q."""
    hi, lo = fraction_to_w2(q)
    dyw = dy.astype(W)
    diff = dyw - hi
    diff64 = np.abs(diff.astype(np.float64))
    v = (diff - lo) / W(k)
    v64 = np.abs(v.astype(np.float64))
    # dy - hi rounded once, then - lo once, lo's own 2^-126 |q|, the division.
    err = (U_W * diff64 + U_W * np.abs(diff64 - abs(float(lo))) + 2.0**-125 * abs(float(q))) / k + U_W * v64
    out = certify(v, _SAFETY * err, fmt)
    q64 = float(q)
    if math.isfinite(q64) and Fraction(q64) == q:
        put(out, dy == q64, zero_entry(fmt, dy.shape))
    return out


def _logsumexp_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = dy p (dy one value per row)."""
    dy = dy.reshape(-1)
    ft = fast_terms(x, fmt, margin=np.log(2 * np.abs(dy) + 2))
    p, rel_p = _probabilities(ft)
    dyw = dy.astype(W)[:, None]
    g = dyw * p
    out = certify(g, _SAFETY * np.abs(g.astype(np.float64)) * (rel_p + 2 * U_W), fmt)
    # s = k exactly, k a power of two: g = dy / k exactly.
    exact_rows = (ft.t == 0) & (ft.tail == 0) & ((ft.k_ties & (ft.k_ties - 1)) == 0)
    put(out, exact_rows[:, None] & ft.is_max, certify(g, np.zeros(x.shape), fmt))
    # At the maxima p = 1/k - delta: with delta negligible, g = dy/k minus an infinitesimal of
    # dy's sign (the product would round onto dy/k and lose the binade).
    negligible, _, _ = max_probability(ft, fmt)
    sel = (negligible & (dy != 0))[:, None] & ft.is_max
    if sel.any():
        a = np.broadcast_to(dyw / ft.k_ties.astype(W)[:, None], x.shape)[sel]  # k a power of two: exact
        direction = np.broadcast_to(-np.sign(dy)[:, None], x.shape)[sel]
        put(out, sel, nudged(a, direction, fmt), compact=True)
    tail_zero = zero_entry(fmt, x.shape)
    tail_zero.rounded = np.broadcast_to(np.copysign(0.0, dy)[:, None], x.shape).copy()  # dy's sign
    put(out, ft.tail_entries, tail_zero)
    put(out, ft.masked | (dy == 0)[:, None], zero_entry(fmt, x.shape))
    return out


# --------------------------------------------------------------------------
# Cross-entropy (formulas in loss)


def fraction_to_w(values) -> np.ndarray:
    """Fractions (or ints/floats) as W: hi = float(v) and lo = float(v - hi), so the relative
    error is one W rounding plus 2^-106."""
    hi = np.array([float(v) for v in values], dtype=np.float64)
    lo = np.array([float(Fraction(v) - Fraction(h)) if math.isfinite(h) else 0.0 for v, h in zip(values, hi)],
                  dtype=np.float64)
    return hi.astype(W) + lo.astype(W)


def loss_coefficients(loss: LossInputs, rows: int, n: int) -> LossCoefficients:
    """coef_ic for every row, vectorised in long double (loss.row_coefficients in exact rationals)."""
    eps = float(loss.label_smoothing)
    epsw = W(eps)
    w64 = np.ones(n) if loss.weight is None else np.asarray(loss.weight, dtype=np.float64)
    ww = w64.astype(W)
    smooth = (epsw / W(n)) * ww  # two roundings
    eps_f = Fraction(eps)
    smooth_total = eps_f / n * exact_sum(w64)
    if loss.target_kind == "probability":
        q = np.asarray(loss.target, dtype=np.float64)
        coef = ww * ((1 - epsw) * q.astype(W) + epsw / W(n))  # 1 - eps is exact in W
        positive = (w64 > 0) & (((1 - eps) * q > 0) | (eps > 0))
        empty = np.zeros(rows, dtype=bool)
        # w q needs up to twice the format's bits: exact_dot keeps every product exact.
        totals = [(1 - eps_f) * exact_dot(w64, q[i]) + smooth_total for i in range(rows)]
        return LossCoefficients(coef, positive, 5 * U_W, empty, empty, totals, np.zeros(coef.shape))
    t = np.asarray(loss.target).astype(np.int64).reshape(rows)
    ignored = np.zeros(rows, dtype=bool) if loss.ignore_index is None else t == loss.ignore_index
    out_of_range = ~ignored & ((t < 0) | (t >= n))
    valid = ~ignored & ~out_of_range
    coef = np.broadcast_to(smooth, (rows, n)).copy()
    positive = np.broadcast_to((w64 > 0) & (eps > 0), (rows, n)).copy()
    r = np.flatnonzero(valid)
    tv = t[valid]
    coef[r, tv] += (1 - epsw) * ww[tv]
    positive[r, tv] |= (eps < 1) & (w64[tv] > 0)
    coef[~valid] = 0
    positive[~valid] = False
    totals = [(1 - eps_f) * Fraction(float(w64[ti])) + smooth_total if ok else Fraction(0)
              for ti, ok in zip(t.tolist(), valid.tolist())]
    return LossCoefficients(coef, positive, 6 * U_W, ignored, out_of_range, totals, np.zeros(coef.shape))


def row_losses(x: np.ndarray, lc: LossCoefficients, fmt: Format) -> RowLosses:
    """sum_c coef_c (L - d_c) per row, every term non-negative (no cancellation)."""
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    kind = row_kinds(x, lc)
    value = np.zeros(rows, dtype=W)
    err = np.zeros(rows)
    todo = np.flatnonzero(kind == "finite")
    for chunk in row_chunks(todo.size, n, CHUNK_ELEMENTS):
        idx = todo[chunk]
        ft = fast_terms(x[idx], fmt)
        coef = lc.coef[idx]
        a = pairwise_sum(coef)
        a64 = a.astype(np.float64)
        rel_a = lc.rel + sum_error(1.0, 1.0, n)  # non-negative terms: relative
        neg_d = np.where(ft.masked, W(0), -ft.d)
        terms = coef * neg_d  # every term >= 0
        spread = pairwise_sum(terms)
        spread64 = spread.astype(np.float64)
        coef64 = coef.astype(np.float64)
        err_spread = (spread64 * (lc.rel + U_W + sum_error(1.0, 1.0, n))
                      + (coef64 * ft.d_err).sum(axis=1) * (1 + 2.0**-40))
        big_l64 = ft.big_l.astype(np.float64)
        v = a * ft.big_l + spread
        v64 = v.astype(np.float64)
        value[idx] = v
        err[idx] = _SAFETY * (a64 * ft.err_l + a64 * big_l64 * (rel_a + U_W) + err_spread + U_W * v64)
    hi = value.astype(np.float64)
    lo = (value - hi.astype(W)).astype(np.float64)  # exact
    return RowLosses(kind, hi, lo, err, certify(value[todo], err[todo], fmt))


def loss_gradient(x: np.ndarray, lc: LossCoefficients, scale: list[Fraction],
                  fmt: Format) -> tuple[Certified, np.ndarray]:
    """G_ic = g_i (A_i p_ic - coef_ic) at every row it can take (the mask returned); ``scale`` the
    exact g_i, taken into W with relative error <= U_W."""
    g = fraction_to_w(scale)
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    out = zero_entry(fmt, (rows, n))
    nan_rows, undefined = special_rows(x)
    special = nan_rows | undefined
    # Rows left to the exact engine (all cheap there): special and out-of-range rows, and rows
    # whose finite logits are all equal (p = 1/k: G is rational, often exactly 0).
    covered = ~special & ~lc.out_of_range
    g64 = g.astype(np.float64)
    a_all = pairwise_sum(lc.coef)
    zero_rows = lc.ignored | (g64 == 0) | ~lc.positive.any(axis=1)
    todo = np.flatnonzero(covered & ~zero_rows)
    for chunk in row_chunks(todo.size, n, CHUNK_ELEMENTS):
        idx = todo[chunk]
        xs = x[idx]
        gw = g[idx][:, None]
        coef = lc.coef[idx]
        a = a_all[idx][:, None]
        a64 = a.astype(np.float64)
        rel_a = lc.rel + sum_error(1.0, 1.0, n)
        margin = np.log(np.abs(g64[idx]) * a64[:, 0] * 4 + 4)
        ft = fast_terms(xs, fmt, margin=margin)
        p, rel_p = _probabilities(ft)
        ap = a * p
        h = ap - coef
        v = gw * h
        ap64 = ap.astype(np.float64)
        coef64 = coef.astype(np.float64)
        # A p (A's, p's errors, one rounding), coef's, the subtraction; then g's and the product's roundings.
        err_h = ap64 * (rel_a + rel_p + U_W) + coef64 * lc.rel + U_W * np.abs(h.astype(np.float64))
        # At a row's single maximum A p - coef = (sum of the other coefs - coef t) / s: formed that way
        # it does not cancel to the size of t (a confident row's target class).
        single = np.flatnonzero(ft.k_ties == 1)
        if single.size:
            top = ft.is_max[single].argmax(axis=1)
            c_top = coef[single, top]
            others = pairwise_sum(np.where(ft.is_max[single], W(0), coef[single]))
            numer = others - c_top * ft.t[single]
            numer64 = numer.astype(np.float64)
            c_top64 = c_top.astype(np.float64)
            t64 = ft.t[single].astype(np.float64)
            err_numer = (others.astype(np.float64) * rel_a + c_top64 * (t64 * (lc.rel + U_W) + ft.err_t[single])
                         + U_W * np.abs(numer64))
            s_single = ft.s[single]
            s64 = s_single.astype(np.float64)
            h_top = numer / s_single
            err_s = ft.err_s[single]
            h[single, top] = h_top
            err_h[single, top] = ((err_numer + np.abs(numer64) * err_s / s64) / np.maximum(s64 - err_s, 0.5)
                                  + U_W * np.abs(h_top.astype(np.float64)))
            v = gw * h
        v64 = np.abs(v.astype(np.float64))
        c = certify(v, _SAFETY * (np.abs(g64[idx])[:, None] * err_h + 2 * U_W * v64), fmt)
        # Masked logits (p = 0): G = -g coef (0 where coef is 0).
        gc = -gw * coef
        gc_err = _SAFETY * np.abs(gc.astype(np.float64)) * (lc.rel + 2 * U_W)
        put(c, ft.masked, certify(gc, gc_err, fmt))
        # Below the cut, g A p is far below ulp(0): -g coef plus that, where coef > 0 (a value on a
        # rounding boundary fails here and the exact engine settles it), else a zero of g's sign.
        tail_p = np.maximum(np.abs(g64[idx])[:, None] * a64 * 2 * cut_term(ft.d_cut)[:, None], 2.0**-1074)
        put(c, ft.tail_entries & lc.positive[idx], certify(gc, gc_err + tail_p, fmt))
        tail_zero = ft.tail_entries & ~lc.positive[idx]
        if tail_zero.any():
            signed = zero_entry(fmt, (int(tail_zero.sum()),))
            signed.rounded = np.copysign(0.0, np.broadcast_to(g64[idx][:, None], xs.shape)[tail_zero])
            put(c, tail_zero, signed, compact=True)
        put(c, ft.masked & ~lc.positive[idx], zero_entry(fmt, xs.shape))
        # Every finite logit equal: p = 1/k exactly, G = g (A/k - coef) with A/k exact (held as hi + lo).
        for r in np.flatnonzero(np.all(ft.is_max | ft.masked, axis=1)).tolist():
            finite = ~ft.masked[r]
            hi, lo = fraction_to_w2(lc.totals[idx[r]] / int(ft.k_ties[r]))
            cf = coef[r, finite]
            diff = hi - cf
            hr = diff + lo
            vr = gw[r, 0] * hr
            err_hr = (U_W * np.abs(diff.astype(np.float64)) + cf.astype(np.float64) * lc.rel
                      + U_W * np.abs(hr.astype(np.float64)) + 2.0**-125 * abs(float(hi)))
            row = certify(vr, _SAFETY * (abs(float(g64[idx[r]])) * err_hr + 2 * U_W * np.abs(vr.astype(np.float64))),
                          fmt)
            store_where(c, r, finite, row)
        store_rows(out, idx, c)
    return out, covered


class LongDoublePath:
    """The long double fast path (a FastPath): float32, float16 and bfloat16 where long double is wider."""

    name = "long double"

    def applies(self, fmt: Format) -> bool:
        return applies(fmt)

    def forward(self, x: np.ndarray, fmt: Format) -> ForwardFast:
        return forward(x, fmt)

    def backward(self, op: str, x: np.ndarray, dy: np.ndarray, fmt: Format) -> tuple[Certified, np.ndarray]:
        return backward(op, x, dy, fmt)

    def loss_coefficients(self, loss: LossInputs, rows: int, n: int) -> LossCoefficients:
        return loss_coefficients(loss, rows, n)

    def row_losses(self, x: np.ndarray, lc: LossCoefficients, fmt: Format) -> RowLosses:
        return row_losses(x, lc, fmt)

    def loss_gradient(self, x: np.ndarray, lc: LossCoefficients, scale: list[Fraction],
                      fmt: Format) -> tuple[Certified, np.ndarray]:
        return loss_gradient(x, lc, scale, fmt)
