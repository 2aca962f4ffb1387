"""An independent oracle for softaudit's references (issue 17): a second arithmetic, not mpmath.

Nothing here comes from softaudit's numerics. Exact values are Arb balls (python-flint) and
exact ``Fraction``s; the rounding into each format is this module's own round-to-nearest-even.

Every output is written as R + y: R an exact rational (the value the output takes when every
term below the maximum vanishes), y an Arb ball for the rest, formed so that its *relative*
accuracy is the working precision however small it is (Arb's exponents are unbounded: a term
of e^-3.4e38 is computed as such). Rounding R + y:

* y exactly 0: R alone, by the exact rounding below;
* y negligible against R's last rounding boundary, with a known sign: R moved by an
  infinitesimal of that sign (this settles R on a midpoint, as no precision could);
* otherwise the ball's two ends, as exact Fractions, must round alike; else the precision is
  doubled.

Exact zeros (a VJP whose dy is constant per distinct logit) are found rationally: exps of
distinct rationals are linearly independent over the rationals (Lindemann-Weierstrass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

from flint import arb, ctx

FORMATS: dict[str, tuple[int, int, int]] = {
    "float64": (53, -1022, 1023),
    "float32": (24, -126, 127),
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
}
"""name -> (precision p including the hidden bit, emin, emax)."""

START_PREC = 128
MAX_PREC = 1 << 16


class Undecided(Exception):
    """The oracle could not settle an element within MAX_PREC bits."""


# --------------------------------------------------------------------------
# Exact rounding


def _floor_log2(a: Fraction) -> int:
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    return e


def ulp_exp(a: Fraction, fmt: str) -> int:
    """k with ulp(a) = 2^k in fmt (a != 0)."""
    p, emin, _ = FORMATS[fmt]
    return max(_floor_log2(abs(a)), emin) - p + 1


def round_fraction(v: Fraction, fmt: str) -> float:
    """v rounded to nearest, ties to even, into fmt (subnormals, overflow to inf); as a float."""
    p, emin, emax = FORMATS[fmt]
    if v == 0:
        return 0.0
    a = abs(v)
    k = max(_floor_log2(a), emin) - p + 1
    q = a / Fraction(2) ** k
    n = q.numerator // q.denominator
    rem = q - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    if n.bit_length() - 1 + k > emax:  # 2^(emax+1) or more: beyond the largest finite value
        mag = math.inf
    else:
        mag = math.ldexp(float(n), k)  # n <= 2^p: exact
    return -mag if v < 0 else mag


def round_shifted(r: Fraction, side: int, fmt: str) -> float:
    """r + side * (an infinitesimal) rounded into fmt: the shift is below the distance from r to
    any rounding boundary that r is not on. Boundaries are multiples of 2^(k-1) (half an ulp), and
    |num/den - m 2^(k-1)| is a positive multiple of min(1, 2^(k-1)) / den when not 0."""
    if r == 0:
        return 0.0
    k = ulp_exp(r, fmt)
    shift = min(Fraction(1), Fraction(2) ** (k - 1)) / (4 * r.denominator)
    return round_fraction(r + side * shift, fmt)


# --------------------------------------------------------------------------
# Balls


def _fraction(ball_end: arb) -> Fraction:
    man, exp = ball_end.man_exp()
    man, exp = int(man), int(exp)
    return Fraction(man) * Fraction(2) ** exp if exp >= 0 else Fraction(man, 1 << -exp)


def _tiny(y: arb, bound_exp: int) -> bool:
    """|y| < 2^bound_exp, proven."""
    return bool(abs(y) < arb(2) ** bound_exp)


def round_split(r: Fraction, y: arb | None, fmt: str) -> float | None:
    """R + y rounded into fmt, or None when the ball is too wide at this precision."""
    p, emin, _ = FORMATS[fmt]
    if y is None or (y.is_exact() and y == 0):
        return round_fraction(r, fmt)
    if r != 0:
        k = ulp_exp(r, fmt)
        # below the distance from R to any boundary R is not on (round_shifted), with room
        if _tiny(y, min(0, k - 1) - r.denominator.bit_length() - 4):
            if y > 0:
                return round_shifted(r, 1, fmt)
            if y < 0:
                return round_shifted(r, -1, fmt)
            return None
    elif _tiny(y, emin - p - 4):
        return 0.0  # below a quarter of the smallest subnormal: rounds to zero whatever its sign
    lo = round_fraction(r + _fraction(y.lower()), fmt)
    hi = round_fraction(r + _fraction(y.upper()), fmt)
    if lo == hi or (lo == 0 and hi == 0):
        return hi
    return None


def settle(compute: Callable[[], list[tuple[Fraction, arb | None]]], fmt: str) -> list[float]:
    """Evaluate ``compute`` (a list of R + y pairs at the current ctx.prec) at doubling
    precisions until every element rounds uniquely."""
    prec = START_PREC
    saved = ctx.prec
    try:
        while True:
            ctx.prec = prec
            out = [round_split(r, y, fmt) for r, y in compute()]
            if all(v is not None for v in out):
                return out  # type: ignore[return-value]
            if prec >= MAX_PREC:
                raise Undecided(f"undecided at {prec} bits")
            prec *= 2
    finally:
        ctx.prec = saved


# --------------------------------------------------------------------------
# One row's pieces


@dataclass
class Row:
    """A row with a finite maximum: groups of equal finite values, the max group last."""

    x: list[float]
    a: float
    values: list[float]
    """Distinct finite values, ascending (the max last)."""
    group: list[int | None]
    """Per entry: its index in ``values``, None for -inf."""
    counts: list[int]

    @property
    def k(self) -> int:
        return self.counts[-1]

    def d(self, u: int) -> arb:
        return arb(self.values[u]) - arb(self.a)

    def exps(self) -> list[arb]:
        """e_u = exp(d_u) for the groups below the maximum."""
        return [self.d(u).exp() for u in range(len(self.values) - 1)]

    def t(self, e: list[arb]) -> arb:
        """sum over non-maximal entries of exp(d): 0 when there are none."""
        return sum((e_u * c for e_u, c in zip(e, self.counts)), arb(0))


def row_of(x: Sequence[float]) -> Row:
    finite = sorted({v for v in x if v != -math.inf})
    index = {v: i for i, v in enumerate(finite)}
    group = [index[v] if v != -math.inf else None for v in x]
    counts = [0] * len(finite)
    for g in group:
        if g is not None:
            counts[g] += 1
    return Row(list(x), finite[-1], finite, group, counts)


def special(x: Sequence[float]) -> str | None:
    """'nan', 'undefined' (+inf or fully masked), or None for an ordinary row."""
    if any(math.isnan(v) for v in x):
        return "nan"
    if any(v == math.inf for v in x) or all(v == -math.inf for v in x):
        return "undefined"
    return None


# --------------------------------------------------------------------------
# Forward


def forward(x: Sequence[float], fmt: str) -> dict[str, list[float] | None]:
    """softmax, log_softmax (lists) and logsumexp (a one-element list); None where undefined."""
    kind = special(x)
    n = len(x)
    if kind == "nan":
        return {"softmax": [math.nan] * n, "log_softmax": [math.nan] * n, "logsumexp": [math.nan]}
    if kind == "undefined":
        lse = math.inf if any(v == math.inf for v in x) else -math.inf
        return {"softmax": None, "log_softmax": None, "logsumexp": [lse]}
    row = row_of(x)
    k = row.k
    top = len(row.values) - 1

    def compute() -> list[tuple[Fraction, arb | None]]:
        """Per distinct value: softmax, then log_softmax; then logsumexp."""
        e = row.exps()
        t = row.t(e)
        s = k + t
        big_l = t.log1p() if k == 1 else s.log()
        sm: list[tuple[Fraction, arb | None]] = [(Fraction(0), e_u / s) for e_u in e]
        sm.append((Fraction(1, k), -t / (k * s)))  # the maxima: 1/(k + t) = 1/k - t/(k s)
        ls: list[tuple[Fraction, arb | None]] = []
        for u, v in enumerate(row.values):
            d = Fraction(v) - Fraction(row.a)
            ls.append((d, -big_l) if k == 1 else (Fraction(0), arb(v) - arb(row.a) - big_l))
        lse = (Fraction(row.a), big_l) if k == 1 else (Fraction(0), arb(row.a) + big_l)
        return sm + ls + [lse]

    vals = settle(compute, fmt)
    m = len(row.values)
    sm = [0.0 if g is None else vals[g] for g in row.group]
    ls = [-math.inf if g is None else vals[m + g] for g in row.group]
    return {"softmax": sm, "log_softmax": ls, "logsumexp": [vals[-1]]}


# --------------------------------------------------------------------------
# Backward (VJPs)


def _group_sums(row: Row, dy: Sequence[float]) -> list[Fraction]:
    sums = [Fraction(0)] * len(row.values)
    for g, d in zip(row.group, dy):
        if g is not None:
            sums[g] += Fraction(d)
    return sums


def vjp(op: str, x: Sequence[float], dy, fmt: str) -> list[float] | None:
    """The VJP of op at row x for upstream dy (a list; a scalar for logsumexp); None where undefined."""
    kind = special(x)
    n = len(x)
    if kind == "nan":
        return [math.nan] * n
    if kind == "undefined":
        return None
    row = row_of(x)
    k = row.k
    top = len(row.values) - 1
    if op == "logsumexp":
        g = Fraction(float(dy))

        def compute() -> list[tuple[Fraction, arb | None]]:
            e = row.exps()
            t = row.t(e)
            s = k + t
            out: list[tuple[Fraction, arb | None]] = []
            for j in range(n):
                u = row.group[j]
                if u is None:
                    out.append((Fraction(0), None))
                elif u == top:
                    out.append((g / k, -arb(float(dy)) * t / (k * s)))
                else:
                    out.append((Fraction(0), arb(float(dy)) * e[u] / s))
            return out

        return settle(compute, fmt)
    dyf = [Fraction(float(v)) for v in dy]
    sums = _group_sums(row, dy)
    if op == "log_softmax":
        big_d = sum(dyf, Fraction(0))

        def compute() -> list[tuple[Fraction, arb | None]]:
            e = row.exps()
            t = row.t(e)
            s = k + t
            out: list[tuple[Fraction, arb | None]] = []
            for j in range(n):
                u = row.group[j]
                if u is None or big_d == 0:
                    out.append((dyf[j], None))
                elif u == top:  # dy - D/(k + t) = dy - D/k + D t/(k s)
                    out.append((dyf[j] - big_d / k, _arb_of(big_d) * t / (k * s)))
                else:
                    out.append((dyf[j], -_arb_of(big_d) * e[u] / s))
            return out

        return settle(compute, fmt)
    # softmax: g_i = p_i (dy_i - c), c = sum_j p_j dy_j
    dy_max = sums[top]

    def compute() -> list[tuple[Fraction, arb | None]]:
        e = row.exps()
        t = row.t(e)
        big_t = sum((e_u * _arb_of(sums[u]) for u, e_u in enumerate(e)), arb(0))
        s = k + t
        c = (_arb_of(dy_max) + big_t) / s
        out: list[tuple[Fraction, arb | None]] = []
        for j in range(n):
            u = row.group[j]
            if u is None:
                out.append((Fraction(0), None))
                continue
            # exactly 0 when every group's dy sums to count * dy_j (Lindemann-Weierstrass)
            if all(sums[v] == row.counts[v] * dyf[j] for v in range(len(row.values))):
                out.append((Fraction(0), None))
                continue
            if u == top:
                # g - (dy_j - DY/k)/k = -dy_j t/(k s) - (T k^2 - DY (2 k t + t^2)) / (s^2 k^2)
                r = (dyf[j] - dy_max / k) / k
                dyj = _arb_of(dyf[j])
                y = -dyj * t / (k * s) - (big_t * k * k - _arb_of(dy_max) * (2 * k * t + t * t)) / (s * s * k * k)
                out.append((r, y))
            else:
                out.append((Fraction(0), e[u] / s * (_arb_of(dyf[j]) - c)))
        return out

    return settle(compute, fmt)


def _arb_of(v: Fraction) -> arb:
    """A Fraction as a ball (exact where dyadic)."""
    d = v.denominator
    if d & (d - 1) == 0:
        return arb(v.numerator) / d  # exact: a power of two
    return arb(v.numerator) / arb(d)


# --------------------------------------------------------------------------
# Cross-entropy (torch's semantics)


@dataclass
class Loss:
    """Cross-entropy's inputs besides the logits, as plain Python values."""

    target: list  # ints (index targets) or rows of floats (probability targets)
    probability: bool = False
    weight: list[float] | None = None
    label_smoothing: float = 0.0
    ignore_index: int | None = None


