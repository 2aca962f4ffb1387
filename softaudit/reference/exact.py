"""Exact references: softmax, log_softmax and logsumexp in mpmath, correctly rounded.

Two layers:

* :func:`exact_row` is the exact engine: every output of one row as an mpmath
  number at a chosen precision, with the special-value semantics of docs/special-values.md.
* :func:`reference_rows` turns rows of inputs (exact binary values of the target
  format) into *certified* correctly-rounded references. Each value is computed
  at precision P together with a rigorous bound on its error; it is accepted
  only when both ends of that interval round to the same value of the format
  and the bound is below 2^-30 ulp. Otherwise the row is recomputed at twice
  the precision (Ziv's strategy), so the rounding is exact, not probable.

A reference element is stored as (rounded value, k, hi, lo) with
exact / 2^k = hi + lo to about 106 bits and 2^k = ulp(exact): the metrics
compute errors in ulps from that form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np
from mpmath.libmp import from_man_exp

from softaudit.formats import Format, round_mpf, ulp_exponent
from softaudit.reference.engines import ENGINES, fast_path
from softaudit.reference.fast_path import Certified, FastPath

ENGINE_VERSION = "3"
"""Bump whenever a change could alter any stored reference: it invalidates the cache."""

ROW_OPS = ("softmax", "log_softmax", "logsumexp")
"""The ops whose references depend on the row alone (cross-entropy and gradients: loss, gradients)."""

_ctx = mpmath.MPContext()
"""A private mpmath context, so our precision changes never leak to users' code."""

_LN2 = math.log(2.0)
MAX_PRECISION = 16384
"""Ziv's loop stops doubling the working precision here (bits); what is still unproven is counted."""
_REQUIRED_ULP_ACCURACY = 2.0**-30
"""A stored reference must know its exact value to this many ulps, so reported errors are exact to ~9 digits."""


# --------------------------------------------------------------------------
# The context's arithmetic, for the gradient and loss engines (this module owns the context)


def set_precision(prec: int) -> None:
    """Set the working precision (bits) of every operation below and of the mpfs they return."""
    _ctx.prec = prec


def unit_error(prec: int) -> mpmath.mpf:
    """A bound on the relative error of one mpmath operation at ``prec`` bits (2^(2 - prec))."""
    return _ctx.ldexp(1, 2 - prec)


def mpf(v: float | int | str) -> mpmath.mpf:
    """``v`` as an mpf of the engine's context (floats and ints exactly)."""
    return _ctx.mpf(v)


def fsum(terms: Iterable) -> mpmath.mpf:
    """The sum of ``terms`` at the working precision."""
    return _ctx.fsum(terms)


def exp(v) -> mpmath.mpf:
    """exp(v) at the working precision."""
    return _ctx.exp(v)


def ldexp(v, n: int) -> mpmath.mpf:
    """v * 2^n, exactly."""
    return _ctx.ldexp(v, n)


def exact_add(a, b) -> mpmath.mpf:
    """a + b without rounding."""
    return _ctx.fadd(a, b, exact=True)


def exact_sub(a, b) -> mpmath.mpf:
    """a - b without rounding."""
    return _ctx.fsub(a, b, exact=True)


def exact_mul(a, b) -> mpmath.mpf:
    """a * b without rounding."""
    return _ctx.fmul(a, b, exact=True)


# --------------------------------------------------------------------------
# The exact engine


@dataclass(frozen=True)
class ExactRow:
    """Exact outputs for one row. ``None`` marks an undefined result (docs/special-values.md#undefined-rows-and-the-policy)."""

    softmax: list[mpmath.mpf] | None
    log_softmax: list[mpmath.mpf] | None
    logsumexp: mpmath.mpf


