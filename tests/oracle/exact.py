"""Exact softmax-family values, certified with Arb balls and rounded by :mod:`.rounding`.

Every output of a row is written as ``Q + E``: Q an exact rational (Fraction) and E a ball
evaluated without cancellation against Q, where E vanishes with T = sum of exp(d_u) over
the non-maximal distinct values (d_u = x_u - max < 0). With k0 the number of entries
equal to the maximum, S = k0 + T and L = log S:

    softmax         max entry: 1/k0 - T/(k0 S)         other: 0 + t_u/S
    log_softmax     d_u - L                            logsumexp: max + L
    CE row loss     -sum_c coef_c d_c + A L            (A = sum_c coef_c)

and similarly for the VJPs and the CE gradient (see each function). When the other logits lie
astronomically far below the maximum, E is astronomically small and the output is a rational
plus an infinitesimal: if Q is a rounding midpoint, the sign of E decides, which no finite
precision of Q + E as one ball could show. :func:`decide` handles both cases rigorously:

* the ball Q + E (Q rounded outward into Arb) rounds to one value at both ends: that value;
* else |E| < the distance from Q to its nearest rounding boundary: RNE(Q);
* else Q is a boundary, |E| is below an eighth of ulp(Q) and E's sign is known: Q nudged by E's sign;
* else undecided at this precision: Ziv's loop doubles the precision (128 bits up to 2^17).

Exact values (E identically 0: rows of equal logits, masked entries, algebraic zeros found by
the rational identities below) are rounded from their Fraction directly. What survives the
precision cap is reported UNDECIDED, never guessed.

Special values (the project's definitions): NaN in a row gives NaN everywhere; a row holding
+inf, or fully masked (all -inf), is undefined for softmax, log_softmax, the VJPs and
cross-entropy; logsumexp is +inf / -inf there. Masked (-inf) entries give softmax 0 and
log_softmax -inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from flint import arb, ctx, fmpq

from .rounding import Fmt, boundary_info, fmt_of, rne_dyadic, rne_fraction

START_PREC = 128
_EXACT_GROUPS = 64
"""softmax VJP rows with at most this many distinct values use exact per-group coefficients."""
MAX_PREC = 1 << 17

UNDEFINED = "undefined"
UNDECIDED = "undecided"

_ONE = Fraction(1)
_ZERO = Fraction(0)


# --------------------------------------------------------------------------
# Balls <-> exact values


def arb_q(q: Fraction) -> arb:
    """A Fraction as a ball (exact when dyadic, else rounded outward at the working precision)."""
    n, d = q.numerator, q.denominator
    if d & (d - 1) == 0:
        return arb((n, -(d.bit_length() - 1)))
    return arb(fmpq(n, d))


def _parts(b: arb) -> tuple[int, int, int, int]:
    m, e = b.mid().man_exp()
    r, f = b.rad().man_exp()
    return int(m), int(e), int(r), int(f)


def _ends(m: int, e: int, r: int, f: int) -> tuple[int, int, int]:
    """(lo, hi, g): the ball's ends as lo * 2^g and hi * 2^g."""
    if r == 0:
        return m, m, e
    if m == 0:
        return -r, r, f
    # Widen a radius negligible beyond any precision used here (keeps the ints small; rigorous).
    floor_f = e + m.bit_length() - r.bit_length() - 4 * MAX_PREC
    if f < floor_f:
        r, f = 1, floor_f
    g = min(e, f)
    mm, rr = m << (e - g), r << (f - g)
    return mm - rr, mm + rr, g


def round_ball(b: arb, fmt: Fmt) -> float | None:
    """The rounding of every point of the ball, or None when its ends round differently."""
    lo, hi, g = _ends(*_parts(b))
    a, z = rne_dyadic(lo, g, fmt), rne_dyadic(hi, g, fmt)
    if a != z:  # -0.0 == 0.0: a ball around 0 narrower than half the smallest subnormal rounds to 0
        return None
    if a == 0 and math.copysign(1, a) != math.copysign(1, z):
        return 0.0
    return a


_BOUNDARY_CACHE: dict = {}


