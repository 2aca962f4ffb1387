"""The fused linear cross-entropy's references (softaudit.reference.linear_loss): error-free logits,
closed forms checked by hand, midpoints and subnormal results, and the fast path against the pure
mpmath engine (0 disagreements) on hypothesis-drawn inputs built to hit the traps."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_reference_fast import disagreements as fast_path_disagreements

from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.formats import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    FLOAT64,
    FORMATS,
    Format,
    exact_dot,
    round_float64_array,
    round_mpf,
)
from softaudit.reference.exact import OpReference
from softaudit.reference.exact_dot import fit, product, split_rows
from softaudit.reference.linear_loss import (
    exact_logits,
    exact_logits_bound,
    linear_loss_gradient_reference,
    linear_loss_reference,
    linear_statistics,
)

ALL = list(FORMATS.values())


def disagreements(fast: OpReference | None, exact: OpReference | None) -> list[str]:
    """Where two references of the same thing differ (empty when they agree): those of the
    softmax family's fast path (test_reference_fast), or a missing one."""
    if fast is None or exact is None:
        return [] if fast is exact else ["one reference is missing"]
    return fast_path_disagreements(fast, exact)


def compare(inp: LinearLossInputs, fmt: Format, dy: np.ndarray) -> list[str]:
    """Every disagreement between the default engine and pure mpmath, forward and backward."""
    out = []
    fast, slow = linear_loss_reference(inp, fmt), linear_loss_reference(inp, fmt, engine="mpmath")
    for name in ("none", "mean", "sum"):
        out += [f"loss {name} {m}" for m in disagreements(getattr(fast, name), getattr(slow, name))]
    assert fast.uncertified == slow.uncertified == 0
    gf = linear_loss_gradient_reference(inp, dy, fmt)
    gs = linear_loss_gradient_reference(inp, dy, fmt, engine="mpmath")
    for name in ("hidden", "weight", "bias"):
        out += [f"d_{name} {m}" for m in disagreements(getattr(gf, name), getattr(gs, name))]
    assert gf.uncertified == gs.uncertified == 0
    return out


def inputs(fmt: Format, h, w, b=None, target=(0,), **kw) -> LinearLossInputs:
    """A case from nested lists (values must be exact in fmt)."""
    def arr(x):
        a = np.asarray(x, dtype=np.float64)
        r = round_float64_array(a, fmt)
        assert np.array_equal(r.astype(np.float64), a), "test values must be exact in the format"
        return r
    return LinearLossInputs(arr(h), arr(w), None if b is None else arr(b), np.asarray(target, dtype=np.int64), **kw)


def rounded(v: mpmath.mpf, fmt: Format) -> float:
    return round_mpf(v, fmt)


