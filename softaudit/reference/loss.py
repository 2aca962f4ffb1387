"""Exact references of cross-entropy and of its gradient with respect to the logits.

Semantics are those of ``torch.nn.functional.cross_entropy`` (docs/cross-entropy.md).
With l = log_softmax(logits), p = softmax(logits), C classes, eps the label
smoothing and w the class weights (ones when absent), every row's loss is a
weighted sum of the non-negative terms -l_c = L - d_c (L = log sum exp(d),
d_c = x_c - max):

    loss_i = sum_c coef_ic (L - d_ic)
    coef_ic = (1 - eps) w_t [c = t_i] + (eps / C) w_c      class-index target t_i
    coef_ic = w_c ((1 - eps) q_ic + eps / C)                 probability target q_i

and its gradient is G_ic = g_i (A_i p_ic - coef_ic) with A_i = sum_c coef_ic and
g_i the upstream gradient of row i (reduction none), the upstream scalar (sum),
or the upstream scalar over the mean's denominator (mean). Ignored rows
(target == ignore_index) contribute 0 and get gradient 0.

Because the loss is a sum of non-negative terms it is computed without
cancellation; zero losses are recognised exactly (a row with one finite logit
has L = 0). Gradient zeros are found as in gradients (exps of
distinct rationals are linearly independent), in exact rational arithmetic.
Special rows follow docs/special-values.md#the-exact-answers-class: NaN logits give NaN; a fully masked row or one
holding +inf is undefined; a -inf logit with a positive coefficient gives +inf
(the gradient keeps its closed form there). A target outside [0, C) that is not
the ignore_index has no defined loss: the reference expects NaN (a raise is
accepted by the runner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from softaudit.formats import Format
from softaudit.reference import exact as mp
from softaudit.reference.engines import fast_path
from softaudit.reference.exact import (
    MAX_PRECISION,
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
from softaudit.reference.fast_path import FastPath

if TYPE_CHECKING:
    from softaudit.cases.inputs import LossInputs

_SAFETY = 2.0
"""Every error bound below is doubled: they are sums of first-order terms."""


@dataclass
class LossReference:
    """Cross-entropy references for one case: per row, and both reductions."""

    none: OpReference
    """Per-row losses, shape (rows,)."""
    mean: OpReference
    """Shape (1,); undefined when every row is ignored (0 / 0)."""
    sum: OpReference
    """Shape (1,)."""
    uncertified: int


# --------------------------------------------------------------------------
# Coefficients


@dataclass
class RowCoefficients:
    """coef_c of one row as exact Fractions (None when the row is ignored)."""

    ignored: bool
    out_of_range: bool
    coef: list[Fraction] | None
    total: Fraction


def _fraction_vector(values: np.ndarray | None, n: int) -> list[Fraction]:
    if values is None:
        return [Fraction(1)] * n
    return [Fraction(float(v)) for v in np.asarray(values, dtype=np.float64)]


def row_coefficients(loss: LossInputs, n: int) -> list[RowCoefficients]:
    """The exact coefficients coef_ic of every row (see the module docstring)."""
    eps = Fraction(float(loss.label_smoothing))
    weights = _fraction_vector(loss.weight, n)
    w_total = sum(weights, Fraction(0))
    smooth = [eps / n * w for w in weights]
    out: list[RowCoefficients] = []
    if loss.target_kind == "probability":
        q = np.asarray(loss.target, dtype=np.float64)
        for i in range(q.shape[0]):
            coef = [w * ((1 - eps) * Fraction(float(qc)) + eps / n) for w, qc in zip(weights, q[i])]
            out.append(RowCoefficients(False, False, coef, sum(coef, Fraction(0))))
        return out
    for t in np.asarray(loss.target).tolist():
        if loss.ignore_index is not None and t == loss.ignore_index:
            out.append(RowCoefficients(True, False, None, Fraction(0)))
        elif not 0 <= t < n:
            out.append(RowCoefficients(False, True, None, Fraction(0)))
        else:
            coef = list(smooth)
            coef[t] += (1 - eps) * weights[t]
            out.append(RowCoefficients(False, False, coef, (1 - eps) * weights[t] + eps / n * w_total))
    return out


def mean_denominator(loss: LossInputs, rows: int) -> Fraction:
    """The mean's denominator: sum of w[t_i] over non-ignored rows (index targets), or rows."""
    if loss.target_kind == "probability":
        return Fraction(rows)
    weights = None if loss.weight is None else np.asarray(loss.weight, dtype=np.float64)
    total = Fraction(0)
    for t in np.asarray(loss.target).tolist():
        if loss.ignore_index is not None and t == loss.ignore_index:
            continue
        if weights is None:
            total += 1
        elif 0 <= t < weights.size:
            total += Fraction(float(weights[t]))
    return total