def _boundary(q: Fraction, fmt: Fmt):
    key = (q, fmt.name)
    bi = _BOUNDARY_CACHE.get(key)
    if bi is None:
        if len(_BOUNDARY_CACHE) > 100_000:
            _BOUNDARY_CACHE.clear()
        bi = _BOUNDARY_CACHE[key] = boundary_info(q, fmt)
    return bi


def _floor_log2(q: Fraction) -> int:
    a, b = q.numerator, q.denominator
    e = a.bit_length() - b.bit_length()
    if (a << max(-e, 0)) < (b << max(e, 0)):
        e -= 1
    return e


def decide(q: Fraction, e_ball: arb, fmt: Fmt) -> float | None:
    """RNE(Q + E) where E lies in ``e_ball``; None when this precision cannot tell."""
    if e_ball.is_zero():
        return rne_fraction(q, fmt)
    m, e, r, f = _parts(e_ball)
    if q == 0:
        return round_ball(e_ball, fmt)
    v = round_ball(arb_q(q) + e_ball, fmt)
    if v is not None:
        return v
    bi = _boundary(q, fmt)
    eu = max(abs(m).bit_length() + e, r.bit_length() + f) + 1  # |E| < 2^eu
    if bi.dist > 0:
        if eu <= _floor_log2(bi.dist):
            return bi.rounded
        return None
    if eu <= bi.k - 3:
        lo, hi, g = _ends(m, e, r, f)
        if lo > 0 or hi < 0:
            step = Fraction(2) ** (bi.k - 3)
            return rne_fraction(q + step if lo > 0 else q - step, fmt)
    return None


def certify(make: Callable[[int], tuple[Fraction, arb] | float], fmt: Fmt) -> float | str:
    """Ziv's loop: make(P) gives (Q, E) at precision P (or an exact float); UNDECIDED past the cap."""
    p = START_PREC
    saved = ctx.prec
    try:
        while p <= MAX_PREC:
            ctx.prec = p
            out = make(p)
            if isinstance(out, float):
                return out
            v = decide(out[0], out[1], fmt)
            if v is not None:
                return v
            p *= 2
    finally:
        ctx.prec = saved
    return UNDECIDED


# --------------------------------------------------------------------------
# Rows