# --------------------------------------------------------------------------
# Error-free logits


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_logits_are_the_exact_dot_products(fmt: Format):
    rng = np.random.default_rng(5)
    scale = np.exp(rng.uniform(-6, 6, (7, 33)))
    h = round_float64_array(rng.standard_normal((3, 33)), fmt)
    w = round_float64_array(rng.standard_normal((7, 33)) * scale, fmt)
    b = round_float64_array(rng.standard_normal(7), fmt)
    inp = LinearLossInputs(h, w, b, np.zeros(3, dtype=np.int64))
    hi, lo, err = exact_logits_bound(inp)
    assert np.array_equal((hi, lo), exact_logits(inp))
    for i in range(3):
        for c in range(7):
            z = exact_dot(h[i].astype(np.float64), w[c].astype(np.float64)) + Fraction(float(b[c]))
            got = Fraction(float(hi[i, c])) + Fraction(float(lo[i, c]))
            assert abs(got - z) <= Fraction(float(err[i, c]))
            if fmt is not FLOAT64:
                assert err[i, c] == 0 and got == z  # narrow formats: exact, not merely bounded
            assert abs(float(lo[i, c])) <= math.ulp(float(hi[i, c])) / 2


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_the_mpmath_engines_integer_logits_are_the_exact_dot_products(chunked, monkeypatch):
    """The referee's logits (Python integers, no float splitting) on subnormal, huge, negative and
    zero factors, with a bias: equal to Fraction sums of exact products, whether the weight is
    converted whole or two rows at a time, and every token at once or one by one."""
    from softaudit.reference import linear_exact
    from softaudit.reference.linear_exact import ExactLogits, as_integers

    if chunked:
        monkeypatch.setattr(linear_exact, "EXACT_LOGITS_CHUNK", 2 * 17)
        monkeypatch.setattr(linear_exact, "EXACT_LOGITS_AT_ONCE", 1)

    rng = np.random.default_rng(8)
    h = rng.standard_normal((3, 17)) * np.exp(rng.uniform(-700, 700, (3, 17)))
    w = rng.standard_normal((5, 17)) * np.exp(rng.uniform(-700, 700, (5, 17)))
    h[0, :4] = [5e-324, -2.0**-1070, 0.0, -0.0]
    w[1, :] = 0.0
    b = rng.standard_normal(5)
    m, e = as_integers(h)
    assert all(Fraction(int(m[i, j])) * Fraction(2) ** e == Fraction(float(h[i, j]))
               for i in range(3) for j in range(17))
    exact = ExactLogits(LinearLossInputs(h, w, b, np.zeros(3, dtype=np.int64)))
    for i in range(3):
        want = [sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(h[i], w[c])), Fraction(0))
                + Fraction(float(b[c])) for c in range(5)]
        assert exact.row(i) == want
    with pytest.raises(ValueError, match="finite"):
        as_integers(np.array([1.0, np.inf]))


def test_float64_logits_are_bounded_where_106_bits_cannot_hold_them():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((2, 50)) * np.exp(rng.uniform(-40, 40, (2, 50)))
    w = rng.standard_normal((3, 50)) * np.exp(rng.uniform(-40, 40, (3, 50)))
    hi, lo, err = exact_logits_bound(LinearLossInputs(h, w, None, np.zeros(2, dtype=np.int64)))
    for i in range(2):
        for c in range(3):
            z = exact_dot(h[i], w[c])
            assert abs(Fraction(float(hi[i, c])) + Fraction(float(lo[i, c])) - z) <= Fraction(float(err[i, c]))
            assert err[i, c] <= 2.0**-95 * abs(float(z))


def test_slice_products_are_exact_whatever_the_order_blas_sums_in():
    # Reversing the contraction order changes every float64 rounding of a plain matmul, not these.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 300)) * np.exp(rng.uniform(-10, 10, (4, 300)))
    b = rng.standard_normal((5, 300))
    wa, bs = fit(b, 300)
    p1 = product(split_rows([a], 300, bits=wa), bs, 300)
    wa2, bs2 = fit(b[:, ::-1].copy(), 300)
    p2 = product(split_rows([a[:, ::-1].copy()], 300, bits=wa2), bs2, 300)
    assert np.array_equal(p1.unscaled()[0], p2.unscaled()[0])
    assert np.array_equal(p1.unscaled()[1], p2.unscaled()[1])


def test_a_truncated_split_is_bounded_not_zero():
    # Entries far below their row's maximum are left over: the bound must cover them, never be 0.
    a = np.array([[1.0, 2.0**-700, 3.0 * 2.0**-1070]])
    b = np.array([[1.0, 1.0, 1.0]])
    p = product(split_rows([a], 3, stop=60), split_rows([b], 3), 3)
    hi, lo, err, _ = p.unscaled()
    assert hi[0, 0] == 1.0 and err[0, 0] > 0
    assert err[0, 0] >= 2.0**-700 + 3.0 * 2.0**-1070


