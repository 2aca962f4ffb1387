"""The double-double arithmetic behind float64's fast references, checked against mpmath.

The bounds in softaudit.double_double rest on published error analyses (Joldes, Muller and
Popescu) and on our own for exp, expm1, log and log1p; here each is measured on many
arguments and must stay far inside its bound. certify_dd (fast_double_double.certify) must
round like mpmath on midpoints, powers of two, subnormals and values a hair off them, and
refuse what it cannot prove. Agreement of whole references with the mpmath engine is in
test_reference_fast.py (float64 is one of its VERIFIED_FORMATS).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from softaudit import double_double as dd
from softaudit.formats import FLOAT64, round_mpf, ulp_exponent
from softaudit.reference import backward_reference, reference_rows
from softaudit.reference import fast_double_double as rd

_ctx = mpmath.MPContext()
_ctx.prec = 300


def _mpf(h: float, l: float = 0.0) -> mpmath.mpf:
    return _ctx.fadd(float(h), float(l), exact=True)


def test_exp_is_within_a_sixteenth_of_its_bound():
    rng = np.random.default_rng(11)
    d = np.concatenate([-rng.uniform(0, 1100, 3000), -rng.exponential(1.0, 1500), rng.uniform(-1e-3, 1e-3, 500),
                        rng.uniform(0, 50, 500), [0.0, -0.0, -745.2, -1074 * np.log(2), 2.0**-60]])
    dh, dl = dd.two_sum(d, d * rng.uniform(-2.0**-54, 2.0**-54, d.size))
    m, eh, el = dd.exp(dh, dl)
    assert ((eh > 0.99) & (eh < 2.01)).all()
    worst = max(abs(_ctx.ldexp(_mpf(eh[i], el[i]), int(m[i])) / _ctx.exp(_mpf(dh[i], dl[i])) - 1)
                for i in range(d.size))
    assert worst <= dd.REL_EXP / 16, float(worst)


def test_log_and_log1p_stay_within_the_bounds_they_return():
    rng = np.random.default_rng(12)
    s = np.concatenate([1 + rng.exponential(100.0, 800), 1 + rng.uniform(0, 1e-12, 100), np.arange(1.0, 300.0),
                        [2.0**40, 262144.0]])
    sh, sl = dd.two_sum(s, s * rng.uniform(-2.0**-54, 2.0**-54, s.size))
    lh, ll, err = dd.log(sh, sl)
    for i in range(s.size):
        e = abs(_mpf(lh[i], ll[i]) - _ctx.log(_mpf(sh[i], sl[i])))
        assert e <= err[i], (s[i], float(e), err[i])
    assert (err <= 2.0**-90 * np.maximum(1.0, lh)).all()  # and the bound is tight enough to certify
    t = np.concatenate([rng.uniform(0, 2.0**-6, 500), 10.0 ** -rng.uniform(5, 300, 500), [0.0, 2.0**-6]])
    th, tl = dd.two_sum(t, t * rng.uniform(-2.0**-54, 2.0**-54, t.size))
    lh, ll, err = dd.log1p_small(th, tl)
    for i in range(t.size):
        e = abs(_mpf(lh[i], ll[i]) - _ctx.log1p(_mpf(th[i], tl[i])))
        assert e <= err[i], (t[i], float(e), err[i])
    assert (err <= 2.0**-90 * th).all()  # relative to log1p(t) ~ t: small results keep their digits


def test_products_and_quotients_are_within_u_dd():
    rng = np.random.default_rng(13)
    a = rng.standard_normal(2000) * 10.0 ** rng.integers(-100, 100, 2000)
    b = rng.standard_normal(2000) * 10.0 ** rng.integers(-100, 100, 2000)
    ah, al = dd.two_sum(a, a * rng.uniform(-2.0**-54, 2.0**-54, a.size))
    bh, bl = dd.two_sum(b, b * rng.uniform(-2.0**-54, 2.0**-54, b.size))
    ph, pl = dd.mul(ah, al, bh, bl)
    qh, ql = dd.div(ah, al, bh, bl)
    sh, sl, serr = dd.add(ah, al, -bh, -bl)
    for i in range(a.size):
        x, y = _mpf(ah[i], al[i]), _mpf(bh[i], bl[i])
        assert abs(_mpf(ph[i], pl[i]) / (x * y) - 1) <= dd.U_DD / 4
        assert abs(_mpf(qh[i], ql[i]) / (x / y) - 1) <= dd.U_DD / 4
        assert abs(_mpf(sh[i], sl[i]) - (x - y)) <= serr[i]


def _exact_entry(v: mpmath.mpf):
    k = ulp_exponent(v, FLOAT64)
    return round_mpf(v, FLOAT64), k


@pytest.mark.parametrize("scale", [0, -1000, -1070, 900])
def test_certify_rounds_like_mpmath_near_midpoints_powers_of_two_and_subnormals(scale: int):
    rng = np.random.default_rng(14 + abs(scale))
    base = np.concatenate([rng.uniform(0.5, 2.0, 300), [1.0, 0.5, 2.0, 1.5, np.nextafter(1.0, 0.0)]])
    base = np.concatenate([base, -base])
    ulp = np.spacing(np.abs(base))
    # Values of the format, midpoints, and points a hair (2^-70 ulp, 2^-20 ulp) off either side.
    offsets = [0.0, 0.5, -0.5, 0.5 + 2.0**-70, 0.5 - 2.0**-70, 2.0**-20, -2.0**-20, -2.0**-70]
    checked = proven = 0
    for off in offsets:
        lo = ulp * off
        hi, lo = dd.two_sum(base, lo)
        for err in (0.0, 2.0**-80 * np.abs(hi)):
            c = rd.certify(hi, lo, np.full(hi.shape, err) if np.ndim(err) == 0 else err, FLOAT64, scale)
            for i in np.flatnonzero(c.ok).tolist():
                v = _ctx.ldexp(_mpf(hi[i], lo[i]), scale)
                rounded, k = _exact_entry(v)
                assert c.rounded[i] == rounded or (rounded == 0 and c.rounded[i] == 0), (hi[i], lo[i], scale)
                if rounded != 0 and np.isfinite(rounded):
                    assert c.k[i] == k
                    assert abs(_mpf(c.hi[i], c.lo[i]) - _ctx.ldexp(v, -k)) <= 2.0**-40
            proven += int(c.ok.sum())
            checked += hi.size
    assert proven > checked // 2  # most: all but exact ties and intervals that hold a midpoint


def test_certify_refuses_intervals_that_straddle_a_midpoint_or_a_binade():
    one_minus = np.array([1.0])
    # 1 - 2^-80 with an error of 2^-78: the interval holds 1 (binade above) and values below it.
    c = rd.certify(one_minus, np.array([-2.0**-80]), np.array([2.0**-78]), FLOAT64)
    assert not c.ok[0]
    # A midpoint known only to 2^-70 ulp: either neighbour may be the rounding.
    h = np.array([1.0 + 2.0**-52])
    c = rd.certify(h, np.array([2.0**-53]), np.array([2.0**-122]), FLOAT64)
    assert not c.ok[0]
    # Exactly 1 with no error: proven, in 1's binade.
    c = rd.certify(np.array([1.0]), np.array([0.0]), np.array([0.0]), FLOAT64)
    assert c.ok[0] and c.rounded[0] == 1.0 and c.k[0] == -52


def test_upstreams_outside_the_safe_range_go_to_mpmath_and_agree():
    x = np.array([[0.0, -1.0, -2.0, -800.0], [3.0, 3.0, 1.0, -np.inf]])
    dy = np.array([[1e-300, 2.0, -1.0, 0.5], [1e300, -1e-290, 1.0, 2.0]])
    fast, covered = rd.backward("softmax", x, dy, FLOAT64)
    assert covered.all() and not fast.ok.any()  # both rows hold a |dy| outside [2^-900, 2^900]
    a, unc = backward_reference("softmax", x, dy, FLOAT64)
    b, _ = backward_reference("softmax", x, dy, FLOAT64, engine="mpmath")
    assert unc == 0
    assert np.array_equal(a.rounded, b.rounded) and np.array_equal(a.k, b.k)


def test_probabilities_far_below_the_underflow_threshold_are_proven():
    """exp(x - max) keeps its scale apart: a softmax of 2^-1070 is as certain as one of 0.5."""
    x = np.array([[0.0, -741.0, -700.0, -3.0]])
    ff = rd.forward(x, FLOAT64)
    assert ff.ops["softmax"].ok.all()
    exact = reference_rows(x, FLOAT64, engine="mpmath").ops["softmax"]
    assert np.array_equal(ff.ops["softmax"].rounded, exact.rounded)
    assert ff.ops["softmax"].rounded[0, 1] > 0  # a subnormal, rounded right