def coefficients(loss: Loss, i: int, n: int) -> tuple[str, list[Fraction]]:
    """('ignored' | 'out-of-range' | 'ok', coef_c) of row i: loss_i = sum_c coef_c (-log_softmax_c)."""
    eps = Fraction(loss.label_smoothing)
    w = [Fraction(v) for v in loss.weight] if loss.weight is not None else [Fraction(1)] * n
    if loss.probability:
        q = [Fraction(float(v)) for v in loss.target[i]]
        return "ok", [w[c] * ((1 - eps) * q[c] + eps / n) for c in range(n)]
    t = int(loss.target[i])
    if loss.ignore_index is not None and t == loss.ignore_index:
        return "ignored", [Fraction(0)] * n
    if not 0 <= t < n:
        return "out-of-range", []
    coef = [eps / n * w[c] for c in range(n)]
    coef[t] += (1 - eps) * w[t]
    return "ok", coef


def mean_denominator(loss: Loss, rows: int, n: int) -> Fraction:
    if loss.probability:
        return Fraction(rows)
    w = [Fraction(v) for v in loss.weight] if loss.weight is not None else [Fraction(1)] * n
    total = Fraction(0)
    for t in loss.target:
        t = int(t)
        if loss.ignore_index is not None and t == loss.ignore_index:
            continue
        if 0 <= t < n:
            total += w[t]
    return total