# --------------------------------------------------------------------------
# Closed forms


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_two_classes_of_equal_logits(fmt: Format):
    # D = 1, V = 2, z = (0, 0): loss log 2; p = 1/2, G = (-1/2, 1/2) exactly.
    inp = inputs(fmt, [[1.0]], [[0.0], [0.0]], b=[0.0, 0.0], target=[0], reduction="sum")
    ref = linear_loss_reference(inp, fmt)
    assert ref.sum.rounded[0] == rounded(mpmath.log(2), fmt) == ref.none.rounded[0] == ref.mean.rounded[0]
    g = linear_loss_gradient_reference(inp, np.array(1.0), fmt)
    assert g.hidden.rounded.tolist() == [[0.0]]
    assert g.weight.rounded.tolist() == [[-0.5], [0.5]]
    assert g.bias is not None and g.bias.rounded.tolist() == [-0.5, 0.5]
    assert g.uncertified == 0


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_softplus_closed_form(fmt: Format):
    # D = 1, V = 2, h = 3/2, w = (1, -1/2): z = (3/2, -3/4); loss = log(1 + e^(-9/4)); G = (p0 - 1, p1).
    inp = inputs(fmt, [[1.5]], [[1.0], [-0.5]], target=[0], reduction="mean")
    mpmath.mp.prec = 200
    q = mpmath.exp(mpmath.mpf(-9) / 4)
    loss = mpmath.log1p(q)
    g0, g1 = -q / (1 + q), q / (1 + q)
    assert linear_loss_reference(inp, fmt).mean.rounded[0] == rounded(loss, fmt)
    g = linear_loss_gradient_reference(inp, np.array(1.0), fmt)
    assert g.hidden.rounded[0, 0] == rounded(g0 * 1 + g1 * mpmath.mpf(-0.5), fmt)
    assert g.weight.rounded[:, 0].tolist() == [rounded(g0 * 1.5, fmt), rounded(g1 * 1.5, fmt)]
    assert g.bias is None


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_options_closed_form(fmt: Format):
    # z = (1, 0), target 1, smoothing 1/4, z-loss 1/8, softcap 2: z' = (2 tanh(1/2), 0).
    inp = inputs(fmt, [[1.0]], [[1.0], [0.0]], target=[1], label_smoothing=0.25, z_loss=0.125, softcap=2.0,
                 reduction="none")
    mpmath.mp.prec = 200
    y0 = 2 * mpmath.tanh(mpmath.mpf(1) / 2)
    lse = mpmath.log(mpmath.exp(y0) + 1)
    loss = 0.75 * (lse - 0) + 0.125 * ((lse - y0) + lse) + 0.125 * lse**2
    assert linear_loss_reference(inp, fmt).none.rounded[0] == rounded(loss, fmt)
    p0 = mpmath.exp(y0 - lse)
    b = 1 + 2 * 0.125 * lse
    gz0 = (b * p0 - 0.125) * (1 - mpmath.tanh(mpmath.mpf(1) / 2) ** 2)  # through the softcap
    gz1 = b * (1 - p0) - (0.75 + 0.125)  # z' = z = 0: derivative 1
    dy = round_float64_array(np.array([3.0]), fmt)
    g = linear_loss_gradient_reference(inp, dy, fmt)
    assert g.weight.rounded[:, 0].tolist() == [rounded(3 * gz0, fmt), rounded(3 * gz1, fmt)]
    assert g.hidden.rounded[0, 0] == rounded(3 * gz0, fmt)