def exact_sum(values: Sequence[float]) -> Fraction:
    """The exact sum of finite floats."""
    num, den = 0, 1
    for v in values:
        n, d = float(v).as_integer_ratio()
        if d > den:
            num <<= (d.bit_length() - den.bit_length())
            den = d
        num += n * (den // d)
    return Fraction(num, den)


@dataclass
class _Balls:
    t: list  # t_u = exp(d_u) for u >= 1 (t[0] unused)
    T: arb
    S: arb
    L: arb


@dataclass
class Row:
    """One row of logits (float64 holding values of the format) with its exact structure."""

    x: np.ndarray
    kind: str = "ok"
    """"nan", "posinf", "allmasked" or "ok"."""
    a: float = 0.0
    """The maximum (kind ok)."""
    d: list = field(default_factory=list)
    """d_u = value_u - max as Fractions, u = 0 the maximum, decreasing."""
    k: list = field(default_factory=list)
    """Multiplicity of each distinct finite value."""
    group: np.ndarray | None = None
    """Per entry: its u, or -1 where masked."""
    _balls: dict = field(default_factory=dict)

    @classmethod
    def of(cls, x) -> Row:
        x = np.asarray(x, dtype=np.float64).ravel()
        r = cls(x)
        if np.isnan(x).any():
            r.kind = "nan"
        elif (x == np.inf).any():
            r.kind = "posinf"
        elif (x == -np.inf).all():
            r.kind = "allmasked"
        else:
            fin = x != -np.inf
            vals, inv, counts = np.unique(x[fin], return_inverse=True, return_counts=True)
            vals, counts = vals[::-1], counts[::-1]
            inv = len(vals) - 1 - inv.ravel()
            grp = np.full(x.size, -1, dtype=np.int64)
            grp[fin] = inv
            r.group = grp
            r.a = float(vals[0])
            fa = Fraction(r.a)
            r.d = [Fraction(float(v)) - fa for v in vals.tolist()]
            r.d[0] = _ZERO
            r.k = [int(c) for c in counts.tolist()]
        return r

    @property
    def k0(self) -> int:
        return self.k[0]

    @property
    def groups(self) -> int:
        return len(self.k)

    def balls(self, p: int) -> _Balls:
        """t_u, T, S, L at precision p (ctx.prec must be p)."""
        b = self._balls.get(p)
        if b is None:
            t = [None]
            for du in self.d[1:]:
                t.append(exp_neg(du, p))
            T = arb(0)
            for ku, tu in zip(self.k[1:], t[1:]):
                T += ku * tu
            k0 = self.k0
            S = k0 + T
            L = T.log1p() if k0 == 1 else arb(k0).log() + (T / k0).log1p()
            b = self._balls[p] = _Balls(t, T, S, L)
        return b


def exp_neg(d: Fraction, p: int) -> arb:
    """exp(d) for a dyadic d <= 0, as a ball whose relative radius is about 2^-p even when d is
    astronomically large (Arb needs about log2|d| extra bits to reduce the argument)."""
    extra = max(0, (abs(d.numerator) // d.denominator).bit_length()) + 16
    saved = ctx.prec
    ctx.prec = p + extra
    try:
        v = arb_q(d).exp()
    finally:
        ctx.prec = saved
    return v + 0  # back to working precision (rounded outward)


# --------------------------------------------------------------------------
# Forward ops


def _per_group(row: Row, fmt: Fmt, make_u: Callable[[int, int], tuple[Fraction, arb] | float]) -> list:
    return [certify(lambda p, u=u: make_u(u, p), fmt) for u in range(row.groups)]


def forward_row(x, fmt) -> dict:
    """softmax, log_softmax (lists, or UNDEFINED) and logsumexp of one row."""
    f = fmt_of(fmt)
    row = Row.of(x)
    n = row.x.size
    if row.kind == "nan":
        return {"softmax": [math.nan] * n, "log_softmax": [math.nan] * n, "logsumexp": math.nan}
    if row.kind in ("posinf", "allmasked"):
        return {"softmax": UNDEFINED, "log_softmax": UNDEFINED,
                "logsumexp": math.inf if row.kind == "posinf" else -math.inf}
    k0 = row.k0

    def sm(u, p):
        b = row.balls(p)
        if u == 0:
            return Fraction(1, k0), -b.T / (k0 * b.S)
        return _ZERO, b.t[u] / b.S

    def ls(u, p):
        return row.d[u], -row.balls(p).L

    sm_u = _per_group(row, f, sm)
    ls_u = _per_group(row, f, ls)
    lse = certify(lambda p: (Fraction(row.a), row.balls(p).L), f)
    grp = row.group.tolist()
    return {
        "softmax": [0.0 if u < 0 else sm_u[u] for u in grp],
        "log_softmax": [-math.inf if u < 0 else ls_u[u] for u in grp],
        "logsumexp": lse,
    }


# --------------------------------------------------------------------------
# VJPs


def _group_dy_sums(row: Row, dy: np.ndarray) -> list[Fraction]:
    sums: list[list[float]] = [[] for _ in range(row.groups)]
    for u, v in zip(row.group.tolist(), dy.tolist()):
        if u >= 0:
            sums[u].append(v)
    return [exact_sum(s) for s in sums]


def _vjp_row(x, fmt):
    """(format, row, the VJP's whole answer where the row settles it: NaN everywhere, or UNDEFINED)."""
    f = fmt_of(fmt)
    row = Row.of(x)
    if row.kind == "nan":
        return f, row, [math.nan] * row.x.size
    if row.kind != "ok":
        return f, row, UNDEFINED
    return f, row, None


def softmax_vjp_row(x, dy, fmt) -> list | str:
    """g_i = p_i (dy_i - sum_j p_j dy_j).

    With a_u = dy_i k_u - D_u (D_u: sum of dy over group u) and N = a0 + sum_{u>=1} a_u t_u,
    g_i = t_i N / S^2 (t_0 = 1). When every D_u / k_u (u >= 1) equals one rho (always when one
    value lies below the maximum), sum a_u t_u = (dy_i - rho) T exactly, and for a maximal entry
    g_i - a0/k0^2 = T (c - a0 T) / (k0^2 S^2) with c = (dy_i - rho) k0^2 - 2 a0 k0: no cancellation.
    """
    f, row, special = _vjp_row(x, fmt)
    if special is not None:
        return special
    dy = np.asarray(dy, dtype=np.float64).ravel()
    k0 = row.k0
    D = _group_dy_sums(row, dy)
    ratios = {D[u] / row.k[u] for u in range(1, row.groups)}
    rho = next(iter(ratios)) if len(ratios) == 1 else None
    W_cache: dict = {}

    def W(p):  # sum_{u>=1} D_u t_u
        if p not in W_cache:
            b = row.balls(p)
            w = arb(0)
            for u in range(1, row.groups):
                if D[u]:
                    w += arb_q(D[u]) * b.t[u]
            W_cache[p] = w
        return W_cache[p]

    cache: dict = {}
    out = []
    for i, u in enumerate(row.group.tolist()):
        if u < 0:
            out.append(0.0)
            continue
        dyi = Fraction(float(dy[i]))
        key = (u, dyi)
        if key in cache:
            out.append(cache[key])
            continue
        a0 = dyi * k0 - D[0]

        def make(p, u=u, dyi=dyi, a0=a0):
            b = row.balls(p)
            if row.groups == 1:
                return a0 / (k0 * k0), arb(0)
            if rho is not None:
                lin = dyi - rho  # sum a_u t_u = lin * T
                if u == 0:
                    c = lin * k0 * k0 - 2 * a0 * k0
                    if c == 0 and a0 == 0:
                        return _ZERO, arb(0)
                    return a0 / (k0 * k0), b.T * (arb_q(c) - arb_q(a0) * b.T) / (k0 * k0 * b.S * b.S)
                if a0 == 0 and lin == 0:
                    return 0.0
                N = arb_q(a0) + arb_q(lin) * b.T
            elif row.groups <= _EXACT_GROUPS:
                # exact per-group coefficients: no cancellation between groups' terms
                a = [dyi * row.k[v] - D[v] for v in range(row.groups)]
                if u == 0:
                    s = arb(0)
                    for v in range(1, row.groups):
                        bv = a[v] * k0 * k0 - 2 * a0 * k0 * row.k[v]
                        if bv:
                            s += arb_q(bv) * b.t[v]
                    return a0 / (k0 * k0), (s - arb_q(a0) * b.T * b.T) / (k0 * k0 * b.S * b.S)
                N = arb_q(a0)
                for v in range(1, row.groups):
                    if a[v]:
                        N += arb_q(a[v]) * b.t[v]
            else:
                N = arb_q(a0) + arb_q(dyi) * b.T - W(p)
            if u == 0:
                E = N / (b.S * b.S) - arb_q(a0) / (k0 * k0)
                return a0 / (k0 * k0), E
            return _ZERO, b.t[u] * N / (b.S * b.S)

        v = certify(make, f)
        cache[key] = v
        out.append(v)
    return out


def log_softmax_vjp_row(x, dy, fmt) -> list | str:
    """g_i = dy_i - p_i sum_j dy_j (the sum over every entry, masked ones included)."""
    f, row, special = _vjp_row(x, fmt)
    if special is not None:
        return special
    dy = np.asarray(dy, dtype=np.float64).ravel()
    k0 = row.k0
    total = exact_sum(dy.tolist())
    out = []
    cache: dict = {}
    for i, u in enumerate(row.group.tolist()):
        dyi = Fraction(float(dy[i]))
        if u < 0 or total == 0:
            out.append(rne_fraction(dyi, f))
            continue
        key = (u, dyi)
        if key not in cache:
            def make(p, u=u, dyi=dyi):
                b = row.balls(p)
                if u == 0:
                    return dyi - total / k0, arb_q(total) * b.T / (k0 * b.S)
                return dyi, -arb_q(total) * b.t[u] / b.S
            cache[key] = certify(make, f)
        out.append(cache[key])
    return out


def logsumexp_vjp_row(x, dy: float, fmt) -> list | str:
    """g_i = dy p_i."""
    f, row, special = _vjp_row(x, fmt)
    if special is not None:
        return special
    k0 = row.k0
    g = Fraction(float(dy))

    def make(u, p):
        b = row.balls(p)
        if g == 0:
            return 0.0
        if u == 0:
            return g / k0, -arb_q(g) * b.T / (k0 * b.S)
        return _ZERO, arb_q(g) * b.t[u] / b.S

    per_u = _per_group(row, f, make)
    return [0.0 if u < 0 else per_u[u] for u in row.group.tolist()]


# --------------------------------------------------------------------------
# Cross-entropy (torch.nn.functional.cross_entropy semantics)


@dataclass
class CELoss:
    """Cross-entropy's inputs besides the logits (same fields as softaudit's LossInputs)."""

    target: np.ndarray
    target_kind: str = "index"
    weight: np.ndarray | None = None
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    reduction: str = "none"

    @classmethod
    def of(cls, loss) -> CELoss:
        return cls(np.asarray(loss.target), loss.target_kind,
                   None if loss.weight is None else np.asarray(loss.weight, dtype=np.float64),
                   float(loss.label_smoothing), loss.ignore_index, loss.reduction)


@dataclass
class RowCoef:
    status: str
    """"ignored", "out_of_range" or "ok"."""
    coef: list | None = None
    total: Fraction = _ZERO


def ce_coefficients(loss: CELoss, rows: int, n: int) -> list[RowCoef]:
    """The exact weights of -log_softmax in every row's loss:

    index target t:       coef_c = (1 - eps) w_t [c = t] + (eps / C) w_c
    probability target q: coef_c = w_c ((1 - eps) q_c + eps / C)

    (torch: loss_i = (1-eps) * nll + eps * smooth with smooth = -sum_c w_c l_c / C; probability
    targets are smoothed as q (1 - eps) + eps / C, then weighted per class.)"""
    eps = Fraction(float(loss.label_smoothing))
    w = [_ONE] * n if loss.weight is None else [Fraction(float(v)) for v in loss.weight.tolist()]
    out = []
    if loss.target_kind == "probability":
        q = np.asarray(loss.target, dtype=np.float64).reshape(rows, n)
        for i in range(rows):
            coef = [wc * ((1 - eps) * Fraction(float(qc)) + eps / n) for wc, qc in zip(w, q[i].tolist())]
            out.append(RowCoef("ok", coef, sum(coef, _ZERO)))
        return out
    for t in np.asarray(loss.target).reshape(rows).tolist():
        if loss.ignore_index is not None and t == loss.ignore_index:
            out.append(RowCoef("ignored"))
        elif not 0 <= t < n:
            out.append(RowCoef("out_of_range"))
        else:
            coef = [eps / n * wc for wc in w]
            coef[t] += (1 - eps) * w[t]
            out.append(RowCoef("ok", coef, sum(coef, _ZERO)))
    return out


def ce_denominator(loss: CELoss, rows: int, n: int) -> Fraction:
    """The mean's denominator: rows (probability targets) or sum of w[t_i] over counted rows."""
    if loss.target_kind == "probability":
        return Fraction(rows)
    total = _ZERO
    for t in np.asarray(loss.target).reshape(rows).tolist():
        if loss.ignore_index is not None and t == loss.ignore_index:
            continue
        if 0 <= t < n:
            total += _ONE if loss.weight is None else Fraction(float(loss.weight[t]))
    return total


def _row_loss_form(row: Row, rc: RowCoef):
    """("zero" | "nan" | "undefined" | "+inf", None) or ("finite", (Q, A)) with loss = Q + A L."""
    if rc.status == "ignored":
        return "zero", None
    if rc.status == "out_of_range" or row.kind == "nan":
        return "nan", None
    if row.kind != "ok":
        return "undefined", None
    grp = row.group.tolist()
    if any(c > 0 for c, u in zip(rc.coef, grp) if u < 0):
        return "+inf", None
    q = _ZERO
    for c, u in zip(rc.coef, grp):
        if c and u > 0:
            q -= c * row.d[u]
    return "finite", (q, rc.total)


def ce_forward(x, loss: CELoss, fmt) -> dict:
    """{"none": per-row list, "mean": value, "sum": value}; UNDEFINED where undefined."""
    f = fmt_of(fmt)
    xs = np.asarray(x, dtype=np.float64)
    rows, n = xs.shape
    coefs = ce_coefficients(loss, rows, n)
    rs = [Row.of(xs[i]) for i in range(rows)]
    forms = [_row_loss_form(r, c) for r, c in zip(rs, coefs)]
    special = {"zero": 0.0, "nan": math.nan, "+inf": math.inf, "undefined": UNDEFINED}
    per_row = []
    for r, (kind, form) in zip(rs, forms):
        if kind != "finite":
            per_row.append(special[kind])
            continue
        q, a = form
        per_row.append(certify(lambda p, r=r, q=q, a=a: (q, arb_q(a) * r.balls(p).L), f))
    kinds = {k for k, _ in forms}

    def reduced(denom: Fraction):
        if "nan" in kinds:
            return math.nan
        if "undefined" in kinds or denom == 0:
            return UNDEFINED
        if "+inf" in kinds:
            return math.inf
        fin = [(r, form) for r, (k, form) in zip(rs, forms) if k == "finite"]
        q_tot = sum((form[0] for _, form in fin), _ZERO) / denom

        def make(p):
            e = arb(0)
            for r, (_q, a) in fin:
                if a:
                    e += arb_q(a) * r.balls(p).L
            return q_tot, e / arb_q(denom)
        return certify(make, f)

    return {"none": per_row, "mean": reduced(ce_denominator(loss, rows, n)), "sum": reduced(_ONE)}


def ce_upstream(loss: CELoss, dy, rows: int, n: int) -> list[Fraction] | None:
    """g_i, the upstream gradient of row i as the reduction distributes it (None: undefined)."""
    dys = np.asarray(dy, dtype=np.float64)
    if loss.reduction == "none":
        return [Fraction(float(v)) for v in dys.reshape(rows).tolist()]
    g = Fraction(float(dys.reshape(())))
    if loss.reduction == "mean":
        den = ce_denominator(loss, rows, n)
        if den == 0:
            return None
        return [g / den] * rows
    return [g] * rows


def ce_gradient(x, loss: CELoss, dy, fmt) -> list:
    """Per row: a list of n values, or UNDEFINED. G_ic = g_i (A_i p_ic - coef_ic)."""
    f = fmt_of(fmt)
    xs = np.asarray(x, dtype=np.float64)
    rows, n = xs.shape
    coefs = ce_coefficients(loss, rows, n)
    gs = ce_upstream(loss, dy, rows, n)
    out: list = []
    for i in range(rows):
        row, rc = Row.of(xs[i]), coefs[i]
        if gs is None:
            out.append(UNDEFINED)
            continue
        g = gs[i]
        if rc.status == "ignored":
            out.append([0.0] * n if row.kind == "ok" else UNDEFINED)
            continue
        if rc.status == "out_of_range":
            out.append(UNDEFINED)
            continue
        if row.kind == "nan":
            out.append([math.nan] * n)
            continue
        if row.kind != "ok":
            out.append(UNDEFINED)
            continue
        A, k0 = rc.total, row.k0
        vals = []
        cache: dict = {}
        for j, u in enumerate(row.group.tolist()):
            cj = rc.coef[j]
            if u < 0:
                vals.append(rne_fraction(-g * cj, f))
                continue
            key = (u, cj)
            if key not in cache:
                def make(p, u=u, cj=cj):
                    if g == 0 or A == 0:
                        return -g * cj if u > 0 else g * (A / k0 - cj), arb(0)
                    b = row.balls(p)
                    if u == 0:
                        return g * (A / k0 - cj), -arb_q(g * A) * b.T / (k0 * b.S)
                    return -g * cj, arb_q(g * A) * b.t[u] / b.S
                cache[key] = certify(make, f)
            vals.append(cache[key])
        out.append(vals)
    return out
