"""Double-double arithmetic on numpy float64 arrays, with error bounds: the working precision
of the certified float64 references (reference.fast_double_double).

A double-double holds a real as an unevaluated sum hi + lo of two float64 arrays (about 106
significant bits). Built from error-free transformations: TwoSum (the exact error of an
addition) and Dekker's TwoProd with Veltkamp splitting (numpy has no fused multiply-add).
Algorithms and bounds follow Joldes, Muller and Popescu, "Tight and rigorous error bounds for
basic building blocks of double-word arithmetic" (ACM TOMS 44, 2017): with u = 2^-53, a
double-double sum is within 3u^2 of the exact one, a product within 7u^2 (no FMA), a quotient
within 15u^2 + 56u^3, all relative. :data:`U_DD` takes 64u^2 for each, four times the largest.

Where a sum cancels, a relative bound is useless; :func:`add` therefore also returns a bound
computed from the values themselves (the two roundings it performs, each at most u of its
result), which stays small relative to the smaller operand.

Sums are safe at every magnitude (an addition whose result is subnormal is exact). Products
and quotients are not: Veltkamp's split overflows above 2^996, and a product's error term is
inexact when it falls below 2^-1022. Callers keep their operands and results within
[2^-900, 2^900] or exactly 0 (:func:`in_range`), or account for the underflow themselves.
"""

from __future__ import annotations

import math

import numpy as np

U = 2.0**-53
"""Unit roundoff of float64."""

U_DD = 64 * U * U
"""Relative error bound taken for one double-double product, quotient or sum (2^-100)."""

RANGE_LO = 2.0**-900
RANGE_HI = 2.0**900

_SPLITTER = 134217729.0  # 2^27 + 1 (Veltkamp)


def in_range(hi: np.ndarray) -> np.ndarray:
    """Where a double-double's magnitude is 0 or within [2^-900, 2^900]: the products and
    quotients below are exact transformations there."""
    a = np.abs(hi)
    return (a == 0) | ((a >= RANGE_LO) & (a <= RANGE_HI))


def two_sum(a, b):
    """s + e = a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fast_two_sum(a, b):
    """s + e = a + b exactly, for |a| >= |b| or a = 0 (Dekker)."""
    s = a + b
    e = b - (s - a)
    return s, e


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a, b):
    """p + e = a b exactly, p = fl(a b) (Dekker; operands in range)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def add(ah, al, bh, bl):
    """(a + b) as a double-double and a bound on its absolute error from the values themselves, at
    any magnitude
    (AccurateDWPlusDW with TwoSum throughout, so no operand needs to be normalised: two rounded
    additions, each within u of its result; the rest is exact)."""
    sh, sl = two_sum(ah, bh)
    th, tl = two_sum(al, bl)
    c = sl + th
    vh, vl = two_sum(sh, c)
    w = tl + vl
    hi, lo = two_sum(vh, w)
    err = (U * (1 + 4 * U)) * (np.abs(c) + np.abs(w))
    return hi, lo, err


def add_fp(ah, al, b):
    """(a + b) for a float64 b, with the bound of :func:`add` (one rounded addition)."""
    sh, sl = two_sum(ah, b)
    w = al + sl
    hi, lo = two_sum(sh, w)
    return hi, lo, (U * (1 + 4 * U)) * np.abs(w)


def mul(ah, al, bh, bl):
    """a b (relative error <= U_DD; operands in range)."""
    ph, pl = two_prod(ah, bh)
    pl = pl + (ah * bl + al * bh)
    return fast_two_sum(ph, pl)


def mul_fp(ah, al, b):
    """a b for a float64 b (relative error <= U_DD; operands in range)."""
    ph, pl = two_prod(ah, b)
    pl = pl + al * b
    return fast_two_sum(ph, pl)