def test_ignored_tokens_and_the_reductions():
    fmt = FLOAT32
    inp = inputs(fmt, [[1.0], [2.0]], [[1.0], [0.0]], target=[0, -100], reduction="mean")
    ref = linear_loss_reference(inp, fmt)
    mpmath.mp.prec = 200
    one = mpmath.log1p(mpmath.exp(-1))
    assert ref.none.rounded.tolist() == [rounded(one, fmt), 0.0]
    assert ref.mean.rounded[0] == ref.sum.rounded[0] == rounded(one, fmt)  # the mean's N is 1
    g = linear_loss_gradient_reference(inp, np.array(1.0), fmt)
    assert g.hidden.rounded[1, 0] == 0.0
    every = inputs(fmt, [[1.0]], [[1.0], [0.0]], target=[-100], reduction="mean")
    assert linear_loss_reference(every, fmt).mean.undefined.all()
    assert linear_loss_gradient_reference(every, np.array(1.0), fmt).weight.undefined.all()
    bad = inputs(fmt, [[1.0]], [[1.0], [0.0]], target=[7], reduction="sum")
    assert np.isnan(linear_loss_reference(bad, fmt).sum.rounded[0])


# --------------------------------------------------------------------------
# Midpoints and subnormal results


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_gradients_exactly_on_a_midpoint_round_to_even(fmt: Format):
    # Equal logits: G = (-1/2, 1/2). h = 3 ulp(0): d_weight = -+3/2 ulp(0), halfway between 1 and 2
    # smallest subnormals (even: 2); h = 1 ulp(0): 1/2 ulp(0), halfway between 0 and 1 (even: 0).
    tiny = fmt.smallest_subnormal
    for mult, expect in ((3, 2), (1, 0)):
        inp = inputs(fmt, [[mult * tiny]], [[0.0], [0.0]], target=[0], reduction="sum")
        for engine in ("auto", "mpmath"):
            g = linear_loss_gradient_reference(inp, np.array(1.0), fmt, engine)
            assert g.weight.rounded[:, 0].tolist() == [-expect * tiny, expect * tiny], (mult, engine)
            assert g.uncertified == 0


