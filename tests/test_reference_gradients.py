"""Gradient and cross-entropy references against a brute-force mpmath evaluation at 1500 bits.

The brute force uses the textbook formulas element by element with no cuts, no grouping and no
error bounds; every reference element must be its correct rounding. Inputs cover masks, ties,
constant rows (exact zeros), label smoothing, weights, ignored rows and probability targets.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest

from softaudit.formats import FORMATS, exact_sum, round_float64_array, round_mpf, ulp_exponent
from softaudit.reference import backward_reference, loss_gradient_reference, loss_reference

_mp = mpmath.MPContext()
_mp.prec = 1500


def _rows(x: np.ndarray):
    for xr in x:
        xs = [_mp.mpf(float(v)) if v != -np.inf else None for v in xr]
        a = max(v for v in xs if v is not None)
        e = [_mp.exp(v - a) if v is not None else _mp.zero for v in xs]
        s = _mp.fsum(e)
        yield xs, a, s, [ei / s for ei in e]


def _brute_vjp(op: str, x: np.ndarray, dy: np.ndarray) -> list[list]:
    out = []
    for r, (_, _, _, p) in enumerate(_rows(x)):
        if op == "softmax":
            c = _mp.fsum(pi * _mp.mpf(float(d)) for pi, d in zip(p, dy[r]))
            out.append([pi * (_mp.mpf(float(d)) - c) for pi, d in zip(p, dy[r])])
        elif op == "log_softmax":
            total = _mp.fsum(_mp.mpf(float(d)) for d in dy[r])
            out.append([_mp.mpf(float(d)) - pi * total for pi, d in zip(p, dy[r])])
        else:
            out.append([_mp.mpf(float(dy[r])) * pi for pi in p])
    return out


def _inputs(fmt_name: str, kind: str, rng: np.random.Generator) -> np.ndarray:
    fmt = FORMATS[fmt_name]
    rows, n = 3, int(rng.integers(2, 24))
    x = rng.normal(size=(rows, n)) * 8
    if kind == "constant":
        x[:] = 1.5
    elif kind == "masked":
        x[:, ::3] = -np.inf
        x[:, 1] = 2.0
    elif kind == "ties":
        x = np.round(x)
    return round_float64_array(x, fmt).astype(np.float64)


def _snap_to_midpoint(v, fmt):
    """``v`` moved onto the rounding midpoint it lies within 2^-1400 of, if any.

    The brute force cannot tell an exact tie from a value 2^-1500 away; exact ties are real here,
    because a constant row's gradient is rational ((dy_i - mean(dy)) / n can be dyadic), and the
    reference rounds them half-to-even. Genuinely irrational values never come this close.
    """
    if not _mp.isfinite(v) or not v:
        return v
    ulp = _mp.ldexp(1, ulp_exponent(v, fmt))
    mid = (_mp.floor(v / ulp) + _mp.mpf(0.5)) * ulp
    return mid if abs(v - mid) <= abs(v) * _mp.ldexp(1, -1400) else v


def _seed(*key: str) -> int:
    """A seed from the test's parameters that is the same in every process (hash() is salted)."""
    return zlib.crc32("/".join(key).encode())