def div(ah, al, bh, bl):
    """a / b (DWDivDW2: relative error <= U_DD; operands in range, b != 0)."""
    th = ah / bh
    rh, rl = mul_fp(bh, bl, th)
    pi_h = ah - rh
    delta = pi_h + (al - rl)
    tl = delta / bh
    return fast_two_sum(th, tl)


def from_fraction(q) -> tuple[float, float]:
    """An exact rational (or int) as a double-double, within 2^-106 of it relatively."""
    from fractions import Fraction

    q = Fraction(q)
    hi = float(q)
    lo = float(q - Fraction(hi)) if math.isfinite(hi) else 0.0
    return hi, lo


# --------------------------------------------------------------------------
# exp


def _constants():
    """ln2/256 in three pieces (the first with 33 bits, so N times it is exact for |N| < 2^20),
    2^(i/256) for i = 0..255 and 1/k! for k <= 16 as double-doubles, computed once in mpmath."""
    import mpmath

    ctx = mpmath.mp.clone()
    ctx.prec = 300
    c = ctx.log(2) / _TABLE_SIZE
    c1 = float(ctx.ldexp(ctx.floor(ctx.ldexp(c, 41)), -41))  # 33 significant bits (c < 2^-8)
    c2 = float(c - c1)
    c3 = float(c - c1 - c2)
    table = []
    for i in range(_TABLE_SIZE):
        v = ctx.power(2, ctx.mpf(i) / _TABLE_SIZE)
        hi = float(v)
        table.append((hi, float(v - hi)))
    inv_fact = []
    for k in range(17):
        v = ctx.mpf(1) / ctx.factorial(k)
        hi = float(v)
        inv_fact.append((hi, float(v - hi)))
    return c1, c2, c3, np.array(table), inv_fact


_TABLE_SIZE = 256
_C1, _C2, _C3, _TABLE, _INV_FACT = _constants()
_INV_C = _TABLE_SIZE / math.log(2)

REL_EXP = 8 * U_DD
"""Relative error bound of :func:`exp` (2^-97): the reduction (two sums on |r| < 2^-9, ln2/256
truncated at 2^-155 relative), the float64 terms r^5/5! .. r^9/9! (their roundings under
2^-107), five Horner steps whose errors add to under 2 U_DD, the factor 1 + r_lo, the truncation
(r^10/10! < 2^-116), the table's rounding (2^-106) and the table product;
tests/test_reference_double.py measures it against mpmath."""


def _horner_step(ph, pl, rh, rh_hi, rh_lo, ch, cl):
    """(p r + c) for a double-double p, a float64 r (pre-split) and a constant c with |c| > |p r|."""
    qh = ph * rh
    ah, al = _split(ph)
    ql = ((ah * rh_hi - qh) + ah * rh_lo + al * rh_hi) + al * rh_lo  # TwoProd's error term
    ql = ql + pl * rh
    sh, sl = fast_two_sum(ch, qh)
    sl = sl + (cl + ql)
    return fast_two_sum(sh, sl)