def exact_row(values: Sequence[float], prec: int = 200) -> ExactRow:
    """softmax, log_softmax and logsumexp of ``values`` at ``prec`` bits (no shortcuts).

    Slow on long rows (one exp per element); the reference builder uses
    :func:`reference_rows`, which skips what cannot affect a rounded result.
    """
    x = [float(v) for v in values]
    nan = _ctx.mpf("nan")
    if any(math.isnan(v) for v in x):
        return ExactRow([nan] * len(x), [nan] * len(x), nan)
    if any(v == math.inf for v in x):
        return ExactRow(None, None, _ctx.mpf("inf"))
    if all(v == -math.inf for v in x):
        return ExactRow(None, None, _ctx.mpf("-inf"))
    a = max(x)
    _ctx.prec = prec
    d = [_ctx.fsub(v, a, exact=True) if v != -math.inf else None for v in x]
    k = sum(1 for di in d if di is not None and di == 0)
    t = _ctx.fsum(_ctx.exp(di) for di in d if di is not None and di != 0)
    big_l = _ctx.log1p(t) if k == 1 else _ctx.log(k + t)
    s = k + t
    sm = [_ctx.zero if di is None else _ctx.exp(di) / s for di in d]
    ls = [_ctx.ninf if di is None else di - big_l for di in d]
    return ExactRow(sm, ls, a + big_l)


# --------------------------------------------------------------------------
# Certified references


@dataclass
class OpReference:
    """Correctly rounded reference for one op over a batch of rows."""

    op: str
    rounded: np.ndarray
    """Correctly rounded exact value (float64 holding a value of the format); NaN where undefined or NaN."""
    k: np.ndarray
    """ulp(exact) = 2^k in the format (int32)."""
    hi: np.ndarray
    lo: np.ndarray
    """exact / 2^k = hi + lo (float64 pair); 0 where the exact value is 0 or far below ulp(0)."""
    undefined: np.ndarray
    """Per row (bool): the exact answer is undefined (fully masked or +inf row, docs/special-values.md#undefined-rows-and-the-policy)."""

    def exact_str(self, index: tuple[int, ...], digits: int = 17) -> str | None:
        """The exact value at ``index`` from the stored (k, hi, lo), or None where they cannot say.

        None for values stored as 0 that may be tiny rather than zero (far below
        the format's smallest subnormal): exact_element recomputes those.
        """
        hi, lo, k = float(self.hi[index]), float(self.lo[index]), int(self.k[index])
        if math.isnan(hi):
            return "nan" if not self.undefined[index[0]] else "undefined"
        if hi == 0.0:
            return None
        _ctx.prec = 128
        v = _ctx.ldexp(_ctx.fadd(hi, lo, exact=True), k)
        return _ctx.nstr(v, digits, min_fixed=-4, max_fixed=8)


@dataclass
class RowStats:
    """Per-row quantities the stability envelope needs (docs/envelope.md#the-model)."""

    amax: np.ndarray
    """Row maximum (float64; NaN/±inf as they are)."""
    log_s: np.ndarray
    """log of s = sum exp(x_j - amax), as float64 (NaN where undefined)."""
    n: int


@dataclass
class ReferenceSet:
    """References of all three ops for one input array, with the envelope's row stats."""

    ops: dict[str, OpReference]
    stats: RowStats
    uncertified: int
    """Elements whose rounding could not be certified within the precision cap (expected 0)."""
    fallback: int = 0
    """Elements the mpmath engine computed (all of them without the fast path); not cached."""


def _certify(v: mpmath.mpf, err, fmt: Format, side: int = 0) -> tuple[float, int, float, float, bool]:
    """Round v into fmt; True when every real the exact value may be provably rounds the same,
    in one binade, and err is tiny in ulps.

    ``err`` (an mpf: it never underflows) bounds |exact - v|. ``side`` 0: exact in
    [v - err, v + err]; +1: exact in (v, v + err]; -1: exact in [v - err, v). A one-sided
    interval is how a value known to be an exact v plus (or minus) a positive remainder is
    proven: at a midpoint v the remainder's sign decides the rounding. err == 0 claims v exact
    (the caller formed it without rounding); nothing else may pass 0.
    """
    r = round_mpf(v, fmt)
    # A bound far below both ulp(v) and v's last bit changes nothing that is decided here (every
    # rounding boundary lies a multiple of v's last bit away from v, or on it): raised to that
    # floor, the ends below stay short exact sums (a tail of e^-3e38 would not fit in memory).
    floor = _ctx.ldexp(1, min(ulp_exponent(v, fmt), v._mpf_[2] if v else 0) - 80)
    if err and err < floor:
        err = floor
    if side:
        # The open end: v itself is excluded, so its rounding is the limit from the remainder's side.
        lo_end, hi_end = _toward(v, side, fmt), _ctx.fadd(v, side * err, exact=True)
    else:
        # The interval's ends are formed exactly: rounded, they could land on a midpoint.
        lo_end, hi_end = _ctx.fsub(v, err, exact=True), _ctx.fadd(v, err, exact=True)
    k = ulp_exponent(hi_end, fmt)
    ok = True
    if err:
        ok = _ctx.ldexp(err, -k) <= _REQUIRED_ULP_ACCURACY
        r_lo, r_hi = round_mpf(lo_end, fmt), round_mpf(hi_end, fmt)
        # The same value and binade (so ulp(exact) is known) at both ends. A zero's sign is not
        # part of a reference (nothing judges it): an interval around 0 that rounds to zero passes.
        ok = ok and r_lo == r_hi and ulp_exponent(lo_end, fmt) == k
        r = r_hi
    w = _ctx.ldexp(v, -k)
    hi = float(w)  # float(mpf) rounds to nearest
    lo = float(_ctx.fsub(w, hi, exact=True)) if math.isfinite(hi) else 0.0
    return r, k, hi, lo, bool(ok)


