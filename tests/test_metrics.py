"""ulp error, bits of error, class checks, envelopes and verdicts on hand-built cases."""

import math

import numpy as np

from softaudit.formats import BFLOAT16, FLOAT16, FLOAT32, FLOAT64
from softaudit.judging.envelope import envelope_ulp, shift_error_term
from softaudit.judging.metrics import bits_of_error, judge_elements, summarize, ulp_error
from softaudit.judging.verdicts import FAIL, PASS, WARN, Gate, decide
from softaudit.reference import reference_rows


def test_ulp_error_is_exact_in_the_ulps_of_the_exact_value():
    # exact value 1 + 0.25 ulp, stored as k, hi, lo; y one float above 1.
    k = np.array([-23])
    hi = np.array([2.0**23])
    lo = np.array([0.25])
    assert ulp_error(np.array([1.0]), k, hi, lo)[0] == 0.25
    assert ulp_error(np.array([1.0 + 2.0**-23]), k, hi, lo)[0] == 0.75
    # A value so far from the exact one that scaling overflows float64 goes through mpmath.
    far = ulp_error(np.array([1.0]), np.array([-1074]), np.array([0.0]), np.array([0.0]))[0]
    assert far == np.finfo(np.float64).max
    assert math.isnan(ulp_error(np.array([np.nan]), k, hi, lo)[0])


def test_bits_of_error_counts_floats_between():
    one = np.array([1.0])
    # float64 counts are exact integers, not float64 approximations of 2^62-sized ordinals
    for k, bits in ((1, 1.0), (3, 2.0), (100, math.log2(101))):
        assert bits_of_error(np.array([1.0 + k * 2.0**-52]), one, FLOAT64)[0] == bits
    assert bits_of_error(np.array([-(2.0**-1074)]), np.array([2.0**-1074]), FLOAT64)[0] == math.log2(3)
    assert bits_of_error(one, one, FLOAT32)[0] == 0.0
    assert bits_of_error(np.array([1.0 + 3 * 2.0**-23]), one, FLOAT32)[0] == 2.0
    assert bits_of_error(np.array([-0.0]), np.array([0.0]), FLOAT16)[0] == 0.0
    # -ulp(0) to +ulp(0) is two steps (±0 count once): log2(1 + 2).
    assert bits_of_error(np.array([2.0**-133]), np.array([-(2.0**-133)]), BFLOAT16)[0] == math.log2(3)


def _judge(op, x, y, fmt, limit=4.0):
    refs = reference_rows(x, fmt)
    j = judge_elements(op, x, np.asarray(y, dtype=np.float64), refs.ops[op], refs.stats, fmt)
    m = summarize(op, x, np.asarray(y, dtype=np.float64), refs.ops[op], j, limit)
    return j, m


def test_correctly_rounded_output_passes_with_ratio_at_most_half():
    x = np.array([[0.5, -1.25, 3.0, 2.0]], dtype=np.float32)
    refs = reference_rows(x, FLOAT32)
    y = refs.ops["softmax"].rounded
    j, m = _judge("softmax", x, y, FLOAT32)
    assert m.max_ulp <= 0.5 and m.max_ratio <= 0.5
    assert decide(m, Gate()) == (PASS, [])


def test_nan_where_finite_expected_is_a_hard_failure_explained_in_one_line():
    x = np.array([[1e4, 1e4 + 1, 1e4 - 2]], dtype=np.float32)
    _, m = _judge("softmax", x, [[np.nan, np.nan, np.nan]], FLOAT32)
    verdict, reasons = decide(m, Gate())
    assert verdict == FAIL and m.class_mismatches == 3
    assert reasons[0].startswith("3 / 3 elements (100.0%) have the wrong class: nan where the exact value is finite")
    assert "row 0, col 0: input 10000.0, exact 0.25949646034241912, computed nan" in reasons[0]
    assert "\n" not in reasons[0]


def test_masked_entry_must_be_exactly_zero_in_ulps_of_zero():
    x = np.array([[0.0, -np.inf]], dtype=np.float32)
    _, ok = _judge("softmax", x, [[1.0, 0.0]], FLOAT32)
    _, bad = _judge("softmax", x, [[1.0, 1e-30]], FLOAT32)
    assert ok.max_ulp == 0.0
    assert bad.max_ulp > 1e14 and decide(bad, Gate())[0] == FAIL
    # log_softmax of a masked entry must be -inf: a finite value is a class failure.
    _, m = _judge("log_softmax", x, [[0.0, -1e30]], FLOAT32)
    assert m.mismatch_kinds == {"-inf->finite": 1}