def exp(dh, dl):
    """exp(d) for a double-double d with -1100 < d < 1100, as (m, eh, el): exp(d) = 2^m (eh + el),
    0.99 < eh + el < 2.01, within REL_EXP relatively. No underflow: the scale is kept apart."""
    n = np.rint(dh * _INV_C)
    i = (n % _TABLE_SIZE).astype(np.int64)
    m = ((n - i) // _TABLE_SIZE).astype(np.int64)
    t1 = dh - n * _C1  # exact: n _C1 has <= 53 bits and lies within a factor 2 of dh (Sterbenz)
    p2h, p2l = two_prod(n, _C2)
    rh, rl, _ = add(t1, dl, -p2h, -p2l)
    rh, rl, _ = add_fp(rh, rl, -(n * _C3))
    # exp(rh) by Taylor to degree 9: r^5/5! on in float64, then double-double Horner steps;
    # exp(rh + rl) = exp(rh) (1 + rl) to within rl^2 < 2^-120.
    ph = np.full(rh.shape, _INV_FACT[9][0])
    for k in (8, 7, 6, 5):
        ph = ph * rh + _INV_FACT[k][0]
    pl = np.zeros(rh.shape)
    rh_hi, rh_lo = _split(rh)
    for k in (4, 3, 2, 1, 0):
        ph, pl = _horner_step(ph, pl, rh, rh_hi, rh_lo, *_INV_FACT[k])
    ph, pl = fast_two_sum(ph, pl + ph * rl)
    eh, el = mul(ph, pl, _TABLE[i, 0], _TABLE[i, 1])
    return m, eh, el


REL_EXPM1 = 8 * U_DD
"""Relative error bound of :func:`expm1_small` (2^-97): sixteen Horner steps whose terms shrink
by 2^-5 each, then one product; truncation r^17/17! < 2^-130 relative."""


def expm1_small(rh, rl):
    """exp(r) - 1 for a double-double |r| <= 2^-5, within REL_EXPM1 relatively."""
    ph = np.full(np.shape(rh), _INV_FACT[16][0])
    pl = np.zeros(np.shape(rh))
    for k in range(15, 0, -1):
        ph, pl = mul(ph, pl, rh, rl)
        ph, pl, _ = add(ph, pl, _INV_FACT[k][0], _INV_FACT[k][1])
    return mul(ph, pl, rh, rl)  # r (1 + r/2 + r^2/6 + ...)


# --------------------------------------------------------------------------
# log and log1p: one Newton step from float64's


def log(sh, sl):
    """log(s) for a double-double 1 <= s < 2^900, as (lh, ll, err): err bounds the absolute error.

    y0 = log(s_hi) in float64 (within a few ulps); then log(s) = y0 + log(z) with
    z = s exp(-y0) = 1 + w, |w| < 2^-45, and log(1 + w) = w - w^2/2 to within |w|^3.
    exp's relative error passes into the result as an absolute one.
    """
    y0 = np.log(sh)
    m, eh, el = exp(-y0, np.zeros(np.shape(y0)))
    zh, zl = mul(sh, sl, eh, el)
    zh, zl = np.ldexp(zh, m), np.ldexp(zl, m)  # exact: z is within 2^-40 of 1
    wh, wl = two_sum(zh - 1.0, zl)  # zh - 1 exact (Sterbenz)
    w2 = 0.5 * wh * wh
    lh, ll, e1 = add_fp(wh, wl, y0)
    lh, ll, e2 = add_fp(lh, ll, -w2)
    aw = np.abs(wh)
    err = (REL_EXP + 2 * U_DD) * (1 + 2.0**-40) + e1 + e2 + aw**3 + 2 * U * w2 + aw * np.abs(wl)
    return lh, ll, err


def log1p_small(th, tl):
    """log(1 + t) for a double-double 0 <= t <= 2^-6, as (lh, ll, err), err relative to the
    result: a Newton step y0 + (1 + t) exp(-y0) - 1 with exp(-y0) - 1 from expm1_small."""
    y0 = np.log1p(th)
    emh, eml = expm1_small(-y0, np.zeros(np.shape(y0)))
    # (1 + t)(1 + em) - 1 = t + em + t em: no cancellation beyond the Newton correction's own.
    ph, pl = mul(th, tl, emh, eml)
    ah, al, e1 = add(th, tl, emh, eml)
    wh, wl, e2 = add(ah, al, ph, pl)
    lh, ll, e3 = add_fp(wh, wl, y0)
    w2 = 0.5 * wh * wh
    lh, ll, e4 = add_fp(lh, ll, -w2)
    aw = np.abs(wh)
    err = ((REL_EXPM1 + U_DD) * np.abs(emh) * (1 + 2.0**-5) + U_DD * np.abs(ph)
           + e1 + e2 + e3 + e4 + aw**3 + 2 * U * w2 + aw * np.abs(wl))
    return lh, ll, err