@pytest.mark.parametrize("fmt,gap", [(BFLOAT16, 90.0), (FLOAT32, 100.0), (FLOAT16, 12.0), (FLOAT64, 710.0)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_a_confident_tokens_subnormal_loss(fmt: Format, gap: float):
    # loss = log1p(e^-gap): below the format's smallest normal, and never rounded to 0 by a bound.
    inp = inputs(fmt, [[1.0]], [[gap], [0.0]], target=[0], reduction="none")
    mpmath.mp.prec = 300
    exact = mpmath.log1p(mpmath.exp(-gap))
    assert exact < 2.0**fmt.emin
    for engine in ("auto", "mpmath"):
        ref = linear_loss_reference(inp, fmt, engine)
        assert ref.none.rounded[0] == rounded(exact, fmt) > 0
    assert compare(inp, fmt, np.ones(1)) == []


def test_a_constant_weight_column_gives_an_exact_zero_hidden_gradient():
    # sum_c G_c = 0 exactly (no z-loss, no softcap): d_hidden = w sum_c G_c = 0, which no interval
    # proves; the engines prove it exactly.
    fmt = FLOAT32
    inp = inputs(fmt, [[0.5, 1.0]], [[0.25, 2.0], [-1.0, 2.0], [3.0, 2.0]], target=[2], reduction="sum")
    for engine in ("auto", "mpmath"):
        g = linear_loss_gradient_reference(inp, np.array(1.0), fmt, engine)
        assert g.hidden.rounded[0, 1] == 0.0 and g.hidden.hi[0, 1] == 0.0
        assert g.uncertified == 0


# --------------------------------------------------------------------------
# Fast path against mpmath


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from(ALL))
    t, d, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    scale_h = draw(st.sampled_from([1.0, 2.0**-12, 8.0, 2.0**20]))
    scale_w = draw(st.sampled_from([1.0, 1 / 3, 30.0, 2.0**-20]))

    def values(shape, scale):
        units = draw(st.lists(st.integers(-24, 24), min_size=math.prod(shape), max_size=math.prod(shape)))
        x = np.clip(np.array(units, dtype=np.float64).reshape(shape) * scale / 8, -fmt.max_finite, fmt.max_finite)
        kinds = draw(st.lists(st.sampled_from(["none", "none", "none", "zero", "tiny", "big", "pow2"]),
                              min_size=x.size, max_size=x.size))
        flat = x.reshape(-1)
        for i, kind in enumerate(kinds):
            if kind == "zero":
                flat[i] = 0.0
            elif kind == "tiny":
                flat[i] = fmt.smallest_subnormal * 3
            elif kind == "big":
                flat[i] = min(fmt.max_finite, 2.0**12) / 8
            elif kind == "pow2":
                flat[i] = 2.0 ** draw(st.integers(-8, 8))
        return round_float64_array(x, fmt)

    h, w = values((t, d), scale_h), values((v, d), scale_w)
    if draw(st.booleans()):  # a confident token: its target's weight row is its hidden row, scaled up
        c = draw(st.integers(0, v - 1))
        big = h[0].astype(np.float64) * draw(st.sampled_from([4.0, 64.0]))
        w[c] = round_float64_array(np.clip(big, -fmt.max_finite, fmt.max_finite), fmt)
    b = values((v,), scale_w) if draw(st.booleans()) else None
    target = np.array(draw(st.lists(st.sampled_from(list(range(v)) + [-100]), min_size=t, max_size=t)),
                      dtype=np.int64)
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    inp = LinearLossInputs(h, w, b, target, ignore_index=-100, reduction=reduction,
                           label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 0.25])),
                           z_loss=draw(st.sampled_from([0.0, 0.0, 1e-4, 0.5])),
                           softcap=draw(st.sampled_from([None, None, 1.0, 30.0])))
    if inp.softcap is not None:
        # Beyond |z/s| ~ 5,700 tanh is within 2^-16384 of +-1, past Ziv's cap (docs/references.md).
        assume(np.abs(exact_logits(inp)[0]).max(initial=0.0) <= 2000 * inp.softcap)
    kind = draw(st.sampled_from(["ones", "normal", "powers", "zeros"]))
    shape = (t,) if reduction == "none" else ()
    if kind == "ones" or shape == ():
        dy = np.ones(shape)
    elif kind == "zeros":
        dy = np.zeros(shape)
    else:
        r = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)
        dy = np.sign(r) * 2.0 ** np.round(np.log2(np.abs(r) + 1e-3)) if kind == "powers" else r
    return fmt, inp, round_float64_array(np.asarray(dy, dtype=np.float64), fmt).astype(np.float64)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_fast_path_agrees_with_mpmath_on_drawn_inputs(case):
    fmt, inp, dy = case
    assert compare(inp, fmt, dy) == []


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_fast_path_agrees_with_mpmath_on_many_drawn_inputs(case):
    fmt, inp, dy = case
    assert compare(inp, fmt, dy) == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_fast_path_agrees_with_mpmath_at_a_realistic_shape(fmt: Format):
    rng = np.random.default_rng(11)
    t, d, v = 4, 16, 300
    h = round_float64_array(rng.standard_normal((t, d)), fmt)
    w = round_float64_array(rng.standard_normal((v, d)) * 0.75, fmt)
    inp = LinearLossInputs(h, w, round_float64_array(rng.standard_normal(v), fmt), np.array([0, 5, -100, 299]),
                           label_smoothing=0.1, z_loss=1e-4, reduction="sum")
    assert compare(inp, fmt, np.ones(())) == []


def test_statistics_for_the_envelope():
    fmt = FLOAT32
    inp = inputs(fmt, [[1.0, -2.0]], [[1.0, 0.5], [0.0, 0.0]], target=[0], softcap=30.0)
    st_ = linear_statistics(inp)
    assert st_.logits.shape == st_.p.shape == st_.abs_dot.shape == (1, 2)
    assert st_.abs_dot.tolist() == [[2.0, 0.0]]
    assert np.isclose(st_.p.sum(), 1.0) and np.isclose(st_.lse[0], np.log(np.exp(st_.logits[0]).sum()))


