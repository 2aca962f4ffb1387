"""Exact rounding into every format: two independent implementations must agree."""

import math

import ml_dtypes
import mpmath
import numpy as np
import pytest

from softaudit.formats import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    FORMATS,
    FormatError,
    get_format,
    round_float64_array,
    round_mpf,
)


def _awkward_values() -> np.ndarray:
    rng = np.random.default_rng(7)
    random = rng.standard_normal(20000) * 10.0 ** rng.integers(-46, 40, 20000)
    halfway = (np.arange(1, 500) * 2 + 1) * 2.0**-9  # exact midpoints for bfloat16
    specials = [np.inf, -np.inf, np.nan, 0.0, -0.0, 65504.0, 65519.99, 65520.0, 3.4e38, 3.4028235677973366e38,
                2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-149, 2.0**-150, 2.0**-150 * 1.0000001]
    return np.concatenate([random, halfway, halfway * 2.0**-130, specials])


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_vectorised_rounding_matches_integer_rounding(fmt):
    x = _awkward_values()
    fast = round_float64_array(x, fmt).astype(np.float64)
    exact = np.array([round_mpf(mpmath.mpf(v), fmt) for v in x])
    same = (fast == exact) | (np.isnan(fast) & np.isnan(exact))
    assert same.all(), x[~same][:5]


@pytest.mark.parametrize("fmt", [FLOAT32, FLOAT16], ids=lambda f: f.name)
def test_numpy_casts_agree_for_float32_and_float16(fmt):
    x = _awkward_values()
    with np.errstate(over="ignore"):
        cast = x.astype(fmt.np_dtype).astype(np.float64)
    ours = round_float64_array(x, fmt).astype(np.float64)
    assert ((cast == ours) | (np.isnan(cast) & np.isnan(ours))).all()


def test_bfloat16_avoids_double_rounding():
    # 1 + 2^-8 + 2^-40 is just above a bfloat16 midpoint; through float32 it lands on it and rounds to even.
    v = 1 + 2.0**-8 + 2.0**-40
    assert float(round_float64_array(np.array([v]), BFLOAT16)[0]) == 1 + 2.0**-7
    # The trap docs/formats.md#rounding-into-a-format describes (ml_dtypes before 0.7 rounded float64 -> bfloat16 this way):
    assert float(np.array([v]).astype(np.float32).astype(ml_dtypes.bfloat16)[0]) == 1.0


def test_overflow_threshold_and_subnormals():
    assert math.isinf(round_mpf(mpmath.mpf(65520), FLOAT16))
    assert round_mpf(mpmath.mpf("65519.999"), FLOAT16) == 65504.0
    assert round_mpf(mpmath.mpf(2) ** -25, FLOAT16) == 0.0  # exact tie with 0: to even
    assert round_mpf(mpmath.mpf(2) ** -25 * 1.01, FLOAT16) == 2.0**-24
    assert round_mpf(mpmath.mpf("1e-100000"), FLOAT32) == 0.0
    assert math.isinf(round_mpf(mpmath.mpf("1e100000"), FLOAT32))


def test_aliases_and_unknown_names():
    assert get_format("bf16") is BFLOAT16 and get_format("FP32") is FLOAT32
    with pytest.raises(FormatError, match="unknown format 'float8'"):
        get_format("float8")
