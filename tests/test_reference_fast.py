"""The certified fast paths (fast_long_double for float32/float16/bfloat16, fast_double_double for
float64) against the pure mpmath engine: zero disagreements.

Every reference element the default engine stores must match the mpmath engine's:
the same correctly rounded value (a zero's sign aside: nothing judges it, and where
the exact value is a tiny number of unknown sign neither engine can tell), the same
ulp exponent, and the
same exact value to the accuracy both keep (2^-16 + 2^-30 ulp). Checked on the shipped
case library (every op, both directions; cases up to 2,048 elements by default, the
whole library under --runslow) and on hypothesis-drawn rows built to hit the traps:
halfway cases, subnormal and overflowing outputs, +-0, masks, ties, dominant maxima.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softaudit.cases.inputs import LossInputs, NotApplicable, generate, loss_inputs, upstream
from softaudit.cases.reader import load_cases
from softaudit.formats import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, FORMATS, Format, round_float64_array, round_mpf
from softaudit.reference import (
    OpReference,
    backward_reference,
    fast_path,
    loss_gradient_reference,
    loss_reference,
    reference_rows,
)
from softaudit.reference import fast_long_double as rf
from softaudit.reference.fast_double_double import DoubleDoublePath
from softaudit.reference.fast_long_double import LongDoublePath
from softaudit.reference.fast_path import REQUIRED_ULP_ACCURACY, Certified, LossCoefficients, RowLosses

FAST_FORMATS = [f for f in (FLOAT32, FLOAT16, BFLOAT16) if rf.applies(f)]
VERIFIED_FORMATS = FAST_FORMATS + [FLOAT64]
"""Every format with a fast path here: long double's, and float64's double-double (any machine)."""
needs_fast = pytest.mark.skipif(not FAST_FORMATS, reason="long double is no wider than double on this machine: "
                                                          "the fast path is off and every reference is mpmath's")
TOLERANCE = REQUIRED_ULP_ACCURACY + 2.0**-30
W = np.longdouble


def disagreements(fast: OpReference, exact: OpReference) -> list[str]:
    """Where two references of the same thing differ (empty when they agree)."""
    out = []
    if not np.array_equal(fast.undefined, exact.undefined):
        out.append("undefined rows differ")
    a_r, b_r = fast.rounded, exact.rounded
    same_value = (a_r == b_r) | (np.isnan(a_r) & np.isnan(b_r))
    same_sign = (np.signbit(a_r) == np.signbit(b_r)) | (a_r == 0)  # a zero's sign is not part of a reference
    both_zero_hi = (fast.hi == 0) & (exact.hi == 0)
    same_k = (fast.k == exact.k) | ~np.isfinite(a_r) | both_zero_hi
    finite = np.isfinite(fast.hi) & np.isfinite(exact.hi)
    close = ~finite | (np.abs((fast.hi - exact.hi) + (fast.lo - exact.lo)) <= TOLERANCE)
    same_nan = np.isnan(fast.hi) == np.isnan(exact.hi)
    bad = ~(same_value & same_sign & same_k & close & same_nan)
    for idx in np.argwhere(bad)[:5]:
        i = tuple(int(v) for v in idx)
        out.append(f"{fast.op}{list(i)}: fast {(a_r[i], int(fast.k[i]), fast.hi[i], fast.lo[i])} "
                   f"mpmath {(b_r[i], int(exact.k[i]), exact.hi[i], exact.lo[i])}")
    return out


def compare_all(x: np.ndarray, fmt: Format, dys: dict[str, np.ndarray] | None = None,
                loss: LossInputs | None = None, loss_dy: np.ndarray | None = None) -> list[str]:
    """Every reference of x (forward; the VJPs for the given upstreams; cross-entropy) both ways."""
    x64 = np.asarray(x, dtype=np.float64)
    bad: list[str] = []
    a, b = reference_rows(x64, fmt), reference_rows(x64, fmt, engine="mpmath")
    for op in a.ops:
        bad += disagreements(a.ops[op], b.ops[op])
    assert a.uncertified == 0
    for op, dy in (dys or {}).items():
        fa, ua = backward_reference(op, x64, dy, fmt)
        fb, _ = backward_reference(op, x64, dy, fmt, engine="mpmath")
        bad += disagreements(fa, fb)
        assert ua == 0
    if loss is not None:
        la, lb = loss_reference(x64, loss, fmt), loss_reference(x64, loss, fmt, engine="mpmath")
        for name in ("none", "mean", "sum"):
            bad += disagreements(getattr(la, name), getattr(lb, name))
        if loss_dy is not None:
            ga, _ = loss_gradient_reference(x64, loss, loss_dy, fmt)
            gb, _ = loss_gradient_reference(x64, loss, loss_dy, fmt, engine="mpmath")
            bad += disagreements(ga, gb)
    return bad


# --------------------------------------------------------------------------
# The assumptions the bounds rest on


_ctx = mpmath.MPContext()
_ctx.prec = 200


def _w_to_mpf(v: np.longdouble) -> mpmath.mpf:
    hi = float(v)
    return _ctx.fadd(hi, float(v - W(hi)), exact=True)


@pytest.mark.parametrize("name, fn, exact, draw", [
    ("exp", np.exp, _ctx.exp, lambda r: -r.random(3000) * 170),
    ("exp near 0", np.exp, _ctx.exp, lambda r: -r.random(3000) * 1e-4),
    ("log", np.log, _ctx.log, lambda r: 1 + r.random(3000) * 3e5),
    ("log near 1", np.log, _ctx.log, lambda r: 1 + r.random(3000) * 1e-6),
    ("log1p", np.log1p, _ctx.log1p, lambda r: r.random(3000) * 1e3),
    ("log1p tiny", np.log1p, _ctx.log1p, lambda r: r.random(3000) * 1e-9),
])
def test_long_double_libm_is_within_half_the_assumed_bound(name, fn, exact, draw):
    """The bounds assume expl/logl/log1pl err by at most LIBM_ULPS ulps; measured here with a 2x margin."""
    args = draw(np.random.default_rng(7)).astype(W)
    results = fn(args)
    worst = 0.0
    for x, y in zip(args, results):
        _, e = np.frexp(y)
        ulp = _ctx.ldexp(1, int(e) - rf.W_BITS)
        worst = max(worst, float(abs(_w_to_mpf(y) - exact(_w_to_mpf(x))) / ulp))
    assert worst <= rf.LIBM_ULPS / 2, f"{name}: {worst:.3f} ulp"


def test_each_format_has_a_fast_path_long_double_for_the_narrow_ones_double_double_for_float64():
    assert not rf.applies(FLOAT64)  # 11 bits over float64: too few for the proof
    if rf.W_BITS >= 64:
        assert FAST_FORMATS == [FLOAT32, FLOAT16, BFLOAT16]
    for fmt in FAST_FORMATS:
        assert isinstance(fast_path(fmt), LongDoublePath)
    assert isinstance(fast_path(FLOAT64), DoubleDoublePath)
    x = np.array([[0.0, -1.0, -2.5]])
    assert reference_rows(x, FLOAT64).fallback == 0  # every element proven by the double-double path
    assert reference_rows(x, FLOAT64, engine="mpmath").fallback == x.size * 2 + 1


def test_both_fast_paths_return_the_same_types_from_the_same_methods():
    loss = SimpleNamespace(target=np.array([2, 0]), target_kind="index", weight=None, label_smoothing=0.0,
                           ignore_index=None, reduction="none")
    x = np.array([[0.0, -1.0, -2.5], [1.0, 1.0, -np.inf]])
    for path, fmt in ((LongDoublePath(), FLOAT32), (DoubleDoublePath(), FLOAT64)):
        lc = path.loss_coefficients(loss, 2, 3)
        assert isinstance(lc, LossCoefficients)
        assert np.array_equal(lc.coef.astype(np.float64) + lc.coef_lo, [[0, 0, 1], [1, 0, 0]])
        rl = path.row_losses(x, lc, fmt)
        assert isinstance(rl, RowLosses) and isinstance(rl.entries, Certified)
        assert list(rl.kind) == ["finite", "finite"] and rl.entries.rounded.shape == (2,)
        g, covered = path.loss_gradient(x, lc, [Fraction(1), Fraction(1, 2)], fmt)
        assert isinstance(g, Certified) and g.rounded.shape == (2, 3) and covered.all()


@needs_fast
@pytest.mark.parametrize("fmt", FAST_FORMATS, ids=lambda f: f.name)
def test_round_to_format_is_correct_rounding(fmt: Format):
    rng = np.random.default_rng(3)
    base = round_float64_array(rng.standard_normal(4000) * 10.0 ** rng.integers(-45, 38, 4000), fmt)
    base = base.astype(np.float64)
    base = base[np.isfinite(base)]
    # Values of the format, midpoints between neighbours, and points just off them (in W).
    nxt = np.nextafter(base.astype(fmt.np_dtype), np.array(np.inf, dtype=fmt.np_dtype)).astype(np.float64)
    mids = (base.astype(W) + nxt.astype(W)) / 2
    offs = mids * (1 + W(2.0**-60))
    values = np.concatenate([base.astype(W), mids, offs, -mids, np.array([0, fmt.max_finite * 1.5], dtype=W)])
    got = rf.round_to_format(values, fmt)
    below = rf.round_to_format(values, fmt, below=True)
    for v, r, r_below in zip(values, got, below):
        m = _w_to_mpf(v)
        want = round_mpf(m, fmt) if m else float(v)  # mpmath has no -0: a zero keeps its own sign
        assert r == want and math.copysign(1, r) == math.copysign(1, want), (v, r, want)
        just_below = _ctx.fsub(m, _ctx.ldexp(abs(m) if m else 1, -200), exact=True)
        want_below = round_mpf(just_below, fmt) if m else -0.0
        assert r_below == want_below and math.copysign(1, r_below) == math.copysign(1, want_below), v


@needs_fast
def test_certify_refuses_what_it_cannot_prove():
    fmt = FAST_FORMATS[0]
    one, mid = W(1), W(1) + W(2.0 ** -fmt.p)  # 1 + half an ulp: a midpoint
    c = rf.certify(np.array([mid, mid, one, W(0)]), np.array([2.0**-70, 0.0, 2.0**-70, 1e-300]), fmt)
    assert not c.ok[0]  # the interval holds the midpoint
    assert c.ok[1] and c.rounded[1] == 1.0  # exactly the midpoint: ties to even
    assert not c.ok[2]  # 1 - 2^-70 is in the binade below 1: ulp(exact) unknown
    assert c.ok[3] and c.rounded[3] == 0  # +0 or -0: a zero's sign is not part of a reference
    far = rf.certify(np.array([W(1.25)]), np.array([2.0 ** (-fmt.p - 10)]), fmt)
    assert far.rounded[0] == 1.25 and not far.ok[0]  # rounds the same, but 2^-10 ulp is too coarse
    fine = rf.certify(np.array([W(1.25)]), np.array([2.0 ** (-fmt.p - 20)]), fmt)
    assert fine.ok[0]


def test_compensated_pairwise_sum_stays_within_its_bound():
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 17, 1000, 4097):
        terms = (rng.standard_normal((3, n)) * 10.0 ** rng.integers(-8, 8, (3, n))).astype(W)
        total = rf.pairwise_sum(terms)
        for row, got in zip(terms, total):
            exact = sum((Fraction(float(t)) + Fraction(float(t - W(float(t)))) for t in row), Fraction(0))
            got_exact = Fraction(float(got)) + Fraction(float(got - W(float(got))))
            bound = rf.sum_error(abs(float(got)), float(np.abs(row).sum()) * 1.001, n)
            assert abs(got_exact - exact) <= Fraction(bound) * 1.001


@needs_fast
def test_a_dominant_maximum_keeps_its_binade():
    """softmax at a single maximum is 1 - t/s: just below 1, so ulp(exact) is that of [0.5, 1)."""
    for fmt in FAST_FORMATS:
        x = np.array([[0.0, -60.0, -70.0], [0.0, -300.0, -np.inf], [0.0, 0.0, -200.0]])
        x = round_float64_array(x, fmt).astype(np.float64)
        fast, exact = reference_rows(x, fmt), reference_rows(x, fmt, engine="mpmath")
        sm = fast.ops["softmax"]
        assert sm.rounded[0, 0] == 1.0 and sm.k[0, 0] == -fmt.p  # binade [0.5, 1)
        assert sm.rounded[2, 0] == 0.5 and sm.k[2, 0] == -fmt.p - 1  # two maxima: just below 1/2
        assert disagreements(sm, exact.ops["softmax"]) == []


# --------------------------------------------------------------------------
# The shipped case library


def _library_units(max_elements: int | None):
    for case in load_cases():
        for fmt in VERIFIED_FORMATS:
            try:
                x = generate(case, fmt, seed=0)
            except NotApplicable:
                continue
            if max_elements is None or x.size <= max_elements:
                yield case, fmt, x


def _check_unit(case, fmt, x) -> list[str]:
    dys = {}
    if "backward" in case.directions:
        for op in ("softmax", "log_softmax", "logsumexp"):
            if case.applies_to(op, fmt.name):
                shape = (x.shape[0],) if op == "logsumexp" else x.shape
                dys[op] = upstream(case, fmt, shape, seed=0).astype(np.float64)
    loss = loss_dy = None
    if case.applies_to("cross_entropy", fmt.name):
        try:
            loss = loss_inputs(case, fmt, x, seed=0)
        except NotApplicable:
            loss = None
        if loss is not None and "backward" in case.directions:
            shape = (x.shape[0],) if loss.reduction == "none" else ()
            loss_dy = upstream(case, fmt, shape, seed=0).astype(np.float64)
    return [f"{case.name} {fmt.name}: {d}" for d in compare_all(x, fmt, dys, loss, loss_dy)]


@pytest.mark.parametrize("fmt", VERIFIED_FORMATS, ids=lambda f: f.name)
def test_fast_path_agrees_with_mpmath_on_the_shipped_cases_up_to_2048_elements(fmt: Format):
    bad: list[str] = []
    checked = 0
    for case, f, x in _library_units(2048):
        if f is fmt:
            bad += _check_unit(case, f, x)
            checked += 1
    assert checked > 80  # (most of the library: 99 float32 and 99 float64 cases today)
    assert bad == []


@pytest.mark.slow
def test_fast_path_agrees_with_mpmath_on_the_whole_case_library():
    bad: list[str] = []
    for case, fmt, x in _library_units(None):
        if x.size > 2048:
            bad += _check_unit(case, fmt, x)
    assert bad == []


# --------------------------------------------------------------------------
# Property tests: rows built to hit the traps


@st.composite
def rows_of(draw, fmt: Format):
    """(rows, n) values of ``fmt``: clusters around an offset, gaps, halves (midpoint differences),
    subnormals, +-0, -inf masks, whole masked or NaN rows, ties."""
    n = draw(st.integers(1, 12))
    rows = draw(st.integers(1, 3))
    offset = draw(st.sampled_from([0.0, 1.0, -3.5, 60.0, 1e3, -1e4, 6e4, 1e30]))
    spread = draw(st.sampled_from([0.0, 2.0**-20, 1e-3, 0.5, 3.0, 40.0, 120.0, 700.0]))
    units = draw(st.lists(st.integers(-64, 64), min_size=rows * n, max_size=rows * n))
    x = offset + spread * np.array(units, dtype=np.float64).reshape(rows, n) / 16
    specials = draw(st.lists(st.sampled_from(["none", "mask", "tiny", "zero", "negzero", "max"]),
                             min_size=rows * n, max_size=rows * n))
    flat = x.reshape(-1)
    for i, kind in enumerate(specials):
        if kind == "mask":
            flat[i] = -np.inf
        elif kind == "tiny":
            flat[i] = fmt.smallest_subnormal * 3
        elif kind == "zero":
            flat[i] = 0.0
        elif kind == "negzero":
            flat[i] = -0.0
        elif kind == "max":
            flat[i] = fmt.max_finite
    row_kind = draw(st.sampled_from(["plain", "plain", "plain", "masked", "nan"]))
    if row_kind == "masked":
        x[0] = -np.inf
    elif row_kind == "nan":
        x[-1, 0] = np.nan
    return round_float64_array(x, fmt).astype(np.float64)


def _dy(draw, fmt: Format, shape) -> np.ndarray:
    kind = draw(st.sampled_from(["ones", "normal", "powers", "zeros"]))
    if kind == "ones" or shape == ():
        return np.ones(shape)
    if kind == "zeros":
        return np.zeros(shape)
    seed = draw(st.integers(0, 2**16))
    v = np.random.default_rng(seed).standard_normal(shape)
    if kind == "powers":
        v = np.sign(v) * 2.0 ** np.round(np.log2(np.abs(v) + 1e-3))
    return round_float64_array(v, fmt).astype(np.float64)


@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_agrees_with_mpmath_on_drawn_rows(data):
    fmt = data.draw(st.sampled_from(VERIFIED_FORMATS))
    x = data.draw(rows_of(fmt))
    dys = {op: _dy(data.draw, fmt, (x.shape[0],) if op == "logsumexp" else x.shape)
           for op in ("softmax", "log_softmax", "logsumexp")}
    rows, n = x.shape
    kind = data.draw(st.sampled_from(["index", "probability"]))
    eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    weight = None if data.draw(st.booleans()) else round_float64_array(
        np.linspace(0.0, 3.0, n), fmt).astype(fmt.np_dtype)
    if kind == "index":
        target = np.array(data.draw(st.lists(st.integers(-1, n - 1), min_size=rows, max_size=rows)), dtype=np.int64)
    else:
        q = np.random.default_rng(data.draw(st.integers(0, 999))).random((rows, n))
        target = round_float64_array(q / q.sum(axis=1, keepdims=True), fmt).astype(fmt.np_dtype)
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    loss = LossInputs(target=target, target_kind=kind, weight=weight, label_smoothing=eps,
                      ignore_index=-1 if kind == "index" else None, reduction=reduction, out_of_range=False)
    loss_dy = _dy(data.draw, fmt, (rows,) if reduction == "none" else ())
    assert compare_all(x, fmt, dys, loss, loss_dy) == []


def test_the_engine_is_named_and_checked():
    with pytest.raises(ValueError, match="unknown reference engine"):
        reference_rows(np.zeros((1, 2)), FORMATS["float32"], engine="fast")


@needs_fast
@pytest.mark.parametrize("fmt", [f for f in FAST_FORMATS if f.p <= 11], ids=lambda f: f.name)
def test_long_16_bit_rows_computed_per_distinct_value_agree_with_mpmath(fmt: Format):
    """Rows of rf.GROUP_MIN_N entries or more take the grouped route (each distinct value once)."""
    rng = np.random.default_rng(5)
    n = rf.GROUP_MIN_N * 2
    x = rng.standard_normal((4, n)) * np.array([[3.0], [0.01], [30.0], [3.0]])
    x[1, 7] = 40.0  # a dominant maximum
    x[2, rng.random(n) < 0.5] = -np.inf  # half masked
    x[3] = np.round(x[3])  # few distinct values, many ties at the max
    x = round_float64_array(x, fmt).astype(np.float64)
    assert compare_all(x, fmt) == []