def test_the_engine_is_named_and_the_inputs_checked():
    inp = inputs(FLOAT32, [[1.0]], [[1.0]], target=[0])
    with pytest.raises(ValueError, match="unknown reference engine"):
        linear_loss_reference(inp, FLOAT32, engine="fast")
    bad = LinearLossInputs(np.array([[np.inf]]), np.array([[1.0]]), None, np.array([0]))
    with pytest.raises(ValueError, match="finite"):
        linear_loss_reference(bad, FLOAT64)


# --------------------------------------------------------------------------
# benchmarks/linear_reference_check.py's comparison


def _reference_check():  # type: ignore[no-untyped-def]
    """benchmarks/linear_reference_check.py as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "linear_reference_check"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_the_shipped_case_check_agrees_on_a_small_shipped_like_case(fmt: Format):
    # A shipped case in miniature (confident tokens, a padded token, smoothing, bias, reduction
    # none with a normal upstream): every element of every tensor, fast path against pure mpmath.
    check = _reference_check()
    rng = np.random.default_rng(3)
    t, d, v = 6, 8, 40
    h = round_float64_array(rng.standard_normal((t, d)), fmt)
    w = round_float64_array(rng.standard_normal((v, d)) * 3 / math.sqrt(d), fmt)
    target = rng.integers(0, v, t)
    target[-1] = -100
    h[0] = round_float64_array(20.0 * w[target[0]].astype(np.float64) / np.sum(w[target[0]].astype(np.float64) ** 2),
                               fmt)
    inp = LinearLossInputs(h, w, round_float64_array(rng.standard_normal(v) / 2, fmt), target, reduction="none",
                           label_smoothing=0.1)
    dy = round_float64_array(rng.standard_normal(t), fmt).astype(np.float64)
    assert check.full_size(inp)
    tally = check.compare_case(inp, fmt, dy, None)
    assert tally.compared == {"loss": t, "mean/sum": 2, "d_hidden": t * d, "d_weight": v * d, "d_bias": v}
    assert tally.bad == [] and tally.uncertified == 0
    sample = check.compare_case(inp, fmt, dy, check.DEFAULT)
    assert sample.bad == [] and 0 < sum(sample.compared.values()) < sum(tally.compared.values())


def test_the_shipped_case_check_sees_a_wrong_entry():
    check = _reference_check()
    one = (0.25, -25, 2.0**23, 0.0)
    assert check.same(one, one) and check.same(None, None) and check.same((0.0, 1, 0.0, 0.0), (-0.0, 2, 0.0, 0.0))
    assert not check.same(one, (float(np.nextafter(0.25, 1.0)), -25, 2.0**23 + 1, 0.0))
    assert not check.same(one, None) and not check.same((math.nan, 0, math.nan, 0.0), one)
    assert not check.same(one, (0.25, -24, 2.0**22, 0.0))


def test_mpmath_elements_match_the_whole_mpmath_reference():
    # The element API computes what engine="mpmath" computes in full, element by element.
    from softaudit.reference.linear_loss import MpmathElements

    fmt = FLOAT32
    inp = inputs(fmt, [[0.5, 1.0], [1.5, -1.0]], [[0.25, 2.0], [-1.0, 2.0], [3.0, 0.5]], b=[0.0, 0.5, -0.25],
                 target=[2, 0], reduction="sum", z_loss=1e-4, softcap=30.0)
    full = linear_loss_gradient_reference(inp, np.ones(()), fmt, engine="mpmath")
    loss = linear_loss_reference(inp, fmt, engine="mpmath")
    el = MpmathElements(inp, fmt, np.ones(()))
    assert el.loss(1)[0][0] == loss.none.rounded[1] and el.loss_reduced("sum")[0][0] == loss.sum.rounded[0]
    assert el.d_hidden(1, 0)[0][0] == full.hidden.rounded[1, 0]
    assert el.d_weight(2, 1)[0][0] == full.weight.rounded[2, 1]
    assert full.bias is not None and el.d_bias(1)[0][0] == full.bias.rounded[1]