# --------------------------------------------------------------------------
# Forward


@dataclass
class _RowLoss:
    kind: str
    """"finite", "zero", "nan", "+inf", "undefined"."""
    value: object = None
    err: object = 0.0
    """Bound on |exact - value| (an mpf from the mpmath engine, a float from a fast path)."""
    exact: Fraction | None = None
    """Where known: the loss is exactly ``exact`` plus a positive remainder of at most ``err``
    (L computed as 0 while the tail makes it positive). That sign settles a midpoint."""


def _row_loss(x: np.ndarray, rc: RowCoefficients, fmt: Format, prec: int) -> _RowLoss:
    """The exact loss of one row at precision ``prec`` with its error bound."""
    if rc.ignored:
        return _RowLoss("zero")
    if rc.out_of_range or np.isnan(x).any():
        return _RowLoss("nan")
    if (x == np.inf).any() or (x == -np.inf).all():
        return _RowLoss("undefined")
    assert rc.coef is not None
    masked = x == -np.inf
    if any(c > 0 for c, m in zip(rc.coef, masked.tolist()) if m):
        return _RowLoss("+inf")
    if rc.total == 0 or np.count_nonzero(~masked) == 1:
        return _RowLoss("zero")  # no weight at all, or L = 0 with d = 0 at the one finite logit
    rt = row_terms(x, fmt, prec)
    eps = rt.eps
    # sum_c coef_c (L - d_c) = A_f L + sum_u CS_u (-d_u), every term >= 0.
    coef_f = [c for c, m in zip(rc.coef, masked.tolist()) if not m]
    group_sums = [sum((coef_f[k] for k in part.tolist()), Fraction(0)) for part in rt.groups()]
    a_f = sum(group_sums, Fraction(0))
    terms = [mpf_of_fraction(cs) * (-du) for cs, du in zip(group_sums, rt.d) if cs != 0 and du != 0]
    spread = mp.fsum(terms)
    a_m = mpf_of_fraction(a_f)
    if rt.only_tail and rt.k_ties == 1:
        # L = log1p(t) with t in (0, tail_bound] computed as 0: the loss is the rational spread
        # plus A_f L, a positive remainder of at most A_f tail_bound.
        exact = sum((cs * (Fraction(rt.a) - Fraction(u)) for cs, u in zip(group_sums, rt.uniq.tolist()) if cs),
                    Fraction(0))
        upper = a_m * rt.tail_bound * (1 + 4 * eps)
        return _RowLoss("finite", mpf_of_fraction(exact) + a_m * rt.big_l, upper + 4 * eps * abs(spread), exact)
    value = a_m * rt.big_l + spread
    err = _SAFETY * (a_m * (rt.err_l + 2 * eps * rt.big_l) + abs(spread) * (len(terms) + 4) * eps
                     + 2 * eps * abs(value))
    return _RowLoss("finite", value, err)


def loss_reference(x: np.ndarray, loss: LossInputs, fmt: Format, engine: str = "auto") -> LossReference:
    """Certified per-row, mean and sum references of cross-entropy for logits ``x``."""
    xs = np.asarray(x).astype(np.float64)
    rows, n = xs.shape
    denom = mean_denominator(loss, rows)
    path = fast_path(fmt) if engine == "auto" else None
    if path is not None:
        fast = _loss_reference_fast(xs, loss, fmt, denom, path)
        if fast is not None:
            return fast
    coefs = row_coefficients(loss, n)
    prec = base_precision(fmt, n)
    while True:
        cert = Certifier(fmt)
        row_losses = [_row_loss(xs[i], coefs[i], fmt, prec) for i in range(rows)]
        per_row = [_entry(r, cert) for r in row_losses]
        total = _reduce(row_losses, Fraction(1), cert, rows, prec)
        mean = _reduce(row_losses, denom, cert, rows, prec) if denom != 0 else None
        if cert.certified or prec >= MAX_PRECISION:
            break
        prec *= 2
    uncertified = 0 if cert.certified else rows + 2
    return LossReference(
        none=op_reference("cross_entropy", [[e] if e is not None else None for e in per_row], (rows,)),
        mean=op_reference("cross_entropy", [mean], (1,)),
        sum=op_reference("cross_entropy", [total], (1,)),
        uncertified=uncertified,
    )


