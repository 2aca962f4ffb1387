"""Certified fast references for float64 targets, in double-double arithmetic.

The long double path (fast_long_double) has only 11 bits over float64, too few to prove
roundings to 2^-16 ulp. This module is the same strategy with double-double working
precision (softaudit.double_double, about 106 bits, every operation with an error bound): each
element is computed with a rigorous bound on its absolute error and accepted when the whole
interval rounds to one float64, lies in one binade, and is known to 2^-16 ulp
(fast_path.REQUIRED_ULP_ACCURACY). Whatever it cannot prove - values near a rounding
boundary, quantities outside double-double's safe range [2^-900, 2^900], rows whose answer is
rational and exactly on a boundary - goes to the mpmath engine element by element, as for the
other formats.

exp(x - max) is kept as 2^m (e_hi + e_lo) with the scale apart, so probabilities far below
float64's underflow threshold are still known to 106 bits: a softmax output of 1e-320 is
certified like one of 0.5.

Covered: softmax, log_softmax and logsumexp forward and their VJPs, and cross-entropy (its row
losses and its gradient), as the long double path: both implement fast_path.FastPath.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from softaudit import double_double as dd
from softaudit.formats import Format, exact_sum
from softaudit.reference import fast_long_double
from softaudit.reference.fast_long_double import W, nudged, ulp_exponents
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

_SAFETY = 2.0
"""Each output's bound is doubled once, as in fast_long_double (slack for second-order terms)."""

CHUNK_ELEMENTS = 1 << 16
"""Rows are processed in chunks of about this many elements (double-double code makes ~200
passes over each array: chunks that stay in cache are ~4x faster than 1M-element ones)."""

U_F64 = 2.0**-53


def _quiet() -> np.errstate:
    """Products outside double-double's safe range overflow or underflow harmlessly: every result
    that depends on one is refused by the in_range checks, never trusted."""
    return np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore")


def applies(fmt: Format) -> bool:
    """Whether this path certifies references in ``fmt``: float64 (53 bits; double-double has 106)."""
    return fmt.p == 53 and fmt.emin == -1022


# --------------------------------------------------------------------------
# Certifying a double-double


def certify(hi: np.ndarray, lo: np.ndarray, err: np.ndarray, fmt: Format, scale: np.ndarray | int = 0) -> Certified:
    """Round v = (hi + lo) 2^scale into fmt; ok where every real within err 2^scale of v provably
    rounds the same way, in the same binade, and err 2^scale <= REQUIRED_ULP_ACCURACY ulp.

    hi + lo must be a normalised double-double (|lo| <= ulp(hi)/2, as double_double returns
    them). Work is in units of ulp(v): |hi| 2^(scale-k) is an integer (or, below the normal
    range, a float64 whose integer part rint takes exactly) and the rounding is settled by
    where the rest, +- the error, falls between two half-integers. Those comparisons are exact
    where they matter: a distance to a boundary small enough to compare with the error is
    computed without rounding (Sterbenz).
    """
    hi, lo, err = np.broadcast_arrays(np.asarray(hi, dtype=np.float64), np.asarray(lo, dtype=np.float64),
                                      np.asarray(err, dtype=np.float64))
    scale = np.broadcast_to(np.asarray(scale, dtype=np.int64), hi.shape)
    sign = np.where(np.signbit(hi), -1.0, 1.0)
    a_hi = np.abs(hi)
    a_lo = lo * sign  # the low part's share of |v|
    mant, e2 = np.frexp(a_hi)
    e = np.where(a_hi == 0, fmt.emin, e2.astype(np.int64) - 1 + scale)
    k_at = np.maximum(e, fmt.emin) - fmt.p + 1
    k_below = np.maximum(e - 1, fmt.emin) - fmt.p + 1
    flat = k_at == k_below  # below the normal range: one ulp on both sides of 2^e
    # |v| lies below |hi| (a power of two) exactly when the low part is negative; the binade is
    # certain when the whole interval stays on one side of |hi|.
    pow2 = mant == 0.5
    below = pow2 & (a_lo < 0)
    k = np.where(below, k_below, k_at)
    binade_ok = flat | ~pow2 | np.where(below, -a_lo > err, a_lo >= err)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        shift = scale - k
        h = np.ldexp(a_hi, shift)  # exact: an integer below 2^(p+1), or (below 2^emin) a fraction
        h_int = np.rint(h)
        frac = h - h_int  # exact
        f = frac + np.ldexp(a_lo, shift)  # |v| = (h_int + f) ulps; exact unless frac != 0
        # The error in ulps, with f's own rounding where there was one, rounded up generously.
        e_ulps = (np.ldexp(err, shift) + np.where(frac != 0, U_F64 * np.abs(f), 0.0)) * (1 + 2.0**-50)
        j = np.rint(f)
        # Distances to the cell's ends (j -+ 1/2) and to the binade's (2^(p-1), 2^p ulps): each
        # exact where it is small (Sterbenz), and only a small one can be under e_ulps.
        top = np.ldexp(1.0, fmt.p)
        cell_ok = (f - (j - 0.5) > e_ulps) & ((j + 0.5) - f > e_ulps)
        range_ok = ((top - h_int) - f > e_ulps) & (flat | pow2 | (f - (top / 2 - h_int) >= e_ulps))
        n = h_int + j
        rounded = sign * np.ldexp(n, k)
        finite = np.isfinite(h) & np.isfinite(f) & np.isfinite(e_ulps) & (np.abs(rounded) <= fmt.max_finite)
        ok = finite & binade_ok & cell_ok & range_ok & (e_ulps <= REQUIRED_ULP_ACCURACY)
        hi_store = np.where(finite, sign * h, 0.0)
        lo_store = np.where(finite, sign * np.ldexp(a_lo, shift), 0.0)
    rounded = np.where(finite, np.where(n == 0, np.copysign(0.0, sign), rounded), 0.0)
    return Certified(rounded, k, hi_store, lo_store, ok)


