"""Exact references of the backward passes: the vector-Jacobian products (VJPs) of
softmax, log_softmax and logsumexp for an upstream gradient dy, correctly rounded.

With p = softmax(x) over a row and dy of the op's output shape:

* softmax:      g_i = p_i (dy_i - sum_j p_j dy_j)
* log_softmax:  g_i = dy_i - p_i sum_j dy_j
* logsumexp:    g_i = dy p_i               (dy: one value per row)

These closed forms define the gradient everywhere the forward is defined,
masked entries included (p_i = 0 there: softmax and logsumexp give 0,
log_softmax gives dy_i). A row with NaN gives NaN; a fully masked row or one
holding +inf has an undefined gradient (docs/special-values.md#gradients: the forward is undefined
or a limit there).

Each element is computed in mpmath with a rigorous bound on its error and
certified as in :mod:`softaudit.reference.exact` (Ziv's loop). Exact zeros, which
no precision could certify, are found algebraically: the exps of distinct
rationals are linearly independent over the rationals (Lindemann-Weierstrass),
so a combination sum_u r_u exp(d_u) with rational r_u is 0 only when every
r_u is 0, and that is checked in exact rational arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from softaudit.formats import Format, exact_sum, ulp_exponent
from softaudit.reference import exact as mp
from softaudit.reference.engines import fast_path
from softaudit.reference.exact import (
    NEGLIGIBLE_ULPS,
    Certifier,
    Entry,
    OpReference,
    base_precision,
    certified_rows,
    fill_failed,
    mpf_of_fraction,
    op_reference,
    row_terms,
)

_SAFETY = 2.0
"""Every error bound below is doubled: they are sums of first-order terms."""


def _special_row(x: np.ndarray, fmt: Format) -> tuple[list[Entry] | None, bool] | None:
    """Entries of a row whose gradient is NaN or undefined, else None (an ordinary row)."""
    if np.isnan(x).any():
        return [Certifier(fmt).special(math.nan)] * x.size, True
    if (x == np.inf).any() or (x == -np.inf).all():
        return None, True
    return None



def _wanted(cols: np.ndarray | None, n: int) -> np.ndarray:
    """A mask of the columns a row function must compute (every one when ``cols`` is None)."""
    if cols is None:
        return np.ones(n, dtype=bool)
    want = np.zeros(n, dtype=bool)
    want[cols] = True
    return want


def _group_sums(rt, dy_finite: np.ndarray) -> tuple[list, np.ndarray, list[Fraction]]:
    """Per distinct finite input value u: sum of dy over its entries (mpf), sum of |dy| (float
    upper bound) and the exact sum (Fraction)."""
    parts = [dy_finite[g] for g in rt.groups()]
    exact = [Fraction(float(p[0])) if p.size == 1 else exact_sum(p) for p in parts]
    abs_sum = np.array([float(np.abs(p).sum()) for p in parts]) * (1 + 1e-12)
    as_mpf = [mpf_of_fraction(fr) for fr in exact]
    return as_mpf, abs_sum, exact


def softmax_vjp_row(x: np.ndarray, dy: np.ndarray, fmt: Format, prec: int,
                    cols: np.ndarray | None = None) -> tuple[list[Entry] | None, bool]:
    """g_i = p_i (dy_i - c), c = sum_j p_j dy_j, for one row (only the columns ``cols`` when given:
    the others are left as zero entries)."""
    special = _special_row(x, fmt)
    if special is not None:
        return special
    dy64 = dy.astype(np.float64)
    big = float(np.abs(dy64).max()) if dy64.size else 0.0
    rt = row_terms(x, fmt, prec, cut_margin=math.log(4 * big + 4))
    cert = Certifier(fmt)
    eps = rt.eps
    group_dy, group_abs, group_exact = _group_sums(rt, dy64[rt.finite])
    # P = s * c = sum_u e_u DY_u; the tail below the cut is bounded.
    products = [ei * dyu for ei, dyu in zip(rt.e, group_dy) if ei is not None]
    big_p = mp.fsum(products)
    # Bounds in mpf (the private context): exps far below float64's range must not vanish from them.
    abs_p = mp.fsum(ei * float(au) for ei, au in zip(rt.e, group_abs) if ei is not None) * (1 + 1e-12)
    tail_dy = rt.tail_bound * big
    err_p = abs_p * (rt.terms + 8) * eps * _SAFETY + tail_dy
    c = big_p / rt.s
    err_c = _SAFETY * ((err_p + abs(big_p) * rt.err_s / rt.s) / rt.s + 2 * eps * abs(c))

    # Exact zeros: dy_i - c = (sum_u exp(d_u) (count_u dy_i - DY_u)) / s is 0 only when every group's
    # mean of dy equals dy_i. Checked exactly when the float means are (nearly) all equal.
    common_mean: Fraction | None = None
    means_f = np.array([float(fr) for fr in group_exact]) / rt.counts
    if np.ptp(means_f) <= 1e-9 * max(1e-300, float(np.abs(means_f).max())):
        exact_means = {fr / int(cnt) for fr, cnt in zip(group_exact, rt.counts)}
        if len(exact_means) == 1:
            common_mean = exact_means.pop()

    out: list[Entry] = [cert.zero_entry] * x.size  # masked entries: p_i = 0 exactly
    finite_idx = np.flatnonzero(rt.finite)
    want = _wanted(cols, x.size)
    if rt.uniq.size == 1:  # every finite entry equal: p = 1/k, g_j = (dy_j - D/k) / k is rational
        k = rt.k_ties
        for j in finite_idx[want[finite_idx]].tolist():
            exact = (Fraction(float(dy64[j])) - group_exact[0] / k) / k
            if exact != 0:
                out[j] = cert.rational(exact)
        return out, cert.certified
    for j, u in zip(finite_idx.tolist(), rt.inverse.tolist()):
        if not want[j]:
            continue
        ei = rt.e[u]
        dyj = float(dy64[j])
        if ei is None:
            # |g| < exp(d_cut) (|dy_j| + |c|): far below the smallest subnormal, a zero (of dy_j - c's
            # sign where that is certain; a zero's sign is not part of a reference).
            h0 = dyj - c
            if abs(h0) > 2 * err_c:
                out[j] = (math.copysign(0.0, float(h0)),) + cert.zero_entry[1:]
            continue
        if common_mean is not None and Fraction(dyj) == common_mean:
            continue  # exactly 0
        h = mp.mpf(dyj) - c
        g = ei * h / rt.s
        p = ei / rt.s
        err = _SAFETY * (p * (err_c + eps * abs(h)) * (1 + rt.rel_p) + abs(g) * (rt.rel_p + 3 * eps))
        if ei == 1 and rt.only_tail:
            # The value at t = 0, exactly, and the remainder's side and size from the cut-off terms.
            k = rt.k_ties
            out[j] = cert.rational((Fraction(dyj) - group_exact[-1] / k) / k,
                                   *_maximum_remainder(rt, group_exact, Fraction(dyj), big))
            continue
        out[j] = cert.put(g, err)
    return out, cert.certified


def _maximum_remainder(rt, group_exact: list[Fraction], dy_i: Fraction, big: float) -> tuple[int, object]:
    """At a maximum of a row whose other terms all lie below the cut (t computed as 0): the side
    and a bound of g_i - (dy_i - DY_max/k) / k, the exact g_i = (dy_i - C/s) / s less its value at
    t = 0 (RowTerms.tail_remainder).

    With s = k + t and C = DY_max + T (t = sum_u n_u e_u, T = sum_u DY_u e_u over the cut-off
    groups), the first-order change is (1/k^2) sum_u e_u (n_u (2 DY_max/k - dy_i) - DY_u); the
    second-order remainder is under 8 (n big + 1) (1 + big)^2 (sum_u n_u e_u)^2 / k^3.
    """
    k = rt.k_ties
    dy_max = group_exact[-1]
    weights = [(int(n) * (2 * dy_max / k - dy_i) - dy_u) / (k * k)
               for n, dy_u in zip(rt.counts.tolist(), group_exact)]
    curvature = 8 * (int(rt.counts.sum()) * big + 1) * (1 + big) ** 2 / k ** 3
    side, bound = rt.tail_remainder(weights, curvature)
    cut = [u for u, e in enumerate(rt.e) if e is None]
    if side == 0 and len(cut) == 1 and weights[cut[0]] == 0:
        # One cut-off value (t = n e, T = DY_u e, e its exp) whose first-order term vanishes exactly:
        # then the remainder is e^2 n^2 (DY_max/k - dy_i) / k^3 plus terms of order e^3, so the
        # second order's sign decides (a rational here, exactly known).
        second = Fraction(int(rt.counts[cut[0]]) ** 2, k ** 3) * (dy_max / k - dy_i)
        if second and rt.tail_bound * curvature * 8 < abs(mpf_of_fraction(second)):
            side = 1 if second > 0 else -1
    return side, bound


def log_softmax_vjp_row(x: np.ndarray, dy: np.ndarray, fmt: Format, prec: int,
                        cols: np.ndarray | None = None) -> tuple[list[Entry] | None, bool]:
    """g_i = dy_i - p_i D, D = sum_j dy_j (over every entry), for one row (columns ``cols``)."""
    special = _special_row(x, fmt)
    if special is not None:
        return special
    dy64 = dy.astype(np.float64)
    d_exact = exact_sum(dy64)
    big = float(abs(d_exact)) + 1.0
    rt = row_terms(x, fmt, prec, cut_margin=math.log(4 * big))
    cert = Certifier(fmt)
    eps = rt.eps
    d_m = mpf_of_fraction(d_exact)
    single_group = rt.uniq.size == 1  # every finite entry equal: p_i = 1/k exactly
    out: list[Entry] = [cert.zero_entry] * x.size
    p_cut = mp.exp(rt.d_cut)  # every p_j below the cut is under this (s >= 1)
    finite_idx = np.flatnonzero(rt.finite)
    u_of = np.full(x.size, -1)
    u_of[finite_idx] = rt.inverse
    for j in np.flatnonzero(_wanted(cols, x.size)).tolist():
        dyj = float(dy64[j])
        u = int(u_of[j])
        if u < 0:  # masked: p_j = 0, g_j = dy_j exactly
            out[j] = cert.put(mp.mpf(dyj), 0) if dyj != 0 else cert.zero_entry
            continue
        if single_group:
            exact = Fraction(dyj) - d_exact / rt.k_ties
            if exact != 0:
                out[j] = cert.rational(exact)
            continue
        if d_exact == 0:  # g_j = dy_j exactly (0 is the only zero of a row with two distinct values or more)
            out[j] = cert.put(mp.mpf(dyj), 0) if dyj != 0 else cert.zero_entry
            continue
        ei = rt.e[u]
        if ei is None:
            # dy_j minus p_j D, 0 < p_j < p_cut: dy_j with a remainder against D's sign.
            if d_exact == 0:
                out[j] = cert.put(mp.mpf(dyj), 0) if dyj != 0 else cert.zero_entry
            else:
                out[j] = cert.rational(Fraction(dyj), -1 if d_exact > 0 else 1, abs(d_m) * p_cut * (1 + 4 * eps))
            continue
        if ei == 1 and rt.only_tail and d_exact != 0:
            # At the maxima p_j = 1/(k + t) with t in (0, tail_bound], computed as 0: the exact
            # dy_j - D/k plus D t / (k (k + t)), which has D's sign (it settles a midpoint).
            k = rt.k_ties
            upper = abs(d_m) * rt.tail_bound / (k * k) * (1 + 4 * eps)
            out[j] = cert.rational(Fraction(dyj) - d_exact / k, 1 if d_exact > 0 else -1, upper)
            continue
        pd = ei * d_m / rt.s
        g = mp.mpf(dyj) - pd
        err = _SAFETY * (abs(pd) * (rt.rel_p + 3 * eps) + 2 * eps * abs(g))
        out[j] = cert.put(g, err)
    return out, cert.certified


def logsumexp_vjp_row(x: np.ndarray, dy: float, fmt: Format, prec: int,
                      cols: np.ndarray | None = None) -> tuple[list[Entry] | None, bool]:
    """g_i = dy p_i for one row (dy a scalar)."""
    special = _special_row(x, fmt)
    if special is not None:
        return special
    cert = Certifier(fmt)
    if dy == 0:
        return [cert.zero_entry] * x.size, True
    rt = row_terms(x, fmt, prec, cut_margin=math.log(2 * abs(dy) + 2))
    dy_m = mp.mpf(float(dy))
    per_u: list[Entry] = []
    k = rt.k_ties
    needed = np.zeros(len(rt.e), dtype=bool)
    needed[rt.inverse[_wanted(cols, x.size)[rt.finite]]] = True
    for di, ei, need in zip(rt.d, rt.e, needed.tolist()):
        if not need:
            per_u.append(cert.zero_entry)
            continue
        if rt.uniq.size == 1:  # every finite entry equal: g = dy / k, a rational
            per_u.append(cert.rational(Fraction(float(dy)) / k))
            continue
        if ei is None:
            per_u.append((math.copysign(0.0, dy),) + cert.zero_entry[1:])  # far below ulp(0), dy's sign
            continue
        if di == 0 and (rt.t > 0 or rt.tail > 0):
            # p = 1/k - delta at the maxima (exact._max_probability), delta in (0, upper]: where
            # dy delta is negligible, the exact dy/k with a remainder toward 0 (it settles a
            # midpoint, and the binade below a power of two); for k a power of two dy (1/k - delta)
            # is formed exactly, otherwise dy/(k + t) to the precision.
            delta = rt.t / (k * rt.s)
            err = 2 * abs(dy_m) * (rt.err_t / (k * (rt.s - rt.err_s)) + delta * (rt.err_s / rt.s + 2 * rt.eps))
            upper = abs(dy_m) * delta + err
            r = Fraction(float(dy)) / k
            if mp.ldexp(upper, -ulp_exponent(mpf_of_fraction(r), fmt)) < NEGLIGIBLE_ULPS:
                per_u.append(cert.rational(r, -1 if dy > 0 else 1, upper))
            elif not k & (k - 1):
                inv_k = mp.ldexp(1, -(k.bit_length() - 1))
                per_u.append(cert.put(mp.exact_mul(dy_m, mp.exact_sub(inv_k, delta)), err))
            else:
                g = dy_m / rt.s
                per_u.append(cert.put(g, _SAFETY * abs(g) * (rt.rel_p + 2 * rt.eps)))
            continue
        g = dy_m * ei / rt.s
        per_u.append(cert.put(g, _SAFETY * abs(g) * (rt.rel_p + 2 * rt.eps)))
    out: list[Entry] = [cert.zero_entry] * x.size
    for j, u in zip(np.flatnonzero(rt.finite).tolist(), rt.inverse.tolist()):
        out[j] = per_u[u]
    return out, cert.certified


def backward_reference(op: str, x: np.ndarray, dy: np.ndarray, fmt: Format,
                       engine: str = "auto") -> tuple[OpReference, int]:
    """Certified VJP reference of ``op`` at ``x`` for upstream ``dy``; and the uncertified count.

    ``dy`` has the forward output's shape: (rows, n), or (rows,) for logsumexp.
    """
    xs = np.asarray(x).astype(np.float64)
    dys = np.asarray(dy).astype(np.float64)
    if not np.isfinite(dys).all():
        raise ValueError("the upstream gradient must be finite")
    rows, n = xs.shape
    row_fns: dict[str, Callable[..., tuple[list[Entry] | None, bool]]] = {
        "softmax": softmax_vjp_row, "log_softmax": log_softmax_vjp_row, "logsumexp": logsumexp_vjp_row}
    row_fn = row_fns[op]
    path = fast_path(fmt) if engine == "auto" else None
    if path is not None:
        fast, covered = path.backward(op, xs, dys, fmt)
        # NaN and undefined rows (not covered): the row functions settle them without arithmetic.
        return fill_failed(f"{op}_backward", fast, ~covered,
                           lambda i, prec, cols: row_fn(xs[i], dys[i], fmt, prec, cols), base_precision(fmt, n))
    per_row, uncertified = certified_rows(
        rows, base_precision(fmt, n), lambda i, prec: row_fn(xs[i], dys[i], fmt, prec))
    return op_reference(f"{op}_backward", per_row, (rows, n)), uncertified