def _loss_reference_fast(xs: np.ndarray, loss: LossInputs, fmt: Format, denom: Fraction,
                         path: FastPath) -> LossReference | None:
    """loss_reference through a fast path: rows it cannot prove come from _row_loss (Ziv's loop);
    the reductions are summed in mpmath from the rows' values and bounds. None when a reduction
    cannot be certified that way (the caller then runs the exact engine throughout)."""
    rows, n = xs.shape
    rl = path.row_losses(xs, path.loss_coefficients(loss, rows, n), fmt)
    finite = np.flatnonzero(rl.kind == "finite")
    c = rl.entries
    hi_all, lo_all = rl.hi, rl.lo
    coefs: list[RowCoefficients] | None = None
    cert = Certifier(fmt)
    prec = base_precision(fmt, n)
    mp.set_precision(prec)
    row_losses: list[_RowLoss] = [_RowLoss(str(kind)) for kind in rl.kind]
    per_row: list[Entry | None] = [_entry(r, cert) if r.kind != "finite" else None for r in row_losses]
    uncertified = 0
    for pos, i in enumerate(finite.tolist()):
        if c.ok[pos]:
            row_losses[i] = _RowLoss("finite", mp.exact_add(float(hi_all[i]), float(lo_all[i])),
                                     float(rl.err[i]))
            per_row[i] = (float(c.rounded[pos]), int(c.k[pos]), float(c.hi[pos]), float(c.lo[pos]))
            continue
        if coefs is None:
            coefs = row_coefficients(loss, n)
        p = prec
        while True:
            row_cert = Certifier(fmt)
            r = _row_loss(xs[i], coefs[i], fmt, p)
            entry = _entry(r, row_cert)
            if row_cert.certified or p >= MAX_PRECISION:
                break
            p *= 2
        uncertified += 0 if row_cert.certified else 1
        row_losses[i], per_row[i] = r, entry
    mp.set_precision(prec)
    red_cert = Certifier(fmt)
    total = _reduce(row_losses, Fraction(1), red_cert, rows, prec)
    mean = _reduce(row_losses, denom, red_cert, rows, prec) if denom != 0 else None
    if not red_cert.certified:
        return None
    return LossReference(
        none=op_reference("cross_entropy", [[e] if e is not None else None for e in per_row], (rows,)),
        mean=op_reference("cross_entropy", [mean], (1,)),
        sum=op_reference("cross_entropy", [total], (1,)),
        uncertified=uncertified,
    )


def _entry(r: _RowLoss, cert: Certifier) -> Entry | None:
    if r.exact is not None:
        return cert.rational(r.exact, 1, r.err)
    if r.kind == "undefined":
        return None
    if r.kind == "zero":
        return cert.zero_entry
    if r.kind == "nan":
        return cert.special(math.nan)
    if r.kind == "+inf":
        return cert.special(math.inf)
    return cert.put(r.value, r.err)


def _reduce(row_losses: list[_RowLoss], denom: Fraction, cert: Certifier, rows: int,
            prec: int) -> list[Entry] | None:
    """The sum of the rows' losses over ``denom``: one entry, or None when undefined."""
    kinds = {r.kind for r in row_losses}
    if "nan" in kinds:
        return [cert.special(math.nan)]
    if "undefined" in kinds:
        return None
    if "+inf" in kinds:
        return [cert.special(math.inf)]
    finite = [r for r in row_losses if r.kind == "finite"]
    if not finite:
        return [cert.zero_entry]
    mp.set_precision(prec)
    if all(r.exact is not None for r in finite):
        # Every row an exact rational plus a positive remainder: so is their total.
        exact = sum((r.exact for r in finite if r.exact is not None), Fraction(0)) / denom
        return [cert.rational(exact, 1, mp.fsum(r.err for r in finite) / mpf_of_fraction(denom))]
    eps = mp.unit_error(prec)
    total = mp.fsum(r.value for r in finite)
    err = mp.fsum(r.err for r in finite) + (rows + 2) * eps * abs(total)
    value = total / mpf_of_fraction(denom) if denom != 1 else total
    err = _SAFETY * (err / mpf_of_fraction(denom) + 2 * eps * abs(value))
    return [cert.put(value, err)]


# --------------------------------------------------------------------------
# Gradient


def upstream_scale(loss: LossInputs, dy: np.ndarray, rows: int) -> list[Fraction]:
    """g_i for every row: the upstream gradient as the reduction distributes it."""
    dys = np.asarray(dy, dtype=np.float64)
    if loss.reduction == "none":
        return [Fraction(float(v)) for v in dys.reshape(rows)]
    g = Fraction(float(dys.reshape(())))
    if loss.reduction == "mean":
        denom = mean_denominator(loss, rows)
        return [g / denom if denom != 0 else Fraction(0)] * rows
    return [g] * rows