def _toward(v: mpmath.mpf, side: int, fmt: Format) -> mpmath.mpf:
    """v moved by less than anything that changes a rounding into fmt, toward ``side``: a stand-in
    for v + side * (an infinitesimal). The step is below v's last bit and below a quarter of
    the smaller ulp around v, so no value or midpoint of fmt lies between v and the result."""
    step = ulp_exponent(v, fmt) - 3
    if v:
        step = min(step, v._mpf_[2] - 2)  # v = man * 2^exp: below its lowest bit
    return _ctx.fadd(v, _ctx.ldexp(side, step), exact=True)


@dataclass
class RowTerms:
    """The exact pieces of one row with a finite maximum, at one precision, with error bounds.

    Shared by the forward references here and by the gradient and loss references
    (gradients, loss): s = sum exp(x_j - a) = k_ties + t, L = log s.
    Every ``err_*`` is a rigorous bound on the absolute error of the mpmath value.
    """

    a: float
    finite: np.ndarray
    """Per entry: not -inf."""
    uniq: np.ndarray
    """Distinct finite values, ascending (the last is the max)."""
    inverse: np.ndarray
    """For each finite entry (in order), its index in ``uniq``."""
    counts: np.ndarray
    d: list
    """d_u = u - a, exact (mpf)."""
    e: list
    """exp(d_u) (mpf; exactly 1 for the max), or None below the cut (bounded, not computed)."""
    k_ties: int
    t: mpmath.mpf
    s: mpmath.mpf
    big_l: mpmath.mpf
    big_l_f: float
    """L as a float, for the envelope's row statistics only: never in a bound (it underflows)."""
    err_t: mpmath.mpf
    err_s: mpmath.mpf
    err_l: mpmath.mpf
    rel_p: mpmath.mpf
    """Relative error bound of p_u = e_u / s."""
    eps: mpmath.mpf
    """Bound on the relative error of one mpmath operation at this precision."""
    d_cut: float
    """Terms with d_u below this are bounded, not computed: each is < exp(d_cut)."""
    tail: float
    """Number of entries below the cut."""
    terms: int
    tail_bound: mpmath.mpf = mpmath.mpf(0)
    """The cut-off terms' sum lies in (0, tail_bound] (tail > 0), or is 0 (no tail).

    Every bound here is an mpf of the private context: none underflows or vanishes, however far
    below float64's range it lies (a float bound of 0 would be taken as proof)."""

    @property
    def only_tail(self) -> bool:
        """t was computed as exactly 0 while the true t is positive (every non-maximal term lies
        below the cut): every output is then an exact quantity plus a remainder of known sign,
        which decides the rounding at a midpoint (_certify's side)."""
        return self.terms == 0 and self.tail > 0

    def tail_remainder(self, weights: Sequence[Fraction], curvature) -> tuple[int, mpmath.mpf]:
        """(side, bound) of a quantity's remainder r = q - q(t = 0), where q's expansion in the
        cut-off terms is the first-order sum_u w_u exp(d_u) over the groups below the cut
        (``weights`` per distinct value, uniq's order) plus at most ``curvature`` * (sum of the
        cut-off terms' exps)^2. side is r's sign where the first-order sum settles it, else 0;
        |r| <= bound always.

        The sum is factored by its largest term, exp(d_top) * sum_u w_u exp(d_u - d_top), so its
        sign and size are known however far below float64's (or any precision's) range it lies.
        """
        idx = [u for u, e in enumerate(self.e) if e is None]
        if not idx:
            return 0, _ctx.zero
        d_top = self.d[idx[-1]]  # uniq is ascending: the last cut-off group is the largest
        e_top = _ctx.exp(d_top)
        terms = [mpf_of_fraction(weights[u]) * _ctx.exp(self.d[u] - d_top) for u in idx if weights[u]]
        inner = _ctx.fsum(terms)
        err = _ctx.fsum(abs(v) for v in terms) * (len(terms) + 4) * self.eps
        second = curvature * int(self.counts[idx].sum()) ** 2 * e_top
        bound = e_top * ((abs(inner) + err + second) * (1 + 4 * self.eps))
        if abs(inner) > err + second:
            return (1 if inner > 0 else -1), bound
        return 0, bound

    def groups(self) -> list[np.ndarray]:
        """For each distinct finite value (uniq's order), the positions of its entries among the
        finite entries: the grouping every per-value sum uses."""
        order = np.argsort(self.inverse, kind="stable")
        return np.split(order, np.cumsum(self.counts)[:-1])