def _same(want, got: float, fmt) -> bool:
    w = round_mpf(_snap_to_midpoint(want, fmt), fmt)
    return w == got or (math.isnan(w) and math.isnan(got))


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("kind", ["normal", "constant", "masked", "ties"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_vjp_references_are_correctly_rounded(fmt_name, kind, op):
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(_seed(fmt_name, kind, op))
    x = _inputs(fmt_name, kind, rng)
    shape = (x.shape[0],) if op == "logsumexp" else x.shape
    dy = round_float64_array(rng.normal(size=shape), fmt).astype(np.float64)
    ref, uncertified = backward_reference(op, x, dy, fmt)
    brute = _brute_vjp(op, x, dy)
    assert uncertified == 0
    bad = [(r, c) for r in range(x.shape[0]) for c in range(x.shape[1])
           if not _same(brute[r][c], ref.rounded[r, c], fmt)]
    assert not bad


def test_exact_zero_gradients_are_stored_as_zero():
    """softmax's VJP with a constant upstream is exactly 0: no precision could certify it numerically."""
    fmt = FORMATS["float32"]
    x = round_float64_array(np.random.default_rng(0).normal(size=(2, 50)), fmt).astype(np.float64)
    ref, uncertified = backward_reference("softmax", x, np.full(x.shape, 0.75), fmt)
    assert uncertified == 0
    assert np.all(ref.rounded == 0) and np.all(ref.hi == 0)
    # log_softmax's VJP on a constant row: dy_i - sum(dy)/n, exact rational, zero where dy_i is the mean.
    dy = np.array([[1.0, 2.0, 3.0, 2.0]])
    ref, _ = backward_reference("log_softmax", np.zeros((1, 4)), dy, fmt)
    assert ref.rounded.tolist() == [[-1.0, 0.0, 1.0, 0.0]]


def test_undefined_and_nan_rows():
    fmt = FORMATS["float32"]
    x = np.array([[-np.inf, -np.inf], [np.nan, 1.0], [np.inf, 0.0]])
    ref, _ = backward_reference("softmax", x, np.ones((3, 2)), fmt)
    assert ref.undefined.tolist() == [True, False, True]
    assert np.isnan(ref.rounded[1]).all()


def test_exact_sum_is_exact():
    rng = np.random.default_rng(3)
    v = rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, 500)
    assert exact_sum(v) == sum((Fraction(float(a)) for a in v), Fraction(0))


# --------------------------------------------------------------------------
# Cross-entropy


def _loss(target, kind="index", weight=None, eps=0.0, ignore=None, reduction="none"):
    return SimpleNamespace(target=target, target_kind=kind, weight=weight, label_smoothing=eps,
                           ignore_index=ignore, reduction=reduction, out_of_range=False)


def _brute_loss(x: np.ndarray, loss) -> tuple[list, object, object, list]:
    rows, n = x.shape
    eps = _mp.mpf(loss.label_smoothing)
    w = [_mp.mpf(float(v)) for v in (loss.weight if loss.weight is not None else np.ones(n))]
    losses, grads, denom = [], [], _mp.zero
    for i, (xs, a, s, p) in enumerate(_rows(x)):
        logp = [(v - a - _mp.log(s)) if v is not None else None for v in xs]
        if loss.target_kind == "index":
            t = int(loss.target[i])
            if loss.ignore_index is not None and t == loss.ignore_index:
                losses.append(_mp.zero)
                grads.append([_mp.zero] * n)
                continue
            coef = [eps / n * w[c] + ((1 - eps) * w[t] if c == t else 0) for c in range(n)]
            denom += w[t]
        else:
            coef = [w[c] * ((1 - eps) * _mp.mpf(float(loss.target[i, c])) + eps / n) for c in range(n)]
            denom += 1
        if any(cf != 0 and lc is None for cf, lc in zip(coef, logp)):
            losses.append(_mp.inf)
        else:
            losses.append(_mp.fsum(-cf * lc for cf, lc in zip(coef, logp) if cf != 0))
        total = _mp.fsum(coef)
        grads.append([total * pc - cf for pc, cf in zip(p, coef)])
    return losses, _mp.fsum(losses) / denom, _mp.fsum(losses), grads


@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("variant", ["plain", "smoothing-weights", "ignored", "probability", "masked-probability",
                                     "constant", "masked-target"])
def test_cross_entropy_references_are_correctly_rounded(fmt_name, variant):
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(_seed(fmt_name, variant))
    rows, n = 3, int(rng.integers(2, 20))
    x = rng.normal(size=(rows, n)) * 6
    if variant == "constant":
        x[:] = 0.25
    if variant in ("masked-probability", "masked-target"):
        x[:, ::3] = -np.inf
        x[:, 1] = 1.0
    x = round_float64_array(x, fmt).astype(np.float64)
    target = rng.integers(0, n, rows)
    kw = {}
    if variant == "smoothing-weights":
        kw = dict(eps=0.1, weight=round_float64_array(rng.uniform(0.25, 4, n), fmt).astype(np.float64))
    elif variant == "ignored":
        target[1] = -100
        kw = dict(ignore=-100, eps=0.9)
    elif variant == "masked-target":
        target[0] = 0  # a -inf logit: loss +inf, gradient finite
    elif variant in ("probability", "masked-probability"):
        q = rng.random((rows, n))
        q[x == -np.inf] = 0
        q /= q.sum(axis=1, keepdims=True)
        target = round_float64_array(q, fmt).astype(np.float64)
        kw = dict(kind="probability", eps=0.1 if variant == "probability" else 0.0)
    for reduction in ("none", "mean", "sum"):
        loss = _loss(target, reduction=reduction, **kw)
        dy = round_float64_array(rng.normal(size=rows), fmt).astype(np.float64) if reduction == "none" \
            else np.array(1.0)
        ref = loss_reference(x, loss, fmt)
        grad, uncertified = loss_gradient_reference(x, loss, dy, fmt)
        rows_b, mean_b, sum_b, grads_b = _brute_loss(x, loss)
        assert uncertified == 0 and ref.uncertified == 0
        assert all(_same(rows_b[i], ref.none.rounded[i], fmt) for i in range(rows))
        assert _same(mean_b, ref.mean.rounded[0], fmt) and _same(sum_b, ref.sum.rounded[0], fmt)
        if reduction == "none":
            scale = [_mp.mpf(float(v)) for v in dy]
        else:
            scale = [_mp.mpf(float(dy)) / (1 if reduction == "sum" else _brute_denominator(loss, rows))] * rows
        bad = [(i, c) for i in range(rows) for c in range(n)
               if not _same(scale[i] * grads_b[i][c], grad.rounded[i, c], fmt)]
        assert not bad


def _brute_denominator(loss, rows):
    if loss.target_kind == "probability":
        return rows
    w = loss.weight
    return sum((_mp.mpf(1) if w is None else _mp.mpf(float(w[t])))
               for t in loss.target if loss.ignore_index is None or t != loss.ignore_index)


def test_cross_entropy_special_rows():
    fmt = FORMATS["float32"]
    x = np.array([[0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [np.nan, 0.0, 1.0], [5.0, -np.inf, -np.inf]])
    ref = loss_reference(x, _loss(np.array([2, 0, 1, 0])), fmt)
    assert ref.none.undefined.tolist() == [False, True, False, False]
    assert math.isnan(ref.none.rounded[2])
    assert ref.none.rounded[3] == 0.0  # one finite logit, and it is the target: exactly 0
    assert math.isnan(ref.mean.rounded[0]) and not ref.mean.undefined[0]  # NaN anywhere: NaN
    no_nan = loss_reference(x[[0, 1, 3]], _loss(np.array([2, 0, 0])), fmt)
    assert no_nan.mean.undefined[0]  # a fully masked row that counts makes the mean undefined
    every_row_ignored = _loss(np.array([-1, -1, -1, -1]), ignore=-1, reduction="mean")
    assert loss_reference(x, every_row_ignored, fmt).mean.undefined[0]  # 0 / 0
    assert loss_reference(x, every_row_ignored, fmt).sum.rounded[0] == 0.0
    out_of_range = SimpleNamespace(**{**vars(_loss(np.array([3, 0, 1, 0]))), "out_of_range": True})
    assert math.isnan(loss_reference(x, out_of_range, fmt).none.rounded[0])