def _row_loss_split(x: Sequence[float], kind: str, coef: list[Fraction]):
    """('zero'|'nan'|'undefined'|'+inf'|'finite', R, y-thunk) for one row's loss."""
    if kind == "ignored":
        return "zero", Fraction(0), None
    if kind == "out-of-range" or special(x) == "nan":
        return "nan", None, None
    if special(x) == "undefined":
        return "undefined", None, None
    if any(c > 0 and v == -math.inf for c, v in zip(coef, x)):
        return "+inf", None, None
    row = row_of(x)
    big_a = sum((c for c, v in zip(coef, x) if v != -math.inf), Fraction(0))
    r = sum((c * (Fraction(row.a) - Fraction(v)) for c, v in zip(coef, x) if v != -math.inf), Fraction(0))
    if big_a == 0:
        return "finite", r, None

    def y() -> arb:
        e = row.exps()
        t = row.t(e)
        big_l = t.log1p() if row.k == 1 else (row.k + t).log()
        return _arb_of(big_a) * big_l

    return "finite", r, y


def loss_forward(x: list[list[float]], loss: Loss, fmt: str) -> dict[str, list[float] | None]:
    """Per-row losses ('none'), and the 'sum' and 'mean' reductions; None where undefined."""
    rows, n = len(x), len(x[0])
    parts = []
    for i in range(rows):
        kind, coef = coefficients(loss, i, n)
        parts.append(_row_loss_split(x[i], kind, coef))
    per_row: list[float | None] = [None] * rows
    finite = [i for i, p in enumerate(parts) if p[0] == "finite"]
    for i, (kind, _, _) in enumerate(parts):
        per_row[i] = {"zero": 0.0, "nan": math.nan, "+inf": math.inf, "undefined": None}.get(kind, 0.0)

    def compute() -> list[tuple[Fraction, arb | None]]:
        return [(parts[i][1], parts[i][2]() if parts[i][2] else None) for i in finite]

    for i, v in zip(finite, settle(compute, fmt)):
        per_row[i] = v
    kinds = {p[0] for p in parts}
    out: dict[str, list[float] | None] = {"none": per_row}  # type: ignore[dict-item]
    denom = mean_denominator(loss, rows, n)
    for name, den in (("sum", Fraction(1)), ("mean", denom)):
        if "nan" in kinds:
            out[name] = [math.nan]
        elif "undefined" in kinds or den == 0:
            out[name] = None
        elif "+inf" in kinds:
            out[name] = [math.inf]
        else:
            r = sum((parts[i][1] for i in finite), Fraction(0)) / den

            def total(den: Fraction = den, r: Fraction = r) -> list[tuple[Fraction, arb | None]]:
                ys = [parts[i][2]() for i in finite if parts[i][2]]
                return [(r, sum(ys, arb(0)) / _arb_of(den) if ys else None)]

            out[name] = settle(total, fmt)
    return out