def row_terms(x: np.ndarray, fmt: Format, prec: int, cut_margin: float = 0.0) -> RowTerms:
    """The pieces of row ``x`` (no NaN, no +inf, not all -inf) at precision ``prec``.

    ``cut_margin`` (natural-log units) lowers the cut for quantities that multiply
    the probabilities by factors above 1 (upstream gradients, class weights).
    """
    n = x.size
    _ctx.prec = prec
    eps = _ctx.ldexp(1, 2 - prec)  # bound on the relative error of one mpmath operation
    a = float(x.max())
    finite = x != -np.inf
    uniq, inverse = np.unique(x[finite], return_inverse=True)
    counts = np.bincount(inverse, minlength=uniq.size)
    # Terms exp(d) below the cut are bounded, not computed: together they move no
    # output by more than 2^-66 of the format's smallest subnormal (every ulp is at
    # least that, docs/formats.md#error-in-ulps) nor by more than 2^-(prec+20). The second bound moves
    # the cut down as Ziv's loop raises the precision, which settles the rows whose
    # exact outputs sit within a tail's worth of a rounding boundary (a difference
    # x_i - max that is exactly a midpoint, minus a tiny log(sum)).
    d_cut = min(fmt.emin - fmt.p - 66, -(prec + 20)) * _LN2 - math.log(n) - cut_margin
    d = [_ctx.fsub(float(u), a, exact=True) for u in uniq]
    e_vals: list = []
    t = _ctx.zero
    tail = 0.0
    terms = 0
    for di, u, c in zip(d, uniq, counts):
        if u == a:
            e_vals.append(_ctx.one)
        elif di < d_cut:
            e_vals.append(None)
            tail += float(c)
        else:
            ei = _ctx.exp(di)
            e_vals.append(ei)
            t += ei * int(c)
            terms += 1
    # exp(d_cut) as an mpf: a float exp underflows to 0 below -745, and a zero bound is no bound.
    tail_bound = tail * _ctx.exp(d_cut) if tail else _ctx.zero
    k_ties = int(counts[-1])  # uniq is sorted: the last one is the max
    err_t = t * (2 * terms + 4) * eps + tail_bound
    s = k_ties + t
    err_s = err_t + eps * s
    big_l = _ctx.log1p(t) if k_ties == 1 else _ctx.log(s)
    err_l = 2 * ((err_t if k_ties == 1 else err_s / s) + eps * big_l)
    return RowTerms(a, finite, uniq, inverse, counts, d, e_vals, k_ties, t, s, big_l, float(big_l), err_t, err_s,
                    err_l, 3 * eps + err_s / s, eps, d_cut, tail, terms, tail_bound)