def test_undefined_rows_follow_the_policy():
    x = np.array([[-np.inf, -np.inf], [1.0, 2.0]], dtype=np.float32)
    refs = reference_rows(x, FLOAT32)
    good = refs.ops["softmax"].rounded[1]
    for row0, policy, verdict in (([np.nan, np.nan], "nan-or-zero", PASS), ([0.0, 0.0], "nan-or-zero", PASS),
                                  ([0.5, 0.5], "nan-or-zero", FAIL), ([0.0, 0.0], "nan", FAIL),
                                  ([0.5, 0.5], "any", WARN)):
        _, m = _judge("softmax", x, [row0, good], FLOAT32)
        assert decide(m, Gate(undefined_policy=policy))[0] == verdict, (row0, policy)


def test_the_jax_policy_judges_fully_masked_rows_by_jaxs_where_convention():
    # Row 0 fully masked (every entry -inf), row 1 holding +inf, row 2 ordinary.
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [1.0, 2.0]], dtype=np.float32)
    refs = reference_rows(x, FLOAT32)
    good = refs.ops["softmax"].rounded[2]
    for row0, row1, verdict in (([0.0, 0.0], [np.nan, 0.0], PASS),        # JAX's convention; NaN on +inf
                                ([0.0, 0.0], [1.0, 0.0], PASS),           # the limit on +inf
                                ([np.nan, np.nan], [np.nan, 0.0], FAIL),  # NaN on a fully masked row
                                ([0.5, 0.5], [np.nan, 0.0], FAIL)):
        _, m = _judge("softmax", x, [row0, row1, good], FLOAT32)
        assert m.masked_rows == {"zero" if row0[0] == 0 else "nan" if np.isnan(row0[0]) else "other": 1}
        v, reasons = decide(m, Gate(undefined_policy="jax"))
        assert v == verdict, (row0, row1, reasons)
        if v == FAIL:
            assert "(fully masked)" in reasons[0] and "policy 'jax' accepts zero there" in reasons[0]
    _, m = _judge("log_softmax", x, [[-np.inf, -np.inf], [np.nan, -np.inf], refs.ops["log_softmax"].rounded[2]],
                  FLOAT32)
    assert decide(m, Gate(undefined_policy="jax"))[0] == PASS


def test_envelope_follows_design_model():
    # softmax: relative u*(delta + log2 n + 3), never below 1 ulp.
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    amax = np.array([4.0])
    assert list(shift_error_term(x, amax, FLOAT32)[0]) == [0.0, 0.0, 0.0, 0.0]  # exact subtractions
    xi = np.array([[1e-7 + 1.0, 1e4]], dtype=np.float32).astype(np.float64)
    delta = shift_error_term(xi, np.array([1e4]), FLOAT32)[0]
    assert delta[0] == abs(xi[0, 0] - 1e4) and delta[1] == 0.0
    hi = np.array([[2.0**23, 2.0**23]])
    k = np.array([[-24, -24]])
    env = envelope_ulp("softmax", xi, np.array([1e4]), np.array([0.0]), k, hi, FLOAT32)
    assert env[0, 0] == FLOAT32.u * (delta[0] + 1 + 3) * 2.0**23
    assert env[0, 1] == 2.0  # 2^-24 * (0 + log2(2) + 3) * 2^23
    tiny = envelope_ulp("softmax", xi, np.array([1e4]), np.array([0.0]), k, np.array([[0.0, 3.0]]), FLOAT32)
    assert list(tiny[0]) == [1.0, 1.0]  # the 1-ulp floor
    # logsumexp: absolute u*(|a| + |log s| + log2 n + 3), here in ulps of 2^-23.
    lse = envelope_ulp("logsumexp", xi, np.array([1e4]), np.array([0.5]), np.array([-23]), np.array([2.0**23]), FLOAT32)
    assert lse[0] == FLOAT32.u * (1e4 + 0.5 + 1 + 3) * 2.0**23 + 0.5  # + the final rounding


def test_float64_result_exactly_zero_is_judged_on_absolute_error():
    # logsumexp of [0, -inf, ...] is exactly 0: ulp(0) = 2^-1074 is too small to count
    # the envelope in, so the ratio compares absolute errors instead of dividing by inf.
    x = np.array([[0.0] + [-np.inf] * 63])
    _, good = _judge("logsumexp", x, [0.0], FLOAT64)
    _, tiny = _judge("logsumexp", x, [1e-17], FLOAT64)
    _, bad = _judge("logsumexp", x, [1e10], FLOAT64)
    assert good.max_ratio == 0.0
    assert tiny.max_ratio < 1.0  # within u * (log2 64 + 3) absolute
    assert bad.max_ratio > 1e20 and decide(bad, Gate())[0] == FAIL
