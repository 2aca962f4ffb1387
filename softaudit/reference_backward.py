"""Exact references of the backward passes: the vector-Jacobian products (VJPs) of
softmax, log_softmax and logsumexp for an upstream gradient dy, correctly rounded.

With p = softmax(x) over a row and dy of the op's output shape:

* softmax:      g_i = p_i (dy_i - sum_j p_j dy_j)
* log_softmax:  g_i = dy_i - p_i sum_j dy_j
* logsumexp:    g_i = dy p_i               (dy: one value per row)

These closed forms define the gradient everywhere the forward is defined,
masked entries included (p_i = 0 there: softmax and logsumexp give 0,
log_softmax gives dy_i). A row with NaN gives NaN; a fully masked row or one
holding +inf has an undefined gradient (DESIGN §5: the forward is undefined
or a limit there).

Each element is computed in mpmath with a rigorous bound on its error and
certified as in :mod:`softaudit.reference` (Ziv's loop). Exact zeros, which
no precision could certify, are found algebraically: the exps of distinct
rationals are linearly independent over the rationals (Lindemann-Weierstrass),
so a combination sum_u r_u exp(d_u) with rational r_u is 0 only when every
r_u is 0, and that is checked in exact rational arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from softaudit.formats import Format, exact_sum
from softaudit.reference import (
    Certifier,
    Entry,
    OpReference,
    _ctx,
    base_precision,
    certified_rows,
    fill_failed,
    mpf_of_fraction,
    nudged_entry,
    op_reference,
    row_terms,
)
from softaudit import reference_double

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
    big_p = _ctx.fsum(products)
    e_f = np.array([float(ei) if ei is not None else 0.0 for ei in rt.e])
    abs_p = float(np.dot(e_f, group_abs)) * (1 + 1e-12)
    tail_dy = rt.tail * big * math.exp(rt.d_cut)
    err_p = abs_p * (rt.terms + 8) * eps * _SAFETY + tail_dy
    c = big_p / rt.s
    c_f = float(c)
    err_c = _SAFETY * ((err_p + abs(float(big_p)) * rt.err_s / rt.s_f) / rt.s_f + 2 * eps * abs(c_f))

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
    for j, u in zip(finite_idx.tolist(), rt.inverse.tolist()):
        if not want[j]:
            continue
        ei = rt.e[u]
        dyj = float(dy64[j])
        if ei is None:
            # |g| < exp(d_cut) (|dy_j| + |c|): far below the smallest subnormal, a zero (of dy_j - c's
            # sign where that is certain; a zero's sign is not part of a reference).
            h_f = dyj - c_f
            if abs(h_f) > 2 * err_c:
                out[j] = (math.copysign(0.0, h_f),) + cert.zero_entry[1:]
            continue
        if common_mean is not None and Fraction(dyj) == common_mean:
            continue  # exactly 0
        h = _ctx.mpf(dyj) - c
        g = ei * h / rt.s
        p_f = float(ei) / rt.s_f
        err = _SAFETY * (p_f * (err_c + eps * abs(float(h))) * (1 + rt.rel_p) + abs(float(g)) * (rt.rel_p + 3 * eps))
        out[j] = cert.put(g, err)
    return out, cert.certified


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
    finite_idx = np.flatnonzero(rt.finite)
    u_of = np.full(x.size, -1)
    u_of[finite_idx] = rt.inverse
    for j in np.flatnonzero(_wanted(cols, x.size)).tolist():
        dyj = float(dy64[j])
        u = int(u_of[j])
        if u < 0:  # masked: p_j = 0, g_j = dy_j exactly
            out[j] = cert.put(_ctx.mpf(dyj), 0.0) if dyj != 0 else cert.zero_entry
            continue
        if single_group:
            exact = Fraction(dyj) - d_exact / rt.k_ties
            if exact != 0:
                v = mpf_of_fraction(exact)
                out[j] = cert.put(v, _SAFETY * 2 * eps * abs(float(v)))
            continue
        if dyj == 0 and d_exact == 0:
            continue  # exactly 0 (the only zero of a row with two distinct values or more)
        ei = rt.e[u]
        if ei is None:
            # dy_j minus p_j D, p_j far below ulp(0): dy_j itself, nudged against D's sign.
            if d_exact == 0:
                out[j] = cert.put(_ctx.mpf(dyj), 0.0) if dyj != 0 else cert.zero_entry
            else:
                out[j] = nudged_entry(_ctx.mpf(dyj), -1 if d_exact > 0 else 1, fmt)
            continue
        pd = ei * d_m / rt.s
        g = _ctx.mpf(dyj) - pd
        err = _SAFETY * (abs(float(pd)) * (rt.rel_p + 3 * eps) + 2 * eps * abs(float(g)))
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
    dy_m = _ctx.mpf(float(dy))
    per_u: list[Entry] = []
    k = rt.k_ties
    needed = np.zeros(len(rt.e), dtype=bool)
    needed[rt.inverse[_wanted(cols, x.size)[rt.finite]]] = True
    for di, ei, need in zip(rt.d, rt.e, needed.tolist()):
        if not need:
            per_u.append(cert.zero_entry)
            continue
        if ei is None:
            per_u.append((math.copysign(0.0, dy),) + cert.zero_entry[1:])  # far below ulp(0), dy's sign
            continue
        if di == 0 and not k & (k - 1) and (rt.t_f > 0 or rt.tail > 0):
            # p = 1/k - delta at the maxima (reference._max_probability): dy/k nudged toward 0 when
            # delta is negligible, else dy (1/k - delta) formed exactly.
            inv_k = _ctx.ldexp(1, -(k.bit_length() - 1))
            delta = rt.t / (k * rt.s)
            err = 2 * abs(float(dy)) * (rt.err_t / (k * (rt.s_f - rt.err_s))
                                        + abs(float(delta)) * (rt.err_s / rt.s_f + 2 * rt.eps))
            a = _ctx.fmul(dy_m, inv_k, exact=True)
            near = nudged_entry(a, -1 if dy > 0 else 1, fmt)
            if math.ldexp(abs(float(dy)) * float(delta) + err, -near[1]) < 2.0**-60:
                per_u.append(near)
            else:
                per_u.append(cert.put(_ctx.fmul(dy_m, _ctx.fsub(inv_k, delta, exact=True), exact=True), err))
            continue
        g = dy_m * ei / rt.s
        per_u.append(cert.put(g, _SAFETY * abs(float(g)) * (rt.rel_p + 2 * rt.eps)))
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
    row_fn = {"softmax": softmax_vjp_row, "log_softmax": log_softmax_vjp_row, "logsumexp": logsumexp_vjp_row}[op]
    fast_path = reference_double.fast_path(fmt) if engine == "auto" else None
    if fast_path is not None:
        fast, covered = fast_path.backward(op, xs, dys, fmt)
        # NaN and undefined rows (not covered): the row functions settle them without arithmetic.
        return fill_failed(f"{op}_backward", fast, ~covered,
                           lambda i, prec, cols: row_fn(xs[i], dys[i], fmt, prec, cols), base_precision(fmt, n))
    per_row, uncertified = certified_rows(
        rows, base_precision(fmt, n), lambda i, prec: row_fn(xs[i], dys[i], fmt, prec))
    return op_reference(f"{op}_backward", per_row, (rows, n)), uncertified