class Certifier:
    """Rounds values into a format and remembers whether every one was certified."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.certified = True
        self.zero_entry = (0.0, fmt.emin - fmt.p + 1, 0.0, 0.0)
        """An exact (or negligible: below 2^-66 of the smallest subnormal) zero."""

    def put(self, v: mpmath.mpf, err, side: int = 0) -> tuple[float, int, float, float]:
        """The entry of an exact value within err of v (on ``side`` of it: see _certify)."""
        r, k, hi, lo, ok = _certify(v, err, self.fmt, side)
        self.certified &= ok
        return r, k, hi, lo

    def rational(self, r: Fraction, side: int = 0, err=0) -> tuple[float, int, float, float]:
        """The entry of r + side * (a remainder in (0, err]), r an exact rational (side 0: a
        remainder of either sign, at most err).

        A dyadic r (every midpoint of a format is one) is held exactly and the remainder's sign
        settles a tie; any other r lies strictly between two midpoints and is rounded once to the
        working precision, the remainder counted on both sides.
        """
        if not err:
            side, err = 0, _ctx.zero
        d = r.denominator
        if d & (d - 1) == 0:
            v = _ctx.make_mpf(from_man_exp(r.numerator, -(d.bit_length() - 1)))
            return self.put(v, err, side)
        v = mpf_of_fraction(r)
        return self.put(v, err + 2 * _ctx.ldexp(abs(v), 2 - _ctx.prec))

    def special(self, value: float) -> tuple[float, int, float, float]:
        """NaN or an infinity as an exact class (no ulp figures)."""
        return (value, self.zero_entry[1], math.nan if math.isnan(value) else 0.0, 0.0)


def _row_reference(x: np.ndarray, fmt: Format, prec: int) -> tuple[dict, float, float, bool]:
    """One row at precision ``prec``: per-op lists of (rounded, k, hi, lo), amax, log s, certified?"""
    n = x.size
    zero_k = fmt.emin - fmt.p + 1
    nan_entry = (math.nan, zero_k, math.nan, 0.0)
    if np.isnan(x).any():
        return ({"softmax": [nan_entry] * n, "log_softmax": [nan_entry] * n, "logsumexp": [nan_entry]},
                math.nan, math.nan, True)
    if (x == np.inf).any() or (x == -np.inf).all():
        lse = math.inf if (x == np.inf).any() else -math.inf
        return ({"softmax": None, "log_softmax": None, "logsumexp": [(lse, zero_k, 0.0, 0.0)]},
                float(x.max()), math.nan, True)

    rt = row_terms(x, fmt, prec)
    cert = Certifier(fmt)
    sm_u: list = []
    ls_u: list = []
    # Every finite entry equal: p = 1/k, a rational (exact where it is a power of two).
    top = cert.rational(Fraction(1, rt.k_ties)) if rt.uniq.size == 1 else _max_probability(rt, fmt, cert.put)
    t_positive = rt.t > 0 or rt.tail > 0
    for di, ei in zip(rt.d, rt.e):
        if ei is None:
            # Far below the format's smallest subnormal: rounds to 0, |exact| < 2^-66 ulp(0).
            sm_u.append(cert.zero_entry)
        elif di == 0 and top is not None:
            sm_u.append(top)
        else:
            p = ei / rt.s
            sm_u.append(cert.put(p, 2 * abs(p) * rt.rel_p))
        ls_u.append(_log_softmax_entry(di, rt, t_positive, fmt, cert.put))
    # logsumexp = a + L with L > 0 whenever t is: a itself with the remainder above it where L is
    # negligible (a L computed as 0 says nothing of the side), else a + L formed at the precision.
    l_upper = rt.big_l + rt.err_l
    if not l_upper:  # one finite entry (no other term, no tail): L = 0 exactly
        lse_entry = cert.put(_ctx.mpf(rt.a), 0)
    elif t_positive and _ctx.ldexp(l_upper, -ulp_exponent(_ctx.mpf(rt.a), fmt)) < NEGLIGIBLE_ULPS:
        lse_entry = cert.put(_ctx.mpf(rt.a), l_upper, side=1)
    else:
        lse = rt.a + rt.big_l
        lse_entry = cert.put(lse, rt.err_l + 2 * rt.eps * abs(lse))

    sm = [cert.zero_entry] * n
    ls = [(-math.inf, zero_k, 0.0, 0.0)] * n
    idx = np.flatnonzero(rt.finite)
    for j, u in zip(idx.tolist(), rt.inverse.tolist()):
        sm[j] = sm_u[u]
        ls[j] = ls_u[u]
    return {"softmax": sm, "log_softmax": ls, "logsumexp": [lse_entry]}, rt.a, rt.big_l_f, cert.certified


def _max_probability(rt: RowTerms, fmt: Format, put) -> tuple[float, int, float, float] | None:
    """softmax at the row's maxima as 1/k - delta, delta = t / (k s), for k a power of two
    (None otherwise, or when no other entry is finite: p = 1/k exactly).

    1/k is then a value of the format and p lies just below it: the quotient 1/s would round
    onto 1/k whenever delta is under the working precision and lose the binade of the exact
    value. delta negligible (under 2^-60 ulp): 1/k minus an infinitesimal; otherwise 1/k - delta
    formed exactly. fast_long_double.max_probability applies the same rule.
    """
    k = rt.k_ties
    if k & (k - 1) or (rt.t == 0 and rt.tail == 0):
        return None
    inv_k = _ctx.ldexp(1, -(k.bit_length() - 1))
    delta = rt.t / (k * rt.s)
    err = 2 * (rt.err_t / (k * (rt.s - rt.err_s)) + delta * (rt.err_s / rt.s + 2 * rt.eps))
    upper = delta + err  # the true delta lies in (0, upper]
    if _ctx.ldexp(upper, -ulp_exponent(inv_k, fmt)) < NEGLIGIBLE_ULPS:
        return put(inv_k, upper, -1)
    return put(_ctx.fsub(inv_k, delta, exact=True), err, -1 if delta == 0 else 0)


NEGLIGIBLE_ULPS = 2.0**-40
"""A remainder of known sign below this many ulps of an exact value is certified one-sided from
that value (the remainder's sign settles a midpoint; its size is then irrelevant to the rounding
and below what a stored reference keeps, _REQUIRED_ULP_ACCURACY)."""


def _log_softmax_entry(di, rt: RowTerms, t_positive: bool, fmt: Format, put) -> tuple[float, int, float, float]:
    """log_softmax = d_i - L, certified even when L is far below ulp(d_i).

    d_i is exact and 0 <= L <= L + err_l, with L > 0 whenever t > 0 (the tail included). When
    that bound is negligible against ulp(d_i), the exact value is d_i minus a positive remainder,
    which settles the case that no precision can: d_i exactly halfway between two values of the
    format (a difference of two inputs needs one bit more than the format holds), where the sign
    of L alone decides the rounding.
    """
    l_upper = rt.big_l + rt.err_l
    if t_positive and _ctx.ldexp(l_upper, -ulp_exponent(di, fmt)) < NEGLIGIBLE_ULPS:
        return put(di, l_upper, -1)
    li = di - rt.big_l
    return put(li, rt.err_l + 2 * rt.eps * abs(li))


def reference_rows(x: np.ndarray, fmt: Format, engine: str = "auto") -> ReferenceSet:
    """Certified correctly-rounded references of every op for a 2-D input of format ``fmt``."""
    xs = np.asarray(x).astype(np.float64)
    if xs.ndim != 2:
        raise ValueError(f"reference_rows expects a 2-D array, got shape {xs.shape}")
    if engine not in ENGINES:
        raise ValueError(f"unknown reference engine {engine!r} (known: {', '.join(ENGINES)})")
    path = fast_path(fmt) if engine == "auto" else None
    if path is not None:
        return _reference_rows_fast(xs, fmt, path)
    rows, n = xs.shape
    arrays: dict[str, dict[str, list]] = {op: {"rounded": [], "k": [], "hi": [], "lo": []} for op in ROW_OPS}
    undefined = np.zeros(rows, dtype=bool)
    amax = np.empty(rows)
    log_s = np.empty(rows)
    uncertified = 0
    for i in range(rows):
        out, a, ls, ok = _ziv_row(xs[i], fmt)
        if not ok:
            uncertified += n
        amax[i], log_s[i] = a, ls
        if out["softmax"] is None:
            undefined[i] = True
            filler = [(math.nan, 0, math.nan, 0.0)] * n
            out["softmax"] = out["log_softmax"] = filler
        for op in ROW_OPS:
            cols = list(zip(*out[op]))
            for name, col in zip(("rounded", "k", "hi", "lo"), cols):
                arrays[op][name].append(col)
    refs = {}
    for op in ROW_OPS:
        shape = (rows,) if op == "logsumexp" else (rows, n)
        a_ = arrays[op]
        refs[op] = OpReference(
            op=op,
            rounded=np.array(a_["rounded"], dtype=np.float64).reshape(shape),
            k=np.array(a_["k"], dtype=np.int32).reshape(shape),
            hi=np.array(a_["hi"], dtype=np.float64).reshape(shape),
            lo=np.array(a_["lo"], dtype=np.float64).reshape(shape),
            undefined=undefined.copy() if op != "logsumexp" else np.zeros(rows, dtype=bool),
        )
    return ReferenceSet(ops=refs, stats=RowStats(amax=amax, log_s=log_s, n=n), uncertified=uncertified,
                        fallback=rows * (2 * n + 1))


def _ziv_row(x_row: np.ndarray, fmt: Format) -> tuple[dict, float, float, bool]:
    """_row_reference at doubling precisions until certified (or the cap)."""
    prec = base_precision(fmt, x_row.size)
    while True:
        out, a, ls, ok = _row_reference(x_row, fmt, prec)
        if ok or prec >= MAX_PRECISION:
            return out, a, ls, ok
        prec *= 2


def _reference_rows_fast(xs: np.ndarray, fmt: Format, path: FastPath) -> ReferenceSet:
    """reference_rows through a fast path; the elements it cannot prove come from mpmath."""
    rows, n = xs.shape
    ff = path.forward(xs, fmt)
    uncertified = 0
    fallback = 0
    failed = {op: ~c.ok.reshape(rows, -1) for op, c in ff.ops.items()}
    for i in np.flatnonzero(np.any([f.any(axis=1) for f in failed.values()], axis=0)).tolist():
        out, _, _, ok = _ziv_row(xs[i], fmt)
        for op, c in ff.ops.items():
            cols = np.flatnonzero(failed[op][i])
            fallback += cols.size
            if not ok:
                uncertified += cols.size
            for j in cols.tolist():
                entry = out[op][j]
                at = (i, j) if op != "logsumexp" else (i,)
                c.rounded[at], c.k[at], c.hi[at], c.lo[at] = entry
    refs = {}
    for op, c in ff.ops.items():
        refs[op] = OpReference(op=op, rounded=c.rounded, k=c.k.astype(np.int32), hi=c.hi, lo=c.lo,
                               undefined=ff.undefined.copy() if op != "logsumexp" else np.zeros(rows, dtype=bool))
    return ReferenceSet(ops=refs, stats=RowStats(amax=ff.amax, log_s=ff.log_s, n=n), uncertified=uncertified,
                        fallback=fallback)


Entry = tuple[float, int, float, float]
"""One reference element: (rounded, k, hi, lo), see OpReference."""


def mpf_of_fraction(fr: Fraction) -> mpmath.mpf:
    """A Fraction as an mpf at the current precision (one rounding: relative error <= eps)."""
    if fr.denominator == 1:
        return _ctx.mpf(fr.numerator)
    return _ctx.mpf(fr.numerator) / fr.denominator


def base_precision(fmt: Format, n: int) -> int:
    """The first precision Ziv's loop tries for rows of length ``n``."""
    return fmt.p + 64 + max(1, n).bit_length()


