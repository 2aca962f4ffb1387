"""The exact engine and the certified references built on it."""

import math
from decimal import Decimal, getcontext

import mpmath
import numpy as np
import pytest

from softaudit.formats import FLOAT16, FLOAT32, FORMATS, round_float64_array, round_mpf
from softaudit.reference import ReferenceCache, exact_element, exact_row, reference_rows

SEED_ROW = [1000, 2000, 3000, 4000, 5000]
SEED_ARTICLE_DIGITS = ["6.6385371046556741e-1738", "1.3078390189212505e-1303", "2.5765358729611501e-869",
                 "5.0759588975494576e-435", "1.0"]


def test_seed_example_matches_the_seed_article_to_15_digits():
    got = exact_row(SEED_ROW).softmax
    for v, expected in zip(got, SEED_ARTICLE_DIGITS):
        assert mpmath.nstr(v, 15) == mpmath.nstr(mpmath.mpf(expected), 15)


def test_seed_example_matches_an_independent_decimal_computation_to_17_digits():
    # The seed article printed digits 16-17 from a float64-precision computation (docs/cases.md#the-seed-examples); Python's
    # decimal module (no mpmath involved) settles them.
    getcontext().prec = 60
    e = [(Decimal(v) - Decimal(5000)).exp() for v in SEED_ROW]
    s = sum(e)
    expected = [f"{(ei / s):.16e}" for ei in e]
    got = [mpmath.nstr(v, 17, min_fixed=1, max_fixed=0) for v in exact_row(SEED_ROW).softmax]
    for g, x in zip(got, expected):
        assert mpmath.mpf(g) == mpmath.mpf(x) or mpmath.nstr(mpmath.mpf(g), 17) == mpmath.nstr(mpmath.mpf(x), 17)
    assert exact_element(np.array(SEED_ROW, dtype=float), "softmax", 0) == "6.6385371046556735e-1738"
    # far below any format, still exact: log_softmax of the max of [0, -1e7] is -e^-1e7
    assert exact_element(np.array([0.0, -1e7]), "log_softmax", 0) == "-1.5169367808987344e-4342945"


def _rows(fmt):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((3, 24)) * 5, rng.standard_normal((2, 24)) * 300], 0)
    x[0, 3] = -np.inf
    x[1, :] = x[1, 0]
    x[2, 5] = np.nan
    extra = np.array([[0.0] * 23 + [np.inf], [-1e30] * 23 + [0.0], [1.0] + [-700.0] * 23, [-np.inf] * 24])
    return round_float64_array(np.concatenate([x, extra]), fmt)


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_certified_references_equal_high_precision_rounding(fmt):
    x = _rows(fmt)
    ref = reference_rows(x, fmt)
    assert ref.uncertified == 0
    for i, row in enumerate(x.astype(np.float64)):
        exact = exact_row(row, prec=3000)
        for op in ("softmax", "log_softmax"):
            values = getattr(exact, op)
            if values is None:
                assert ref.ops[op].undefined[i]
                continue
            for j, v in enumerate(values):
                r, got = round_mpf(v, fmt), ref.ops[op].rounded[i, j]
                assert r == got or (math.isnan(r) and math.isnan(got)), (op, i, j, r, got)
        r, got = round_mpf(exact.logsumexp, fmt), ref.ops["logsumexp"].rounded[i]
        assert r == got or (math.isnan(r) and math.isnan(got))


def test_special_value_semantics():
    x = np.array([[np.nan, 1.0], [np.inf, 1.0], [-np.inf, -np.inf], [0.0, -np.inf]], dtype=np.float32)
    ref = reference_rows(x, FLOAT32)
    lse = ref.ops["logsumexp"].rounded
    assert math.isnan(lse[0]) and lse[1] == math.inf and lse[2] == -math.inf and lse[3] == 0.0
    assert np.isnan(ref.ops["softmax"].rounded[0]).all()
    assert list(ref.ops["softmax"].undefined) == [False, True, True, False]
    assert list(ref.ops["softmax"].rounded[3]) == [1.0, 0.0]
    assert list(ref.ops["log_softmax"].rounded[3]) == [0.0, -math.inf]


def test_midpoint_minus_infinitesimal_is_rounded_correctly():
    # x - max = -2^24 - 1 is exactly halfway between two float32 values; log(sum) is
    # e^-16777217 > 0, so the exact log_softmax lies just below the midpoint.
    ref = reference_rows(np.array([[1.0, -(2.0**24)]], dtype=np.float32), FLOAT32)
    assert ref.ops["log_softmax"].rounded[0, 1] == -16777218.0
    assert ref.uncertified == 0
    ref16 = reference_rows(np.array([[4.0, -10000.0]], dtype=np.float16), FLOAT16)
    assert ref16.ops["log_softmax"].rounded[0, 1] == -10008.0


def test_ulp_form_holds_the_exact_value():
    x = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    ref = reference_rows(x, FLOAT32).ops["softmax"]
    exact = exact_row(x[0].astype(np.float64), prec=300).softmax
    for j, v in enumerate(exact):
        stored = (mpmath.mpf(ref.hi[0, j]) + mpmath.mpf(ref.lo[0, j])) * mpmath.mpf(2) ** int(ref.k[0, j])
        assert abs(stored - v) / mpmath.mpf(2) ** int(ref.k[0, j]) < 2.0**-30


def test_cache_hits_on_second_use_and_survives_a_damaged_entry(tmp_path):
    x = _rows(FLOAT16)
    cache = ReferenceCache(tmp_path)
    first = cache.get_or_compute(x, FLOAT16)
    second = cache.get_or_compute(x, FLOAT16)
    assert (cache.misses, cache.hits) == (1, 1)
    assert np.array_equal(first.ops["softmax"].rounded, second.ops["softmax"].rounded, equal_nan=True)
    (entry,) = list(tmp_path.rglob("*.npz"))
    entry.write_bytes(b"not a zip file")
    third = cache.get_or_compute(x, FLOAT16)
    assert cache.misses == 2
    entry.write_bytes(b"")  # empty: np.load raises EOFError
    cache.get_or_compute(x, FLOAT16)
    assert cache.misses == 3
    assert np.array_equal(first.ops["log_softmax"].rounded, third.ops["log_softmax"].rounded, equal_nan=True)
    assert ReferenceCache.key(x, FLOAT16) != ReferenceCache.key(x, FORMATS["bfloat16"])
