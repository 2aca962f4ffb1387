"""The mpmath engine of the fused linear cross-entropy's references (reference.linear_loss).

Pure mpmath on exact logits: the referee the fast path is verified against, and what decides each
element the fast path cannot prove. Every quantity is computed at a working precision P with a
rigorous bound on its error; an element is accepted when its whole interval rounds one way
(exact.Certifier), else it is recomputed at 2P (Ziv's strategy, up to exact.MAX_PRECISION).

Exact logits z_ic = sum_d h_id w_cd + b_c are Fractions from integer arithmetic (ExactLogits). The rest follows the
module docstring of reference.linear_loss. What intervals cannot settle is made exact instead:

* a logit of 0 under a softcap is 0 (tanh(0) = 0) with a derivative of exactly 1;
* a token whose logits are all exactly equal has p = 1/V, and its loss gradient is rational
  when z_loss is 0 (or V = 1): its values are Fractions, and sums of Fractions are exact;
* without z-loss or softcap, every gradient element is a rational plus rational multiples of
  probability atoms shared between tokens (Engine.combination): collected exactly, they prove
  exact values (a constant weight column's d_hidden = 0, mirrored tokens) and one-sided remainders;
* a loss that is a rational plus L far below its last digit is that rational and a remainder of
  known sign (so is a gradient -coef + B p with B p negligible, and 1/k - t/(k(k + t)) at maxima);
* tokens with the same hidden row and target have proportional gradient rows: d_weight and
  d_bias sum them once with their upstream gradients added exactly, so two that cancel give 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import mpmath
import numpy as np
from mpmath.libmp import from_man_exp

from softaudit.formats import Format
from softaudit.reference.exact import MAX_PRECISION, Certifier, Entry

if TYPE_CHECKING:
    from softaudit.cases.linear_inputs import LinearLossInputs

_ctx = mpmath.MPContext()
"""This engine's own context: its precision changes leak nowhere."""

_SAFETY = 2