def certified_rows(rows: int, base_prec: int,
                   row_fn: Callable[[int, int], tuple[list[Entry] | None, bool]]) -> tuple[list, int]:
    """Run ``row_fn(row, prec)`` for every row, doubling the precision until its
    entries are certified (Ziv's strategy, capped at MAX_PRECISION).

    ``row_fn`` returns (entries, certified), entries None for a row whose exact
    answer is undefined. Returns the per-row entries and the number of elements
    left uncertified at the cap.
    """
    out: list = []
    uncertified = 0
    for i in range(rows):
        prec = base_prec
        while True:
            entries, ok = row_fn(i, prec)
            if ok or prec >= MAX_PRECISION:
                break
            prec *= 2
        if not ok:
            uncertified += len(entries or ())
        out.append(entries)
    return out, uncertified


def fill_failed(op: str, fast: Certified, whole_rows: np.ndarray,
                row_fn: Callable[[int, int, np.ndarray | None], tuple[list[Entry] | None, bool]],
                base_prec: int) -> tuple[OpReference, int]:
    """Assemble a fast-path result, taking from ``row_fn(row, prec, cols)`` (the mpmath engine,
    Ziv's loop; cols None for every column) each element the fast path could not prove, and
    whole rows where ``whole_rows`` says so (rows whose answer may be undefined). Returns the
    OpReference and the uncertified count."""
    rows = fast.rounded.shape[0]
    failed = ~fast.ok.reshape(rows, -1)
    undefined = np.zeros(rows, dtype=bool)
    uncertified = 0
    for i in np.flatnonzero(failed.any(axis=1) | whole_rows).tolist():
        cols = None if whole_rows[i] else np.flatnonzero(failed[i])
        (entries,), unc = certified_rows(1, base_prec, lambda _, prec: row_fn(i, prec, cols))
        if entries is None:
            undefined[i] = True
            fast.rounded[i], fast.k[i], fast.hi[i], fast.lo[i] = math.nan, 0, math.nan, 0.0
            continue
        wanted = np.arange(failed.shape[1]) if cols is None else cols
        uncertified += min(unc, wanted.size)
        for j in wanted.tolist():
            at = (i, j) if fast.rounded.ndim == 2 else (i,)
            fast.rounded[at], fast.k[at], fast.hi[at], fast.lo[at] = entries[j]
    ref = OpReference(op=op, rounded=fast.rounded, k=fast.k.astype(np.int32), hi=fast.hi, lo=fast.lo,
                      undefined=undefined)
    return ref, uncertified