def loss_gradient(x: list[list[float]], loss: Loss, reduction: str, dy, fmt: str) -> list[list[float] | None]:
    """d loss / d logits for upstream dy ((rows,) for 'none', a scalar otherwise); per row, None
    where undefined."""
    rows, n = len(x), len(x[0])
    if reduction == "none":
        scale = [Fraction(float(v)) for v in dy]
    else:
        g = Fraction(float(dy))
        if reduction == "mean":
            den = mean_denominator(loss, rows, n)
            g = g / den if den != 0 else None
        scale = [g] * rows
    out: list[list[float] | None] = []
    for i in range(rows):
        kind, coef = coefficients(loss, i, n)
        xi = x[i]
        if scale[i] is None:
            out.append(None)
            continue
        if kind == "ignored":
            out.append(None if special(xi) else [0.0] * n)
            continue
        if special(xi) == "nan" and kind != "out-of-range":
            out.append([math.nan] * n)
            continue
        if special(xi) or kind == "out-of-range":
            out.append(None)
            continue
        g = scale[i]
        row = row_of(xi)
        big_a = sum(coef, Fraction(0))
        top = len(row.values) - 1

        def compute(row: Row = row, coef: list[Fraction] = coef, g: Fraction = g, big_a: Fraction = big_a,
                    top: int = top, xi: list[float] = xi) -> list[tuple[Fraction, arb | None]]:
            e = row.exps()
            t = row.t(e)
            s = row.k + t
            ga = _arb_of(g * big_a)
            res: list[tuple[Fraction, arb | None]] = []
            for j in range(n):
                u = row.group[j]
                if u is None:
                    res.append((-g * coef[j], None))
                elif u == top:  # g (A/(k + t) - c) = g (A/k - c) - g A t/(k s)
                    res.append((g * (big_a / row.k - coef[j]), -ga * t / (row.k * s)))
                else:
                    res.append((-g * coef[j], ga * e[u] / s))
            return res

        out.append(settle(compute, fmt))
    return out