def _gradient_row(x: np.ndarray, rc: RowCoefficients, g: Fraction, fmt: Format,
                  prec: int, cols: np.ndarray | None = None) -> tuple[list[Entry] | None, bool]:
    cert = Certifier(fmt)
    n = x.size
    special = np.isnan(x).any() or (x == np.inf).any() or (x == -np.inf).all()
    if rc.ignored:
        return (None, True) if special else ([cert.zero_entry] * n, True)
    if np.isnan(x).any() and not rc.out_of_range:
        return [cert.special(math.nan)] * n, True
    if special or rc.out_of_range:
        return None, True  # undefined: fully masked, +inf, or a target with no defined loss
    assert rc.coef is not None
    if g == 0 or (rc.total == 0):
        return [cert.zero_entry] * n, True
    masked = x == -np.inf
    finite_idx = np.flatnonzero(~masked)
    g_f = float(g)
    a_f = float(rc.total)
    rt = row_terms(x, fmt, prec, cut_margin=math.log(abs(g_f) * a_f * 4 + 4))
    eps = rt.eps
    g_m = mpf_of_fraction(g)
    a_m = mpf_of_fraction(rc.total)
    rel_a = 2 * eps
    out: list[Entry] = [cert.zero_entry] * n
    for j in np.flatnonzero(masked).tolist():  # p_j = 0: G = -g coef_j exactly
        if rc.coef[j] != 0:
            out[j] = cert.rational(-g * rc.coef[j])
    if rt.uniq.size == 1:  # every finite logit equal: p = 1/k exactly, G is rational
        k = rt.k_ties
        cache: dict[Fraction, Entry] = {}
        for j in finite_idx.tolist():
            cj = rc.coef[j]
            if cj not in cache:
                cache[cj] = cert.rational(g * (rc.total / k - cj))
            out[j] = cache[cj]
        return out, True
    p_cut = mp.exp(rt.d_cut)  # every p_j below the cut is under this (s >= 1); an mpf never underflows
    ga = abs(g_m) * a_m * (1 + 4 * eps)
    want = np.ones(n, dtype=bool)
    if cols is not None:
        want[:] = False
        want[cols] = True
    for j, u in zip(finite_idx.tolist(), rt.inverse.tolist()):
        if not want[j]:
            continue
        cj = rc.coef[j]
        ei = rt.e[u]
        if ei is None:
            # G = -g coef_j + g A p_j with 0 < p_j < p_cut: the rational plus a remainder of g's sign.
            out[j] = cert.rational(-g * cj, 1 if g > 0 else -1, ga * p_cut)
            continue
        if ei == 1 and rt.only_tail:
            # At the maxima p_j = 1/k - delta, delta = t / (k (k + t)) in (0, tail_bound / k^2], computed
            # as 0: G = g (A/k - coef_j) - g A delta, a rational plus a remainder against g's sign.
            k = rt.k_ties
            out[j] = cert.rational(g * (rc.total / k - cj), -1 if g > 0 else 1, ga * rt.tail_bound / (k * k))
            continue
        p = ei / rt.s
        ap = a_m * p
        c_m = mpf_of_fraction(cj)
        h = ap - c_m
        v = g_m * h
        err_h = ap * (rel_a + rt.rel_p + 2 * eps) + c_m * 2 * eps + eps * abs(h)
        out[j] = cert.put(v, _SAFETY * (abs(g_m) * err_h * (1 + 2 * eps) + 3 * eps * abs(v)))
    return out, cert.certified


def loss_gradient_reference(x: np.ndarray, loss: LossInputs, dy: np.ndarray,
                            fmt: Format, engine: str = "auto") -> tuple[OpReference, int]:
    """Certified gradient of cross-entropy (reduction ``loss.reduction``) w.r.t. the logits, for
    upstream ``dy`` ((rows,) for reduction none, () otherwise); and the uncertified count."""
    xs = np.asarray(x).astype(np.float64)
    rows, n = xs.shape
    scale = upstream_scale(loss, dy, rows)
    if loss.reduction == "mean" and mean_denominator(loss, rows) == 0:
        per_row: list = [None] * rows  # 0 / 0: every row ignored
        return op_reference("cross_entropy_backward", per_row, (rows, n)), 0
    path = fast_path(fmt) if engine == "auto" else None
    if path is not None:
        fast, covered = path.loss_gradient(xs, path.loss_coefficients(loss, rows, n), scale, fmt)
        lazy: list = []

        def row_fn(i: int, prec: int, cols: np.ndarray | None) -> tuple[list[Entry] | None, bool]:
            if not lazy:
                lazy.append(row_coefficients(loss, n))
            return _gradient_row(xs[i], lazy[0][i], scale[i], fmt, prec, cols)

        return fill_failed("cross_entropy_backward", fast, ~covered, row_fn, base_precision(fmt, n))
    coefs = row_coefficients(loss, n)
    per_row, uncertified = certified_rows(
        rows, base_precision(fmt, n), lambda i, prec: _gradient_row(xs[i], coefs[i], scale[i], fmt, prec))
    return op_reference("cross_entropy_backward", per_row, (rows, n)), uncertified


__all__ = ["LossReference", "loss_reference", "loss_gradient_reference", "row_coefficients",
           "mean_denominator", "upstream_scale"]