# --------------------------------------------------------------------------
# Row terms


def pairwise_sum(h: np.ndarray, l: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum double-doubles along the last axis by halving: (hi, lo, err), err the sum of every
    addition's own bound (double_double.add), so a signed sum that cancels keeps its digits."""
    err = np.zeros(h.shape[:-1])
    while h.shape[-1] > 1:
        if h.shape[-1] % 2:
            pad = np.zeros(h.shape[:-1] + (1,))
            h = np.concatenate([h, pad], axis=-1)
            l = np.concatenate([l, pad], axis=-1)
        half = h.shape[-1] // 2
        h, l, e = dd.add(h[..., :half], l[..., :half], h[..., half:], l[..., half:])
        err = err + e.sum(axis=-1) * (1 + 2.0**-40)
    if h.shape[-1] == 0:
        z = np.zeros(h.shape[:-1])
        return z, z.copy(), err
    return h[..., 0], l[..., 0], err


@dataclass
class Terms:
    """The pieces of a chunk of ordinary rows (no NaN, no +inf, not all -inf), as
    fast_long_double.FastTerms but in double-double: d = x - max exactly (dh + dl), exp(d) =
    2^m (eh + el) on live entries (1 at the maxima, 0 elsewhere), t the sum of the live
    exps, s = k_ties + t, L = log s. err_* bound absolute errors."""

    a: np.ndarray
    masked: np.ndarray
    is_max: np.ndarray
    live: np.ndarray
    tail_entries: np.ndarray
    positive: np.ndarray
    """(rows,): some entry besides the maxima contributes to s (t > 0 exactly, even where its
    float64 value underflows)."""
    bad: np.ndarray
    """Entries whose d overflowed (|x - max| > 2^1024): never certified here."""
    dh: np.ndarray
    dl: np.ndarray
    m: np.ndarray
    eh: np.ndarray
    el: np.ndarray
    k_ties: np.ndarray
    th: np.ndarray
    tl: np.ndarray
    err_t: np.ndarray
    sh: np.ndarray
    sl: np.ndarray
    err_s: np.ndarray
    lh: np.ndarray
    ll: np.ndarray
    err_l: np.ndarray
    rel_q: np.ndarray
    """(rows, 1): relative error bound of e / s, e's own included."""
    d_cut: np.ndarray
    tail: np.ndarray


def unscaled(m: np.ndarray, h: np.ndarray, l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2^m (h + l) as a plain double-double (each part within 2^-1074 where it underflows)."""
    with np.errstate(under="ignore"):
        return np.ldexp(h, m), np.ldexp(l, m)


def terms(x: np.ndarray, fmt: Format, margin: float | np.ndarray = 0.0) -> Terms:
    """Row terms of ``x`` (rows, n) float64, every row ordinary."""
    rows, n = x.shape
    a = x.max(axis=1)
    masked = x == -np.inf
    is_max = x == a[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        dh, dl = dd.two_sum(x, -a[:, None])
    bad = ~masked & ~np.isfinite(dl)
    dh = np.where(masked | bad, -np.inf, dh)
    dl = np.where(masked | bad, 0.0, dl)
    d_cut = np.broadcast_to(np.asarray(cut(fmt, n) - np.asarray(margin, dtype=np.float64)).reshape(-1, 1), (rows, 1))
    live = ~masked & ~is_max & (dh >= d_cut)
    tail_entries = ~masked & ~is_max & ~live
    m = np.zeros(x.shape, dtype=np.int64)
    eh = np.where(is_max, 1.0, 0.0)
    el = np.zeros(x.shape)
    if live.any():
        m[live], eh[live], el[live] = dd.exp(dh[live], dl[live])
    uh, ul = unscaled(m, eh, el)
    th, tl, err_sum = pairwise_sum(np.where(is_max, 0.0, uh), np.where(is_max, 0.0, ul))
    k_ties = is_max.sum(axis=1)
    tail = tail_entries.sum(axis=1) * cut_term(d_cut[:, 0]) * 2  # x2: d may sit just below the cut
    # exp's error on each live term (all positive), the additions', the underflowed parts.
    err_t = th * dd.REL_EXP * (1 + 2.0**-40) + err_sum + live.sum(axis=1) * 2.0**-1073 + tail
    sh, sl, e_s = dd.add_fp(th, tl, k_ties.astype(np.float64))
    positive = live.any(axis=1) | tail_entries.any(axis=1)
    exact_s = ~positive  # s = k_ties, an integer
    err_s = err_t + np.where(exact_s, 0.0, e_s)
    lh = np.zeros(rows)
    ll = np.zeros(rows)
    err_l = np.zeros(rows)
    small = (k_ties == 1) & (th <= 2.0**-6)
    if small.any():
        h, l_, e = dd.log1p_small(th[small], tl[small])
        lh[small], ll[small] = h, l_
        err_l[small] = e + err_t[small] / np.maximum(1 + th[small] - err_t[small], 0.5)
    rest = ~small
    if rest.any():
        h, l_, e = dd.log(sh[rest], sl[rest])
        lh[rest], ll[rest] = h, l_
        err_l[rest] = e + err_s[rest] / np.maximum(sh[rest] - err_s[rest], 0.5)
    err_l = np.where(exact_s & (k_ties == 1), 0.0, err_l)  # s = 1 exactly: L = 0
    rel_q = (np.where(live, dd.REL_EXP, 0.0) + (err_s / sh)[:, None] + dd.U_DD) * (1 + 2.0**-40)
    return Terms(a, masked, is_max, live, tail_entries, positive, bad, dh, dl, m, eh, el, k_ties, th, tl, err_t, sh, sl,
                 err_s, lh, ll, err_l, rel_q, d_cut[:, 0].copy(), tail)


# --------------------------------------------------------------------------
# Forward


@_quiet()
def forward(x: np.ndarray, fmt: Format) -> ForwardFast:
    """softmax, log_softmax and logsumexp of every row, as exact.reference_rows stores them."""
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    ff, ordinary = forward_frame(x, fmt)
    for chunk in row_chunks(ordinary.size, n, CHUNK_ELEMENTS):
        idx = ordinary[chunk]
        part = _forward_chunk(x[idx], fmt)
        ff.amax[idx], ff.log_s[idx] = part.pop("amax"), part.pop("log_s")
        for op, c in part.items():
            store_rows(ff.ops[op], idx, c)
    return ff


def _delta(tm: Terms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """delta = t / (k s) per row: (rows where p at the maxima is 1/k - delta with 1/k a value
    of the format: k a power of two and t > 0; delta's hi, lo and error bound)."""
    k = tm.k_ties.astype(np.float64)
    pow2 = ((tm.k_ties & (tm.k_ties - 1)) == 0) & tm.positive
    ks_h, ks_l = dd.mul_fp(tm.sh, tm.sl, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta_h, delta_l = dd.div(tm.th, tm.tl, ks_h, ks_l)
    err_delta = _SAFETY * ((tm.err_t + np.abs(delta_h) * k * tm.err_s) / (k * np.maximum(tm.sh - tm.err_s, 0.5))
                           + np.abs(delta_h) * 2 * dd.U_DD)
    return pow2, delta_h, delta_l, err_delta


def max_probability(tm: Terms, fmt: Format) -> tuple[np.ndarray, np.ndarray, Certified]:
    """p at the maxima where k is a power of two and t > 0: p = 1/k - delta lies just below 1/k,
    in the binade below (fast_long_double.max_probability's rule). A quotient 1/s would land on
    1/k when delta is tiny and lose the binade, so delta is kept apart: where it is negligible
    (under 2^-60 ulp, or underflowing) the value is 1/k minus an infinitesimal; where it is
    under 2^-48 / k it is the double-double (1/k, -delta). Returns (rows negligible, rows kept
    apart, their (rows,) entries)."""
    rows = tm.k_ties.shape[0]
    pow2, delta_h, delta_l, err_delta = _delta(tm)
    inv_k = 1.0 / tm.k_ties.astype(np.float64)  # exact where k is a power of two
    below = nudged(inv_k, -np.ones(rows), fmt)
    negligible = pow2 & (np.ldexp(delta_h + err_delta, -below.k) < 2.0**-60)
    kept = (pow2 & ~negligible & (delta_h < 2.0**-48 * inv_k) & dd.in_range(delta_h)
            & (delta_h > err_delta + np.abs(delta_l)))
    entry = certify(inv_k, -delta_h, err_delta + np.abs(delta_l), fmt)
    put(entry, negligible, below)
    return negligible, kept, entry


def _at_maxima(tm: Terms, rows: np.ndarray, entry: Certified) -> tuple[np.ndarray, Certified]:
    """(mask of the maxima of ``rows``, per-row ``entry`` repeated onto them in order)."""
    sel = rows[:, None] & tm.is_max
    counts = tm.k_ties[rows]
    return sel, Certified(*(np.repeat(getattr(entry, f)[rows], counts) for f in ("rounded", "k", "hi", "lo", "ok")))


def _forward_chunk(x: np.ndarray, fmt: Format) -> dict:
    tm = terms(x, fmt)
    result: dict = {"amax": tm.a, "log_s": tm.lh + tm.ll}
    shape = x.shape
    rows = shape[0]

    # softmax: 2^m e / s.
    sh = np.broadcast_to(tm.sh[:, None], shape)
    sl = np.broadcast_to(tm.sl[:, None], shape)
    qh, ql = dd.div(tm.eh, tm.el, sh, sl)
    q_err = _SAFETY * np.abs(qh) * tm.rel_q
    exact_rows = ~tm.positive & ((tm.k_ties & (tm.k_ties - 1)) == 0)
    q_err = np.where(exact_rows[:, None] & tm.is_max, 0.0, q_err)  # 1/k, k a power of two: exact
    sm = certify(qh, ql, q_err, fmt, tm.m)
    sm.ok &= ~tm.bad
    put(sm, tm.masked | tm.tail_entries, zero_entry(fmt, shape))
    negligible, kept, entry = max_probability(tm, fmt)
    if (negligible | kept).any():
        put(sm, *_at_maxima(tm, negligible | kept, entry), compact=True)
    result["softmax"] = sm

    # log_softmax: d - L; -inf on masked entries.
    with np.errstate(invalid="ignore"):
        vh, vl, e_v = dd.add(tm.dh, tm.dl, -np.broadcast_to(tm.lh[:, None], shape),
                             -np.broadcast_to(tm.ll[:, None], shape))
    ls = certify(np.where(tm.masked, 0.0, vh), np.where(tm.masked, 0.0, vl),
                 np.where(tm.masked, 0.0, _SAFETY * (tm.err_l[:, None] + e_v)), fmt)
    ls.ok &= ~tm.bad
    # L far below ulp(d) (under 2^-60 of it) and d a float64: d minus an infinitesimal (L may
    # underflow, and a d halfway between two values is settled only this way).
    # d is exact in long double where its two parts fit in 64 bits (x and the max a few binades apart).
    usable = ~tm.masked & ~tm.bad
    d_safe = np.where(usable, tm.dh, 0.0)
    dw = d_safe.astype(W) + np.where(usable, tm.dl, 0.0).astype(W)
    d_exact = (dw - d_safe.astype(W)) == np.where(usable, tm.dl, 0.0).astype(W)
    k_d = ulp_exponents(d_safe, fmt)
    l_upper = np.broadcast_to((np.abs(tm.lh) + tm.err_l)[:, None], shape)
    with np.errstate(over="ignore"):
        negligible = usable & d_exact & tm.positive[:, None] & (np.ldexp(l_upper, -k_d) < 2.0**-60)
    if negligible.any():
        put(ls, negligible, nudged(dw[negligible], -1, fmt), compact=True)
    masked_entry = Certified(np.full(shape, -np.inf), np.full(shape, fmt.emin - fmt.p + 1, dtype=np.int64),
                             np.zeros(shape), np.zeros(shape), np.ones(shape, dtype=bool))
    put(ls, tm.masked, masked_entry)
    result["log_softmax"] = ls

    # logsumexp: max + L.
    vh, vl, e_v = dd.add_fp(tm.lh, tm.ll, tm.a)
    result["logsumexp"] = certify(vh, vl, _SAFETY * (tm.err_l + e_v), fmt)
    assert result["logsumexp"].rounded.shape == (rows,)
    return result


# --------------------------------------------------------------------------
# Backward (formulas in gradients)


@_quiet()
def backward(op: str, x: np.ndarray, dy: np.ndarray, fmt: Format) -> tuple[Certified, np.ndarray]:
    """The VJP of ``op`` at every ordinary row of ``x`` for upstream ``dy`` (as
    fast_long_double.backward). Rows whose upstream leaves double-double's safe range are left
    unproven (ok False): the mpmath engine computes them."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    rows, n = x.shape
    out = unproven((rows, n))
    nan_rows, undefined = special_rows(x)
    dy_rows = dy.reshape(rows, -1)
    ordinary = ~nan_rows & ~undefined
    todo = np.flatnonzero(ordinary & dd.in_range(dy_rows).all(axis=1))
    fn = {"softmax": _softmax_vjp, "log_softmax": _log_softmax_vjp, "logsumexp": _logsumexp_vjp}[op]
    for chunk in row_chunks(todo.size, n, CHUNK_ELEMENTS):
        idx = todo[chunk]
        store_rows(out, idx, fn(x[idx], dy[idx], fmt))
    return out, ordinary


def _probabilities(tm: Terms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q = e / s (p = 2^m q) and its relative error bound."""
    shape = tm.eh.shape
    qh, ql = dd.div(tm.eh, tm.el, np.broadcast_to(tm.sh[:, None], shape), np.broadcast_to(tm.sl[:, None], shape))
    return qh, ql, tm.rel_q + dd.U_DD


def _weighted_sum(tm: Terms, dy: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sum of e_j dy_j over ``where`` (live entries and maxima): (hi, lo, err, sum of |terms|).
    err covers exp's errors, the products', the additions' and parts that underflow."""
    ph, pl = dd.mul_fp(tm.eh, tm.el, dy)
    uh, ul = unscaled(tm.m, ph, pl)
    uh = np.where(where, uh, 0.0)
    ul = np.where(where, ul, 0.0)
    bh, bl, err_sum = pairwise_sum(uh, ul)
    count = where.sum(axis=1)
    abs_terms = np.abs(uh).sum(axis=1) * (1 + 2.0**-30) + count * 2.0**-1073
    err = abs_terms * (dd.REL_EXP + 2 * dd.U_DD) + err_sum + count * 2.0**-1072
    return bh, bl, err, abs_terms


def _over_s(nh, nl, err_n, tm: Terms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n / s for per-row double-doubles n known to err_n, with the bound of the quotient."""
    s_low = np.maximum(tm.sh - tm.err_s, 0.5)
    ch, cl = dd.div(nh, nl, tm.sh, tm.sl)
    err = (err_n + np.abs(nh) * tm.err_s / tm.sh) / s_low + dd.U_DD * np.abs(ch)
    return ch, cl, err * (1 + 2.0**-40)


def _dy_minus_rational(dy: np.ndarray, q: Fraction, k: int, fmt: Format) -> Certified:
    """(dy - q) / k for float64 dy, an exact rational q and an integer k, certified (0 where dy = q)."""
    qh, ql = dd.from_fraction(q)
    vh, vl, e = dd.add(dy, np.zeros(dy.shape), np.full(dy.shape, -qh), np.full(dy.shape, -ql))
    err = e + 2.0**-105 * abs(qh)
    if k & (k - 1) == 0:
        vh, vl, err = np.ldexp(vh, -(k.bit_length() - 1)), np.ldexp(vl, -(k.bit_length() - 1)), err / k
    else:
        vh, vl = dd.div(vh, vl, np.full(dy.shape, float(k)), np.zeros(dy.shape))
        err = err / k + dd.U_DD * np.abs(vh)
    out = certify(vh, vl, _SAFETY * err, fmt)
    out.ok &= dd.in_range(vh)
    # What the bound cannot settle is often exact: dyadic values halfway between two float64s
    # (k a power of two). Those few are rounded from the exact rational.
    for j in np.flatnonzero(~out.ok).tolist():
        entry = exact_entry((Fraction(float(dy[j])) - q) / k, fmt)
        out.rounded[j], out.k[j], out.hi[j], out.lo[j] = entry
        out.ok[j] = True
    return out


def exact_entry(v: Fraction, fmt: Format) -> tuple[float, int, float, float]:
    """The stored form (rounded, k, hi, lo) of an exact rational, for float64 (Python's
    float() of a Fraction rounds correctly, ties to even)."""
    zero_k = fmt.emin - fmt.p + 1
    if v == 0:
        return 0.0, zero_k, 0.0, 0.0
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    k = max(e, fmt.emin) - fmt.p + 1
    scaled = v / Fraction(2) ** k
    hi = float(scaled)
    return float(v), k, hi, float(scaled - Fraction(hi))


def _softmax_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = p (dy - c), c = sum_j p_j dy_j."""
    shape = x.shape
    big = np.abs(dy).max(axis=1)
    tm = terms(x, fmt, margin=np.log(4 * big + 4))
    qh, ql, rel_q = _probabilities(tm)
    bh, bl, err_b, _ = _weighted_sum(tm, dy, tm.live | tm.is_max)
    ch, cl, err_c = _over_s(bh, bl, err_b + tm.tail * big, tm)
    in_range = dd.in_range(bh)
    hh, hl, e_h = dd.add_fp(-np.broadcast_to(ch[:, None], shape), -np.broadcast_to(cl[:, None], shape), dy)
    err_h = err_c[:, None] + e_h
    # At a row's single maximum dy - c = (dy t - sum_live e dy) / s: formed that way it does not
    # cancel to the size of t (dominant rows, where p ~ 1 and dy - c is tiny).
    single = np.flatnonzero(tm.k_ties == 1)
    if single.size:
        sub = _rows(tm, single)
        top = tm.is_max[single].argmax(axis=1)
        dy_top = dy[single, top]
        lh, ll, err_live, _ = _weighted_sum(sub, dy[single], sub.live)
        th_, tl_ = dd.mul_fp(sub.th, sub.tl, dy_top)
        nh, nl, e_n = dd.add(th_, tl_, -lh, -ll)
        err_n = np.abs(dy_top) * (sub.err_t + dd.U_DD * sub.th) + err_live + sub.tail * big[single] + e_n
        top_h, top_l, err_top = _over_s(nh, nl, err_n, sub)
        hh[single, top], hl[single, top], err_h[single, top] = top_h, top_l, err_top
    gh, gl = dd.mul(qh, ql, hh, hl)
    err_g = _SAFETY * (np.abs(qh) * err_h + np.abs(gh) * rel_q) * (1 + 2.0**-40)
    out = certify(gh, gl, err_g, fmt, tm.m)
    out.ok &= in_range[:, None] & dd.in_range(hh) & dd.in_range(gh)
    if single.size:  # the products there (t far below 2^-900 when every other entry is far down)
        out.ok[single, top] &= dd.in_range(lh) & dd.in_range(th_) & dd.in_range(nh)
    # Below the cut: a zero (of dy - c's sign where that is certain).
    tail = tm.tail_entries
    if tail.any():
        signed = zero_entry(fmt, (int(tail.sum()),))
        signed.rounded = np.where(np.abs(hh[tail]) > _SAFETY * err_h[tail], np.copysign(0.0, hh[tail]), 0.0)
        put(out, tail, signed, compact=True)
    # Every finite entry equal: p = 1/k exactly and g = (dy - DY/k) / k.
    for i in np.flatnonzero(np.all(tm.is_max | tm.masked, axis=1)).tolist():
        finite = ~tm.masked[i]
        k = int(tm.k_ties[i])
        store_where(out, i, finite, _dy_minus_rational(dy[i, finite], exact_sum(dy[i, finite]) / k, k, fmt))
    # Masked entries: 0. Rows whose finite entries share one dy: c = that dy, 0 everywhere.
    finite = ~tm.masked
    first = dy[np.arange(shape[0]), np.argmax(finite, axis=1)]
    constant = np.all((dy == first[:, None]) | ~finite, axis=1)
    put(out, tm.masked | constant[:, None], zero_entry(fmt, shape))
    return out


def _rows(tm: Terms, idx: np.ndarray) -> Terms:
    """The Terms of some rows."""
    return Terms(**{name: getattr(tm, name)[idx] for name in Terms.__dataclass_fields__})


def _log_softmax_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = dy - p D, D = sum_j dy_j over every entry."""
    shape = x.shape
    big_dh, big_dl, err_d = pairwise_sum(dy, np.zeros(shape))
    tm = terms(x, fmt, margin=np.log(4 * (np.abs(big_dh) + err_d + 1)))
    qh, ql, rel_q = _probabilities(tm)
    bdh = np.broadcast_to(big_dh[:, None], shape)
    ph, pl = dd.mul(qh, ql, bdh, np.broadcast_to(big_dl[:, None], shape))
    err_p = np.abs(ph) * (rel_q + dd.U_DD) + np.abs(qh) * err_d[:, None]
    ok = dd.in_range(bdh) & dd.in_range(ph)
    ph, pl = unscaled(tm.m, ph, pl)
    with np.errstate(under="ignore"):
        err_p = np.ldexp(err_p, tm.m) + 2.0**-1072
    gh, gl, e_g = dd.add_fp(-ph, -pl, dy)
    out = certify(gh, gl, _SAFETY * (err_p + e_g) * (1 + 2.0**-40), fmt)
    out.ok &= ok
    # Masked entries: p = 0, g = dy exactly.
    put(out, tm.masked, certify(dy, np.zeros(shape), np.zeros(shape), fmt))
    # Below the cut: dy minus an infinitesimal of D's sign, when that sign is certain.
    sign_known = np.abs(big_dh) > _SAFETY * err_d
    tail = tm.tail_entries & sign_known[:, None]
    if tail.any():
        direction = -np.sign(np.broadcast_to(big_dh[:, None], shape)[tail])
        put(out, tail, nudged(dy[tail], direction, fmt), compact=True)
    out.ok &= ~(tm.tail_entries & ~sign_known[:, None])
    # Every finite entry equal: p = 1/k exactly and g = dy - D/k on them.
    for i in np.flatnonzero(np.all(tm.is_max | tm.masked, axis=1)).tolist():
        finite = ~tm.masked[i]
        store_where(out, i, finite, _dy_minus_rational(dy[i, finite], exact_sum(dy[i]) / int(tm.k_ties[i]), 1, fmt))
    return out


def _logsumexp_vjp(x: np.ndarray, dy: np.ndarray, fmt: Format) -> Certified:
    """g = dy p (dy one value per row)."""
    dy = dy.reshape(-1)
    shape = x.shape
    tm = terms(x, fmt, margin=np.log(2 * np.abs(dy) + 2))
    qh, ql, rel_q = _probabilities(tm)
    dyb = np.broadcast_to(dy[:, None], shape)
    gh, gl = dd.mul_fp(qh, ql, dyb)
    out = certify(gh, gl, _SAFETY * np.abs(gh) * (rel_q + dd.U_DD), fmt, tm.m)
    out.ok &= dd.in_range(gh)
    # s = k exactly, k a power of two: g = dy / k exactly.
    exact_rows = ~tm.positive & ((tm.k_ties & (tm.k_ties - 1)) == 0)
    put(out, exact_rows[:, None] & tm.is_max, certify(gh, gl, np.zeros(shape), fmt, tm.m))
    # At the maxima p = 1/k - delta (max_probability): g = dy/k - dy delta, kept apart the same way.
    negligible, kept, _ = max_probability(tm, fmt)
    if (negligible | kept).any():
        _, delta_h, delta_l, err_delta = _delta(tm)
        a = dy / tm.k_ties  # k a power of two: exact
        prod_h, prod_l = dd.two_prod(dy, delta_h)
        entry = certify(a, -prod_h, (np.abs(prod_l) + np.abs(dy) * (err_delta + np.abs(delta_l))) * (1 + 2.0**-40),
                        fmt)
        entry.ok &= dd.in_range(prod_h)
        put(entry, negligible, nudged(a, -np.sign(dy), fmt))
        put(out, *_at_maxima(tm, (negligible | kept) & (dy != 0), entry), compact=True)
    tail_zero = zero_entry(fmt, shape)
    tail_zero.rounded = np.broadcast_to(np.copysign(0.0, dy)[:, None], shape).copy()  # dy's sign
    put(out, tm.tail_entries, tail_zero)
    put(out, tm.masked | (dy == 0)[:, None], zero_entry(fmt, shape))
    return out


# --------------------------------------------------------------------------
# Cross-entropy's gradient (formulas in loss; what is exact about the coefficients -
# which are positive, the rows ignored or out of range, the totals A_i - from
# fast_long_double.loss_coefficients)


REL_COEF = 4 * dd.U_DD
"""Relative error bound of every coefficient below (a constant within 2^-106, then at most
two products and one sum of non-negative terms)."""


def loss_coefficients(loss: LossInputs, rows: int, n: int) -> LossCoefficients:
    """coef_ic as double-doubles (coef + coef_lo, within REL_COEF; 0 on ignored and out-of-range
    rows), with what is exact about them from fast_long_double.loss_coefficients."""
    ch, cl = _double_double_coefficients(loss, rows, n)
    return replace(fast_long_double.loss_coefficients(loss, rows, n), coef=ch, coef_lo=cl, rel=REL_COEF)


def _double_double_coefficients(loss: LossInputs, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """coef_ic as double-doubles (rows, n), within REL_COEF; 0 on ignored and out-of-range rows."""
    eps = Fraction(float(loss.label_smoothing))
    w64 = np.ones(n) if loss.weight is None else np.asarray(loss.weight, dtype=np.float64)
    smooth_h, smooth_l = dd.from_fraction(eps / n)
    keep_h, keep_l = dd.from_fraction(1 - eps)
    if loss.target_kind == "probability":
        q = np.asarray(loss.target, dtype=np.float64)
        kh, kl = dd.mul_fp(np.full(q.shape, keep_h), np.full(q.shape, keep_l), q)
        sh, sl, _ = dd.add(kh, kl, np.full(q.shape, smooth_h), np.full(q.shape, smooth_l))
        return dd.mul_fp(sh, sl, np.broadcast_to(w64, q.shape))
    t = np.asarray(loss.target).astype(np.int64).reshape(rows)
    valid = ~((t < 0) | (t >= n))
    if loss.ignore_index is not None:
        valid &= t != loss.ignore_index
    ch, cl = dd.mul_fp(np.full((rows, n), smooth_h), np.full((rows, n), smooth_l), np.broadcast_to(w64, (rows, n)))
    r = np.flatnonzero(valid)
    tv = t[valid]
    th, tl = dd.mul_fp(np.full(r.size, keep_h), np.full(r.size, keep_l), w64[tv])
    ch[r, tv], cl[r, tv], _ = dd.add(ch[r, tv], cl[r, tv], th, tl)
    ch[~valid] = 0.0
    cl[~valid] = 0.0
    return ch, cl


@_quiet()
def loss_gradient(x: np.ndarray, lc: LossCoefficients, scale: list[Fraction],
                  fmt: Format) -> tuple[Certified, np.ndarray]:
    """G_ic = g_i (A_i p_ic - coef_ic) for the rows it can take (as fast_long_double.loss_gradient:
    the mask returned; rows left unproven go to the mpmath engine)."""
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    out = zero_entry(fmt, (rows, n))
    nan_rows, undefined = special_rows(x)
    covered = ~(nan_rows | undefined) & ~lc.out_of_range
    gh = np.empty(rows)
    gl = np.empty(rows)
    for i, v in enumerate(scale):
        gh[i], gl[i] = dd.from_fraction(v)
    ch, cl = lc.coef, lc.coef_lo
    ah, al, err_asum = pairwise_sum(ch, cl)
    zero_rows = lc.ignored | (gh == 0) | ~lc.positive.any(axis=1)
    usable = dd.in_range(gh) & dd.in_range(ah) & dd.in_range(ch).all(axis=1)
    out.ok[covered & ~zero_rows & ~usable] = False
    todo = np.flatnonzero(covered & ~zero_rows & usable)
    for chunk in row_chunks(todo.size, n, CHUNK_ELEMENTS):
        idx = todo[chunk]
        store_rows(out, idx, _loss_gradient_rows(x[idx], ch[idx], cl[idx], lc.positive[idx],
                                                  [lc.totals[i] for i in idx.tolist()], ah[idx], al[idx],
                                                  err_asum[idx], gh[idx], gl[idx], fmt))
    return out, covered


def _loss_gradient_rows(x, ch, cl, positive, totals, ah, al, err_asum, gh, gl, fmt: Format) -> Certified:
    shape = x.shape
    rel_a = REL_COEF + err_asum / ah  # non-negative terms
    margin = np.log(np.abs(gh) * ah * 4 + 4)
    tm = terms(x, fmt, margin=margin)
    qh, ql, rel_q = _probabilities(tm)
    aph, apl = dd.mul(qh, ql, np.broadcast_to(ah[:, None], shape), np.broadcast_to(al[:, None], shape))
    err_ap = np.abs(aph) * (rel_a[:, None] + rel_q + dd.U_DD)
    ok = dd.in_range(aph)
    aph, apl = unscaled(tm.m, aph, apl)
    with np.errstate(under="ignore"):
        err_ap = np.ldexp(err_ap, tm.m) + 2.0**-1072
    hh, hl, e_h = dd.add(aph, apl, -ch, -cl)
    err_h = err_ap + np.abs(ch) * REL_COEF + e_h
    # At a row's single maximum A p - coef = (sum of the other coefs - coef t) / s: formed that
    # way it does not cancel to the size of t (a confident row's target class).
    single = np.flatnonzero(tm.k_ties == 1)
    if single.size:
        sub = _rows(tm, single)
        top = tm.is_max[single].argmax(axis=1)
        c_top_h, c_top_l = ch[single, top], cl[single, top]
        oh, ol, err_o = pairwise_sum(np.where(tm.is_max[single], 0.0, ch[single]),
                                     np.where(tm.is_max[single], 0.0, cl[single]))
        err_o = err_o + np.abs(oh) * REL_COEF
        pth, ptl = dd.mul(c_top_h, c_top_l, sub.th, sub.tl)
        nh, nl, e_n = dd.add(oh, ol, -pth, -ptl)
        err_n = err_o + np.abs(c_top_h) * (sub.err_t + sub.th * (REL_COEF + dd.U_DD)) + e_n
        top_h, top_l, err_top = _over_s(nh, nl, err_n, sub)
        hh[single, top], hl[single, top], err_h[single, top] = top_h, top_l, err_top
        ok[single, top] = dd.in_range(pth) | (c_top_h == 0)
    gb_h = np.broadcast_to(gh[:, None], shape)
    gb_l = np.broadcast_to(gl[:, None], shape)
    vh, vl = dd.mul(gb_h, gb_l, hh, hl)
    err_v = np.abs(gb_h) * err_h + np.abs(vh) * (2.0**-105 + dd.U_DD)
    out = certify(vh, vl, _SAFETY * err_v * (1 + 2.0**-40), fmt)
    out.ok &= ok & dd.in_range(hh) & dd.in_range(vh)
    # Masked logits (p = 0): G = -g coef (0 where coef is 0).
    mh, ml = dd.mul(gb_h, gb_l, -ch, -cl)
    m_err = np.abs(mh) * (2.0**-105 + REL_COEF + dd.U_DD)
    put(out, tm.masked, certify(mh, ml, _SAFETY * m_err, fmt))
    # Below the cut, g A p is far below ulp(0): -g coef plus that where coef > 0, else a zero of g's sign.
    tail_p = np.maximum(np.abs(gh)[:, None] * ah[:, None] * 2 * cut_term(tm.d_cut)[:, None], 2.0**-1074)
    put(out, tm.tail_entries & positive, certify(mh, ml, _SAFETY * m_err + tail_p, fmt))
    tail_zero = tm.tail_entries & ~positive
    if tail_zero.any():
        signed = zero_entry(fmt, (int(tail_zero.sum()),))
        signed.rounded = np.copysign(0.0, gb_h[tail_zero])
        put(out, tail_zero, signed, compact=True)
    put(out, tm.masked & ~positive, zero_entry(fmt, shape))
    out.ok &= ~(tm.masked & positive & ~dd.in_range(mh))
    # Every finite logit equal: p = 1/k exactly, G = g (A/k - coef) with A/k from the exact total.
    for r in np.flatnonzero(np.all(tm.is_max | tm.masked, axis=1)).tolist():
        finite = ~tm.masked[r]
        kh, kl = dd.from_fraction(totals[r] / int(tm.k_ties[r]))
        cf_h, cf_l = ch[r, finite], cl[r, finite]
        dh_, dl_, e_d = dd.add(np.full(cf_h.shape, kh), np.full(cf_h.shape, kl), -cf_h, -cf_l)
        rh, rl = dd.mul(dh_, dl_, np.full(dh_.shape, gh[r]), np.full(dh_.shape, gl[r]))
        err_r = abs(gh[r]) * (e_d + abs(kh) * 2.0**-105 + np.abs(cf_h) * REL_COEF) + np.abs(rh) * (2.0**-105 + dd.U_DD)
        row = certify(rh, rl, _SAFETY * err_r * (1 + 2.0**-40), fmt)
        row.ok &= dd.in_range(dh_) & dd.in_range(rh)
        store_where(out, r, finite, row)
    return out


@_quiet()
def row_losses(x: np.ndarray, lc: LossCoefficients, fmt: Format) -> RowLosses:
    """A L + sum_c coef_c (-d_c) per row, every term non-negative (no cancellation)."""
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    kind = row_kinds(x, lc)
    hi = np.zeros(rows)
    lo = np.zeros(rows)
    err = np.zeros(rows)
    ok = np.ones(rows, dtype=bool)
    todo = np.flatnonzero(kind == "finite")
    ch_all, cl_all = lc.coef, lc.coef_lo
    for chunk in row_chunks(todo.size, n, CHUNK_ELEMENTS):
        idx = todo[chunk]
        tm = terms(x[idx], fmt)
        ch, cl = ch_all[idx], cl_all[idx]
        ah, al, err_asum = pairwise_sum(ch, cl)
        err_a = ah * REL_COEF + err_asum
        neg_h = np.where(tm.masked, 0.0, -tm.dh)
        neg_l = np.where(tm.masked, 0.0, -tm.dl)
        th, tl = dd.mul(ch, cl, neg_h, neg_l)  # every term >= 0
        th = np.where(ch == 0, 0.0, th)
        tl = np.where(ch == 0, 0.0, tl)
        usable = (dd.in_range(ch) & dd.in_range(neg_h) & dd.in_range(th) & ~tm.bad).all(axis=1)
        sh, sl, err_ssum = pairwise_sum(th, tl)
        err_spread = np.abs(th).sum(axis=1) * (1 + 2.0**-30) * (REL_COEF + dd.U_DD) + err_ssum
        alh, all_ = dd.mul(ah, al, tm.lh, tm.ll)
        err_al = ah * tm.err_l + np.abs(alh) * (err_a / ah + dd.U_DD)
        vh, vl, e_v = dd.add(alh, all_, sh, sl)
        hi[idx], lo[idx] = vh, vl
        err[idx] = _SAFETY * (err_al + err_spread + e_v) * (1 + 2.0**-40)
        ok[idx] = usable & dd.in_range(ah) & dd.in_range(alh)  # False: the exact engine computes the row
    entries = certify(hi[todo], lo[todo], err[todo], fmt)
    entries.ok &= ok[todo]
    return RowLosses(kind, hi, lo, err, entries)


class DoubleDoublePath:
    """The double-double fast path (a FastPath): float64, on every machine."""

    name = "double-double"

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