def as_integers(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Finite float values as exact integers and one exponent: a = M 2^E elementwise, M an object
    array of Python ints (each value's mantissa without its trailing zeros, shifted to E)."""
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("as_integers takes finite values")
    frac, exp = np.frexp(a)
    m = (frac * 2.0**53).astype(np.int64)  # exact: |frac| in [1/2, 1) has 53 bits
    e = exp.astype(np.int64) - 53
    nz = m != 0
    tz = np.zeros_like(m)
    lowest = m[nz] & -m[nz]  # the lowest set bit, a power of two below 2^53
    tz[nz] = np.log2(lowest.astype(np.float64)).astype(np.int64)
    m = np.where(nz, m >> tz, 0)
    e = e + tz
    base = int(e[nz].min()) if nz.any() else 0
    shifts = np.where(nz, e - base, 0)
    return m.astype(object) << shifts.astype(object), base


EXACT_LOGITS_CHUNK = 1 << 22
"""Weight elements converted to Python integers at a time (about 150 MB of them)."""

EXACT_LOGITS_AT_ONCE = 1 << 23
"""Up to this many tokens x classes, the first row asked for brings every token's (the weight is
converted once); beyond it each row is computed alone."""


@dataclass
class ExactLogits:
    """z_ic = sum_d h_id w_cd + b_c as exact Fractions, by integer arithmetic: h and w as Python
    integers times a power of two (as_integers), products summed as integers. Independent of the
    fast path's float64 splitting (reference.exact_dot) by construction."""

    inp: LinearLossInputs
    _rows: dict[int, list[Fraction]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hidden = np.asarray(self.inp.hidden).astype(np.float64)
        self.weight = np.asarray(self.inp.weight)
        self.b = None if self.inp.bias is None else [Fraction(float(x)) for x in np.asarray(self.inp.bias).astype(np.float64)]

    def row(self, i: int) -> list[Fraction]:
        """Token i's V logits."""
        if i not in self._rows:
            t, v = self.inp.tokens, self.inp.vocabulary
            todo = [k for k in range(t) if k not in self._rows] if t * v <= EXACT_LOGITS_AT_ONCE else [i]
            self._rows.update(self._compute(todo))
        return self._rows[i]

    def _compute(self, tokens: list[int]) -> dict[int, list[Fraction]]:
        h, eh = as_integers(self.hidden[tokens])
        out: dict[int, list[Fraction]] = {i: [] for i in tokens}
        v, d = self.weight.shape
        step = max(1, EXACT_LOGITS_CHUNK // max(d, 1))
        for a in range(0, v, step):
            w, ew = as_integers(self.weight[a:a + step].astype(np.float64))
            dots = (w @ h.T).T.tolist()  # tokens x classes, exact integers
            e = eh + ew
            for i, row in zip(tokens, dots):
                if e >= 0:
                    out[i].extend(Fraction(int(x) << e) for x in row)
                else:
                    out[i].extend(Fraction(int(x), 1 << -e) for x in row)
        if self.b is not None:
            for i in tokens:
                out[i] = [zc + bc for zc, bc in zip(out[i], self.b)]
        return out


def exact_logit_rows(inp: LinearLossInputs, rows: list[int] | None = None) -> dict[int, list[Fraction]]:
    """z_ic as exact Fractions for the given tokens (all by default)."""
    exact = ExactLogits(inp)
    return {i: exact.row(i) for i in (range(inp.tokens) if rows is None else rows)}


def upstream(inp: LinearLossInputs, dy: np.ndarray) -> list[Fraction]:
    """g_i per token: dy_i (none), dy (sum), dy / N (mean; N the non-ignored tokens, 0 if none)."""
    t = inp.tokens
    dys = np.asarray(dy).astype(np.float64)
    if inp.reduction == "none":
        return [Fraction(float(v)) for v in dys.reshape(t)]
    g = Fraction(float(dys.reshape(())))
    if inp.reduction == "mean":
        n = int(np.count_nonzero(np.asarray(inp.target) != inp.ignore_index))
        return [g / n if n else Fraction(0)] * t
    return [g] * t


def _mpf(q: Fraction) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(q as an mpf, a bound on its error): exact for dyadic q."""
    d = q.denominator
    if d & (d - 1) == 0:
        return _ctx.make_mpf(from_man_exp(q.numerator, -(d.bit_length() - 1))), _ctx.zero
    v = _ctx.mpf(q.numerator) / d
    return v, abs(v) * _ctx.ldexp(1, 2 - _ctx.prec)


def _sorted_rationals(values: set[Fraction]) -> list[Fraction]:
    """Rationals in increasing order, compared as integers over their common denominator (exact
    logits are dyadic, so it is the largest one): Fraction comparisons cost microseconds."""
    den = functools.reduce(math.lcm, {q.denominator for q in values}, 1)
    return sorted(values, key=lambda q: q.numerator * (den // q.denominator))


@dataclass
class Value:
    """An exact quantity. ``exact`` None: within ``err`` of ``v``. ``exact`` a rational and ``side``
    0: that rational (v its mpf, err the conversion's bound). ``side`` +-1: ``exact`` + side r with
    0 < r <= err, a remainder of known sign, which decides a rounding that sits on a midpoint or a
    binade's edge (exact.Certifier.rational)."""

    v: mpmath.mpf
    err: mpmath.mpf
    exact: Fraction | None = None
    side: int = 0
    low: mpmath.mpf | int = 0
    """With a side: a lower bound of the remainder r (0 where none is known), so that remainders
    of opposite signs can still be compared."""

    def interval(self) -> tuple[mpmath.mpf, mpmath.mpf]:
        """(v, err) with the true value within err of v, whatever the form."""
        if self.exact is None or not self.side:
            return self.v, self.err
        vm, e = _mpf(self.exact)
        return vm, e + self.err


def _negligible(rem: mpmath.mpf, r: Fraction) -> bool:
    """A remainder below the working precision of a nonzero rational r: kept apart, one-sided."""
    return r != 0 and rem < _ctx.ldexp(abs(_mpf(r)[0]), -_ctx.prec - 8)


class LazyRow(Sequence):
    """A row of V values, each computed by ``compute`` on first access and kept."""

    def __init__(self, size: int, compute: Callable[[int], Value]) -> None:
        self._size, self._compute = size, compute
        self._done: dict[int, Value] = {}

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, c):
        if isinstance(c, slice):
            return [self[k] for k in range(*c.indices(self._size))]
        if not -self._size <= c < self._size:
            raise IndexError(c)
        c %= self._size
        if c not in self._done:
            self._done[c] = self._compute(c)
        return self._done[c]


@dataclass
class TokenRow:
    """One token at one precision, for an upstream gradient of 1: the loss and X_c = dL/dz_c."""

    loss: Value
    x: Sequence[Value]
    lse: Value


@dataclass
class Engine:
    """Computes any output element of one case at a precision, caching per-token rows."""

    inp: LinearLossInputs
    fmt: Format
    logits: Callable[[int], list[Fraction]]
    g: list[Fraction] = field(default_factory=list)
    _rows: dict = field(default_factory=dict)
    _keys: dict[tuple, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.v = self.inp.vocabulary
        self.eps = Fraction(float(self.inp.label_smoothing))
        self.zl = Fraction(float(self.inp.z_loss))
        self.cap = None if self.inp.softcap is None else Fraction(float(self.inp.softcap))
        self.target = [int(t) for t in np.asarray(self.inp.target).tolist()]
        self.h = np.asarray(self.inp.hidden).astype(np.float64)
        self.w = np.asarray(self.inp.weight).astype(np.float64)
        # Tokens with the same hidden row and target: the same logits, so the same row X.
        keys: dict[tuple, int] = {}
        self.group = [keys.setdefault((self.h[i].tobytes(), self.target[i]), i) for i in range(self.inp.tokens)]

    def status(self, i: int) -> str:
        """"ignored", "nan" (a target with no defined loss) or "ok"."""
        t = self.target[i]
        if t == self.inp.ignore_index:
            return "ignored"
        return "ok" if 0 <= t < self.v else "nan"

    # ------------------------------------------------------------------ one token

    def row(self, i: int, prec: int) -> TokenRow:
        """Token i's loss, lse and X (the gradient for g = 1), at ``prec`` bits (cached per group)."""
        key = (self.group[i], prec)
        if key not in self._rows:
            self._rows[key] = self._row(self.group[i], prec)
        return self._rows[key]

    def _row(self, i: int, prec: int) -> TokenRow:
        _ctx.prec = prec
        eps_op = _ctx.ldexp(1, 2 - prec)
        z = self.logits(i)
        t = self.target[i]
        v = self.v
        ys: list[mpmath.mpf] = []
        ey: list[mpmath.mpf] = []
        sech: list[Value] = []
        for zc in z:
            zm, _ = _mpf(zc)  # dyadic: exact
            if self.cap is None or zc == 0:
                ys.append(zm)
                ey.append(_ctx.zero)
                sech.append(Value(_ctx.one, _ctx.zero, Fraction(1)))
                continue
            cap = _ctx.mpf(float(self.cap))
            xq = zm / cap
            th = _ctx.tanh(xq)
            y = cap * th
            ys.append(y)
            ey.append(abs(y) * 8 * eps_op)
            ch = _ctx.cosh(xq)
            s2 = 1 / (ch * ch)
            sech.append(Value(s2, s2 * 12 * eps_op))
        m = max(ys)
        d = [_ctx.fsub(y, m, exact=True) for y in ys]
        imax = ys.index(m)
        ed = [e + ey[imax] for e in ey]
        exact_max = [c for c in range(v) if d[c] == 0 and ed[c] == 0]
        k = len(exact_max)
        is_max = set(exact_max)
        e_vals = [None if c in is_max else _ctx.exp(d[c]) for c in range(v)]
        # exp(d +- ed) = exp(d) (1 +- 1.01 ed) for ed < 2^-20; the exp itself within 2 eps.
        rel = [2 * eps_op + ed[c] * 1.01 for c in range(v)]
        t_sum = _ctx.fsum(e for e in e_vals if e is not None)
        err_t = _ctx.fsum(e * r for e, r in zip(e_vals, rel) if e is not None) + (v + 2) * eps_op * t_sum
        s = k + t_sum
        if max(ed) > _ctx.ldexp(1, -20):
            bad = Value(_ctx.zero, _ctx.inf)
            return TokenRow(bad, [bad] * v, bad)
        if k == 0:
            big_l = _ctx.log(s)
            err_l = err_t / (s - err_t) * 1.01 + 2 * eps_op * abs(big_l)
        elif k == 1:
            big_l = _ctx.log1p(t_sum)
            err_l = err_t * 1.01 + 2 * eps_op * abs(big_l)
        else:
            big_l = _ctx.log(s)
            err_l = err_t / k * 1.01 + 2 * eps_op * abs(big_l)
        lse = m + big_l
        err_lse = err_l + ey[imax] + eps_op * abs(lse)
        lse_v = Value(lse, err_lse)
        loss = self._loss(z, t, d, ed, big_l, err_l, lse_v, k, eps_op)
        x = self._gradient_row(z, t, e_vals, rel, s, err_t, k, is_max, sech, lse_v, eps_op, t_sum, prec)
        return TokenRow(loss, x, lse_v)

    def _loss(self, z, t, d, ed, big_l, err_l, lse: Value, k: int, eps_op) -> Value:
        v = self.v
        if v == 1 and (self.cap is None or z[0] == 0):
            y = z[0] if self.cap is None else Fraction(0)
            ex = self.zl * y * y
            vm, e = _mpf(ex)
            return Value(vm, e, ex)
        if self.cap is None and k >= 1 and not any(ed):
            # loss = R + L (1 + 2 zl m) + zl L^2 with R = (1 - eps)(m - z_t) + (eps / V) sum(m - z_c)
            # + zl m^2 rational (m the maximum logit) and L > 0 (V > 1): L far below R's last digit
            # is a remainder of known sign, which settles R on a midpoint or a power of two.
            zt = z[t]
            mx = max(z)
            r_exact = ((1 - self.eps) * (mx - zt) + self.eps / v * sum((mx - zc for zc in z), Fraction(0))
                       + self.zl * mx * mx)
            slope = 1 + 2 * self.zl * mx
            l_up = big_l + err_l
            rem = l_up * (abs(_mpf(slope)[0]) + _mpf(self.zl)[0] * l_up) * (1 + 4 * eps_op)
            if _negligible(rem, r_exact):
                return Value(_mpf(r_exact)[0], rem, r_exact, -1 if slope < 0 else 1)
        nll = big_l - d[t]
        err = err_l + ed[t] + eps_op * nll
        one_m, e1 = _mpf(1 - self.eps)
        total = one_m * nll
        err = one_m * err + e1 * nll + eps_op * total
        if self.eps:
            spread = _ctx.fsum(-dc for dc in d)
            e_sp = _ctx.fsum(ed) + (v + 2) * eps_op * spread
            ev, e2 = _mpf(self.eps / v)
            sm = ev * (v * big_l + spread)
            e_sm = ev * (v * err_l + e_sp) + e2 * (v * big_l + spread) + 3 * eps_op * sm
            total, err = total + sm, err + e_sm
        if self.zl:
            zv, _ = _mpf(self.zl)
            zt = zv * lse.v * lse.v
            e_z = zv * (2 * abs(lse.v) * lse.err + lse.err ** 2) + 4 * eps_op * zt
            total, err = total + zt, err + e_z
        return Value(total, _SAFETY * (err + 2 * eps_op * total))

    def _gradient_row(self, z, t, e_vals, rel, s, err_t, k, is_max, sech, lse: Value, eps_op, t_sum,
                      prec: int) -> Sequence[Value]:
        """X_c for every class, each computed when first read (a d_weight element needs one class of
        every token; only d_hidden reads whole rows)."""
        v = self.v
        off, on = self.eps / v, self.eps / v + (1 - self.eps)

        def coef_of(c: int) -> Fraction:
            return on if c == t else off

        if k == v and (self.zl == 0 or v == 1):
            # Every logit exactly equal: p = 1/V, G = (1 + 2 zl lse) / V - coef (lse = z when V = 1).
            b_q = 1 + 2 * self.zl * z[0] if v == 1 else Fraction(1)
            out = []
            for c in range(v):
                q = (b_q / v - coef_of(c)) * (sech[c].exact or Fraction(1))
                vm, e = _mpf(q)
                out.append(Value(vm, e, q))
            return out
        zv, _ = _mpf(self.zl)
        b = 1 + 2 * zv * lse.v
        err_b = 2 * zv * lse.err + 3 * eps_op * abs(b)
        s_low = s - err_t

        def at(c: int) -> Value:
            saved, _ctx.prec = _ctx.prec, prec
            try:
                return element(c)
            finally:
                _ctx.prec = saved

        def element(c: int) -> Value:
            coef = coef_of(c)
            cm, ec = _mpf(coef)
            if c in is_max and not self.zl and self.cap is None:
                # G = (1 - k coef) / k - t / (k (k + t)): a rational and a negative remainder.
                a0q = (1 - k * coef) / k
                rem = (t_sum + err_t) / (k * k) * (1 + 4 * eps_op)
                if t_sum + err_t == 0:
                    vm, e = _mpf(a0q)
                    return Value(vm, e, a0q)
                if _negligible(rem, a0q):
                    low = max(t_sum - err_t, 0) / (k * (k + t_sum + err_t)) * (1 - 4 * eps_op)
                    return Value(_mpf(a0q)[0], rem, a0q, -1, low)
            if c in is_max and self.zl and self.cap is None and k == 1:
                # G = (1 - coef + 2 zl (m + L) - coef t) / (1 + t) = q + r: q = 1 - coef + 2 zl m
                # rational; r = [t (2 zl - 1 - 2 zl m) + 2 zl (L - t)] / (1 + t), L - t in [-t^2/2, 0].
                mx = max(z)
                q = 1 - coef + 2 * self.zl * mx
                sl = 2 * self.zl - 1 - 2 * self.zl * mx
                t_up = t_sum + err_t
                zlm = _mpf(self.zl)[0]
                bound = (t_up * abs(_mpf(sl)[0]) + zlm * t_up * t_up) * (1 + 4 * eps_op)
                settled = sl == 0 or t_up * zlm < abs(_mpf(sl)[0]) / 4
                if t_up and settled and _negligible(bound, q):
                    t_low = max(t_sum - err_t, 0)
                    low = max((t_low * abs(_mpf(sl)[0]) - zlm * t_up * t_up) / (1 + t_up), 0) * (1 - 4 * eps_op)
                    return Value(_mpf(q)[0], bound, q, 1 if sl > 0 else -1, low)
            if c not in is_max and self.cap is None and coef and abs(b) > err_b:
                p_up = e_vals[c] / s * (1 + rel[c] + err_t / s_low + 3 * eps_op)
                rem = (abs(b) + err_b) * p_up
                if _negligible(rem, coef):
                    # G = -coef + B p: B p far below coef's last digit, of B's sign.
                    p_low = e_vals[c] / s * max(1 - rel[c] - err_t / s_low - 3 * eps_op, 0)
                    low = (abs(b) - err_b) * p_low * (1 - 4 * eps_op)
                    return Value(-_mpf(coef)[0], rem, -coef, 1 if b > 0 else -1, low)
            if c in is_max:
                # B/s - coef = ((1 - k coef) + 2 zl lse - coef t) / s: no cancellation of B p against coef.
                a0, ea0 = _mpf(1 - k * coef)
                num = a0 + 2 * zv * lse.v - cm * t_sum
                e_num = ea0 + 2 * zv * lse.err + ec * t_sum + cm * err_t + 4 * eps_op * (abs(a0) + abs(2 * zv * lse.v) + cm * t_sum)
                val = num / s
                err = (e_num + abs(num) * err_t / s_low) / s_low + 2 * eps_op * abs(val)
            else:
                p = e_vals[c] / s
                err_p = p * (rel[c] + err_t / s_low + 3 * eps_op)
                val = b * p - cm
                err = abs(b) * err_p + err_b * (p + err_p) + ec + 3 * eps_op * (abs(b) * p + cm)
            sc = sech[c]
            val2 = val * sc.v
            err2 = err * (sc.v + sc.err) + abs(val) * sc.err + 2 * eps_op * abs(val2)
            return Value(val2, _SAFETY * err2)

        return LazyRow(v, at)

    # ------------------------------------------------------------------ exact combinations

    def _shape(self, i: int) -> tuple[int, tuple, list[int], int]:
        """Token i's distinct shifted logits u_j = z - max with their counts (the key tokens with
        the same probabilities share) and the key's number (hashed once: a V-long tuple's hash
        is not cached), each class's j, and the maximum's j."""
        if ("shape", i) not in self._rows:
            z = self.logits(i)
            uniq = _sorted_rationals(set(z))
            mx = uniq[-1]
            index = {u: j for j, u in enumerate(uniq)}
            counts = [0] * len(uniq)
            for zc in z:
                counts[index[zc]] += 1
            key = tuple((u - mx, n) for u, n in zip(uniq, counts))
            kid = self._keys.setdefault(key, len(self._keys))
            self._rows[("shape", i)] = (kid, key, [index[zc] for zc in z], len(uniq) - 1)
        return self._rows[("shape", i)]

    def combination(self, weights: dict[int, dict[int, Fraction]], prec: int) -> Value | None:
        """sum_i sum_c weights[i][c] G_ic (weights sparse: class -> weight), or None with a z-loss
        or a softcap (then the caller sums G's values).

        Without them G_ic = g_i (p_ic - coef_ic), and a token's probabilities are the atoms
        a_j = e^(u_j) / s of its distinct shifted logits u_j = z - max (the maximum's is
        (1 - sum_j n_j a_j) / n_m), shared by tokens with the same u_j. The combination is a
        rational R plus rational multiples of atoms, collected exactly: where every multiple
        vanishes (mirrored tokens, tied classes with opposite weights) it is R exactly, which no
        interval proves; where the atoms' part is far below R, it is R plus a remainder whose
        sign is that of its largest term (a probability of e^-16384 next to 1/4).
        """
        if self.cap is not None or self.zl:
            return None
        rational = Fraction(0)
        atoms: dict[tuple[int, int], Fraction] = {}
        keys: dict[int, tuple] = {}
        for i, wts in weights.items():
            if self.status(i) != "ok" or self.g[i] == 0:
                continue
            kid, key, where, top = self._shape(i)
            keys[kid] = key
            t = self.target[i]
            per: dict[int, Fraction] = {}
            for c, wc in wts.items():
                per[where[c]] = per.get(where[c], Fraction(0)) + wc
            n_top = key[top][1]
            g = self.g[i]
            w_top = per.get(top, Fraction(0))
            # Every atom's multiple is per_j - n_j w_top / n_top: only the classes weighted when
            # the maximum is not (a d_weight or d_bias element, mostly), every one when it is.
            classes = per if not w_top else range(len(key))
            for j in classes:
                q = per.get(j, Fraction(0)) - key[j][1] * w_top / n_top
                if j != top and q:
                    atoms[(kid, j)] = atoms.get((kid, j), Fraction(0)) + g * q
            coef_sum = self.eps / self.v * sum(wts.values(), Fraction(0)) + (1 - self.eps) * wts.get(t, Fraction(0))
            rational += g * (w_top / n_top - coef_sum)
        _ctx.prec = prec
        eps_op = _ctx.ldexp(1, 2 - prec)
        terms = []
        for (kid, j), q in atoms.items():
            if q:
                qm, eq = _mpf(q)
                a, rel = self._atom(kid, keys[kid], j, prec)
                terms.append((qm * a, abs(qm) * a * rel + eq * a * (1 + rel)))
        if not terms:
            vm, e = _mpf(rational)
            return Value(vm, e, rational)
        part = _ctx.fsum(v for v, _ in terms)
        err = _ctx.fsum(e for _, e in terms) + (len(terms) + 4) * eps_op * _ctx.fsum(abs(v) for v, _ in terms)
        if rational and abs(part) > err and _negligible(abs(part) + err, rational):
            return Value(_mpf(rational)[0], (abs(part) + err) * (1 + eps_op), rational, 1 if part > 0 else -1,
                         (abs(part) - err) * (1 - eps_op))
        rm, er = _mpf(rational)
        return Value(rm + part, er + err + 2 * eps_op * abs(rm + part))

    def _atom(self, kid: int, key: tuple, j: int, prec: int) -> tuple[mpmath.mpf, mpmath.mpf]:
        """(a_j = e^(u_j) / s for the distinct shifted logits ``key`` (numbered kid), its relative error bound)."""
        if ("atoms", kid, prec) not in self._rows:
            _ctx.prec = prec
            eps_op = _ctx.ldexp(1, 2 - prec)
            e = [_ctx.exp(_mpf(u)[0]) if u else _ctx.one for u, _ in key]
            s = _ctx.fsum(n * ev for (_, n), ev in zip(key, e))
            rel = (len(key) + 8) * eps_op
            self._rows[("atoms", kid, prec)] = ([ev / s for ev in e], rel)
        values, rel = self._rows[("atoms", kid, prec)]
        return values[j], rel

    # ------------------------------------------------------------------ output elements

    def loss_token(self, i: int, prec: int) -> Value | str:
        st = self.status(i)
        if st == "ignored":
            return Value(_ctx.zero, _ctx.zero, Fraction(0))
        if st == "nan":
            return "nan"
        return self.row(i, prec).loss

    def _scaled(self, g: Fraction, x: Value, coef: Fraction) -> Value:
        """g coef X for an exact rational g coef."""
        q = g * coef
        if q == 0:
            return Value(_ctx.zero, _ctx.zero, Fraction(0))
        if x.exact is not None:
            e = q * x.exact
            vm, err = _mpf(e)
            if x.side:
                qa = abs(_mpf(q)[0])
                u8 = 8 * _ctx.ldexp(1, 2 - _ctx.prec)
                return Value(vm, qa * x.err * (1 + u8), e, x.side if q > 0 else -x.side, qa * x.low * (1 - u8))
            return Value(vm, err, e)
        qm, eq = _mpf(q)
        val = qm * x.v
        return Value(val, abs(qm) * x.err + eq * (abs(x.v) + x.err) + 2 * _ctx.ldexp(abs(val), 2 - _ctx.prec))

    def d_hidden(self, i: int, col: int, prec: int) -> Value:
        if self.status(i) != "ok" or self.g[i] == 0:
            return Value(_ctx.zero, _ctx.zero, Fraction(0))
        wcol = self.w[:, col]
        combined = self.combination({i: {c: Fraction(float(x)) for c, x in enumerate(wcol.tolist()) if x}}, prec)
        if combined is not None:
            return combined
        r = self.row(i, prec)
        _ctx.prec = prec
        terms = []
        for c in range(self.v):
            if wcol[c]:
                terms.append(self._scaled(self.g[i], r.x[c], Fraction(float(wcol[c]))))
        return add_values(terms, prec)

    def _by_group(self) -> dict[int, Fraction]:
        totals: dict[int, Fraction] = {}
        for i in range(self.inp.tokens):
            if self.status(i) == "ok":
                totals[self.group[i]] = totals.get(self.group[i], Fraction(0)) + self.g[i]
        return {k: gsum for k, gsum in totals.items() if gsum != 0}

    def d_weight(self, c: int, col: int | None, prec: int) -> Value:
        """d_weight[c, col], or d_bias[c] for col None."""
        _ctx.prec = prec
        combined = self.combination({i: {c: Fraction(1) if col is None else Fraction(float(self.h[i, col]))}
                                     for i in range(self.inp.tokens)}, prec)
        if combined is not None:
            return combined
        terms = []
        for i, gsum in self._by_group().items():
            coef = Fraction(1) if col is None else Fraction(float(self.h[i, col]))
            if coef:
                x = self.row(i, prec).x[c]
                _ctx.prec = prec
                terms.append(self._scaled(gsum, x, coef))
        return add_values(terms, prec)

    def any_nan(self) -> bool:
        return any(self.status(i) == "nan" for i in range(self.inp.tokens))


def add_values(terms: list[Value], prec: int) -> Value:
    """The sum of Values: exact when every term is."""
    _ctx.prec = prec
    # Terms known only as intervals but of known sign, far below the exact terms' sum, become
    # one-sided remainders of it (a tiny probability added to -1 keeps the sum in -1's binade).
    exact_sum = sum((t.exact for t in terms if t.exact is not None), Fraction(0))
    loose = [t for t in terms if t.exact is None]
    if loose and exact_sum and all(abs(t.v) > t.err for t in loose):
        rem = _ctx.fsum(abs(t.v) + t.err for t in loose) * (1 + (len(terms) + 2) * _ctx.ldexp(1, 2 - prec))
        if _negligible(rem, exact_sum):
            u4 = 4 * _ctx.ldexp(1, 2 - prec)
            terms = [t for t in terms if t.exact is not None] + [
                Value(_ctx.zero, (abs(t.v) + t.err) * (1 + u4), Fraction(0), 1 if t.v > 0 else -1,
                      (abs(t.v) - t.err) * (1 - u4)) for t in loose]
    if all(t.exact is not None for t in terms):
        ex = sum((t.exact for t in terms if t.exact is not None), Fraction(0))
        vm, e = _mpf(ex)
        grow = (len(terms) + 2) * _ctx.ldexp(1, 2 - prec)
        # Remainders of each sign: their sum's sign is known where one side's least exceeds the
        # other's most.
        up = {sd: _ctx.fsum(t.err for t in terms if t.side == sd) * (1 + grow) for sd in (1, -1)}
        low = {sd: _ctx.fsum(t.low for t in terms if t.side == sd) * (1 - grow) for sd in (1, -1)}
        if not up[1] and not up[-1]:
            return Value(vm, e, ex)
        for sd in (1, -1):
            if low[sd] > up[-sd]:
                return Value(vm, up[sd], ex, sd, low[sd] - up[-sd])
            if not up[-sd]:
                return Value(vm, up[sd], ex, sd, low[sd])
    pairs = [t.interval() for t in terms]
    total = _ctx.fsum(v for v, _ in pairs)
    mag = _ctx.fsum(abs(v) for v, _ in pairs)
    err = _ctx.fsum(e for _, e in pairs) + (len(terms) + 2) * _ctx.ldexp(mag, 2 - prec)
    return Value(total, err)


def certify_value(val: Value | str, fmt: Format) -> tuple[Entry, bool]:
    """One Value (or "nan") as an entry of fmt, and whether its rounding is proven."""
    cert = Certifier(fmt)
    if isinstance(val, str):
        return cert.special(math.nan), True
    if val.exact is not None:
        entry = cert.rational(val.exact, val.side, val.err) if val.side else cert.rational(val.exact)
        return entry, cert.certified
    if _ctx.isinf(val.err) or val.err != val.err:
        return cert.zero_entry, False
    entry = cert.put(val.v, val.err)
    return entry, cert.certified


def certified(compute: Callable[[int], Value | str], fmt: Format, base: int) -> tuple[Entry, bool]:
    """One element through Ziv's loop: its entry and whether it was proven."""
    prec = base
    while True:
        entry, ok = certify_value(compute(prec), fmt)
        if ok or prec >= MAX_PRECISION:
            return entry, ok
        prec *= 2


def base_precision(fmt: Format, inp: LinearLossInputs) -> int:
    """The first precision of Ziv's loop."""
    return fmt.p + 80 + max(inp.vocabulary, 2).bit_length()


__all__ = ["Engine", "Value", "add_values", "base_precision", "certified", "certify_value", "ExactLogits", "as_integers", "exact_logit_rows", "upstream"]