def op_reference(op: str, per_row: Sequence[Sequence[Entry] | None], shape: tuple[int, ...]) -> OpReference:
    """Assemble per-row entries (None: undefined row) into an OpReference of ``shape``."""
    width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    filler = [(math.nan, 0, math.nan, 0.0)] * width
    undefined = np.array([entries is None for entries in per_row], dtype=bool)
    flat = [e for entries in per_row for e in (filler if entries is None else entries)]
    cols = list(zip(*flat)) if flat else [(), (), (), ()]
    return OpReference(
        op=op,
        rounded=np.array(cols[0], dtype=np.float64).reshape(shape),
        k=np.array(cols[1], dtype=np.int32).reshape(shape),
        hi=np.array(cols[2], dtype=np.float64).reshape(shape),
        lo=np.array(cols[3], dtype=np.float64).reshape(shape),
        undefined=undefined,
    )


# --------------------------------------------------------------------------
# Exact value of one element, for reports


def exact_element(x_row: np.ndarray, op: str, col: int | None, digits: int = 17) -> str:
    """The exact value of one output element as a decimal string (even below float64's range).

    Used to explain findings: the stored reference only knows values that can
    influence a rounded result, this recomputes the element itself.
    """
    xs = np.asarray(x_row, dtype=np.float64)
    if np.isnan(xs).any():
        return "nan"
    if (xs == np.inf).any() or (xs == -np.inf).all():
        if op == "logsumexp":
            return "inf" if (xs == np.inf).any() else "-inf"
        return "undefined"
    _ctx.prec = 64 + 4 * digits
    a = float(xs.max())
    finite = xs[xs != -np.inf]
    uniq, counts = np.unique(finite, return_counts=True)
    k_ties = int(counts[-1])
    d = [_ctx.fsub(float(u), a, exact=True) for u in uniq[:-1]]
    # Terms below the largest one by more than the working precision (and the row
    # length) cannot change 17 digits of the sum; they are left out, none other.
    keep_from = (d[-1] - (_ctx.prec + 64) * _LN2 - math.log(xs.size)) if d else 0
    t = _ctx.fsum(_ctx.exp(di) * int(c) for di, c in zip(d, counts[:-1]) if di >= keep_from)
    big_l = _ctx.log1p(t) if k_ties == 1 else _ctx.log(k_ties + t)
    if op == "logsumexp":
        v = a + big_l
    else:
        xi = float(xs[col])
        if xi == -math.inf:
            return "0" if op == "softmax" else "-inf"
        di = _ctx.fsub(xi, a, exact=True)
        v = _ctx.exp(di) / (k_ties + t) if op == "softmax" else di - big_l
    if not v:
        return "0"
    return _ctx.nstr(v, digits, min_fixed=-4, max_fixed=8)
