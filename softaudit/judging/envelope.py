"""The stability envelope (docs/envelope.md#the-model) and every number that judges a result.

The envelope is the error, in ulps of the exact value, that a textbook-stable
algorithm working in the target format stays within. The gate fails a result
whose error exceeds ``DEFAULT_RATIO_LIMIT`` times its envelope.

Calibration (tests/test_calibration.py, docs/envelope.md): on every shipped case
the max-shifted built-in, the float64-rounded-once built-in and torch (where
torch is right) stay at ratio <= 1; the known-bad algorithms (no shift, fixed
shift, absorbed max + log(sum), 16-bit accumulation) reach >= 10, mostly
>= 1000, or hard failures. A limit of 4 sits between the two with margin on
both sides.
"""

from __future__ import annotations

import numpy as np

from softaudit.formats import Format, round_float64_array

DEFAULT_RATIO_LIMIT = 4.0
"""Gate: FAIL above this stability ratio, WARN between 1 and this (docs/calibration.md#why-the-limit-is-4)."""

DEFAULT_RELATIVE_FACTOR = 2.0
"""Relative rule (--relative-to): a candidate FAILs where its error exceeds this many times the
baseline's on the same input. 2 is one bit, flash-attention's practice (its tests allow twice the
error of the PyTorch implementation against a higher-precision reference, plus a small slack).
Error here is the record's max stability ratio (error / envelope, element by element), not its max
ulps: a gradient's max ulp error sits on its tiniest, cancelled elements and differs between two
sound implementations by whole factors (builtin:shifted 587 ulp, torch 284 ulp on offset-plus-1e3
float32 softmax backward, ratios 0.13 and 0.35)."""

DEFAULT_RELATIVE_SLACK = 0.5
"""...plus this much stability ratio (half an envelope), so that a baseline that is exact (ratio 0)
does not make honest rounding a failure."""

ROUNDING_TERMS = 3.0
"""The '+3' of every envelope: exp, the division or log, and the final rounding."""

FINAL_ROUNDING_ULP = 0.5
"""Added to the absolute (log-domain) envelopes: docs/envelope.md#the-model's log_softmax model omits the
rounding of x_i - a - log(s) at |l_i| when x_i - a is exact (calibration: builtin:shifted
float32 log_softmax on confident rows reached 1.10 without it)."""

MIN_ENVELOPE_ULP = 1.0
"""The envelope is never below 1 ulp of the exact value (subnormals and the final rounding)."""


def shift_error_term(x: np.ndarray, amax: np.ndarray, fmt: Format) -> np.ndarray:
    """delta_i = |x_i - a| where that subtraction is inexact in ``fmt``, else 0 (docs/envelope.md#the-model).

    Computed in float64 with an exactness test (TwoSum residual, then a
    round trip through the format): no rounding can hide an inexact difference.
    """
    xs = np.asarray(x, dtype=np.float64)
    a = np.where(np.isfinite(amax), amax, 0.0)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        d = xs - a
        bb = d - xs
        resid = (xs - (d - bb)) + (-a - bb)
        exact = (resid == 0) & np.isfinite(d)
        if fmt.name != "float64":
            exact &= round_float64_array(np.where(np.isfinite(d), d, 0.0), fmt).astype(np.float64) == d
        delta = np.where(exact | ~np.isfinite(d), 0.0, np.abs(d))
    return delta


def log_domain_absolute(op: str, x: np.ndarray, amax: np.ndarray, log_s: np.ndarray, fmt: Format) -> np.ndarray:
    """The absolute error models of log_softmax (per element) and logsumexp (per row)."""
    n = x.shape[-1]
    common = np.log2(max(n, 1)) + ROUNDING_TERMS
    ls = np.abs(np.nan_to_num(log_s, nan=0.0, posinf=0.0, neginf=0.0))
    if op == "log_softmax":
        with np.errstate(over="ignore"):  # |x - a| near the format's max: an infinite envelope is right
            return fmt.u * (2 * shift_error_term(x, amax, fmt) + ls[:, None] + common)
    if op == "logsumexp":
        return fmt.u * (np.abs(np.where(np.isfinite(amax), amax, 0.0)) + ls + common)
    raise ValueError(f"no absolute envelope for op {op!r}")


def envelope_ulp(op: str, x: np.ndarray, amax: np.ndarray, log_s: np.ndarray,
                 k: np.ndarray, hi: np.ndarray, fmt: Format) -> np.ndarray:
    """Envelope in ulps of the exact value, per output element of ``op``.

    ``k``/``hi`` are the reference's ulp exponent and exact value in ulps
    (reference.OpReference); ``amax``/``log_s`` its row statistics. +inf where an
    absolute envelope is beyond float64's reach in ulps of a tiny exact value
    (float64 results near 0): metrics then compares absolute errors instead.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if op == "softmax":
            n = x.shape[-1]
            rel = fmt.u * (shift_error_term(x, amax, fmt) + np.log2(max(n, 1)) + ROUNDING_TERMS)
            env = rel * np.abs(np.nan_to_num(hi))
        else:
            # The absolute models bound the error of the quantities log_softmax and
            # logsumexp are formed from; the final rounding at the result's own
            # magnitude adds half an ulp (softmax's relative model already holds it).
            env = np.ldexp(log_domain_absolute(op, x, amax, log_s, fmt), -k) + FINAL_ROUNDING_ULP
    return np.maximum(np.nan_to_num(env, nan=MIN_ENVELOPE_ULP, posinf=np.inf), MIN_ENVELOPE_ULP)


# --------------------------------------------------------------------------
# Gradients and cross-entropy (docs/envelope.md, "Backward passes" and "Cross-entropy")
#
# Derived as docs/envelope.md#the-model derives the forward envelopes: the first-order error of the
# textbook algorithm in the target format, term by term, from the forward
# envelopes of the quantities it reuses (p from softmax, l from log_softmax, y from
# logsumexp). Every model below is an absolute error; absolute_to_ulp turns it into
# ulps of the exact value and adds the final rounding.


def absolute_to_ulp(absolute: np.ndarray, k: np.ndarray) -> np.ndarray:
    """An absolute envelope in ulps of the exact value (2^k), with the final rounding, at least 1 ulp."""
    with np.errstate(over="ignore", invalid="ignore"):
        env = np.ldexp(np.nan_to_num(absolute, nan=0.0), -k.astype(np.int64)) + FINAL_ROUNDING_ULP
    return np.maximum(np.nan_to_num(env, nan=MIN_ENVELOPE_ULP, posinf=np.inf), MIN_ENVELOPE_ULP)


def _common(n: int) -> float:
    return float(np.log2(max(n, 1))) + ROUNDING_TERMS


def _softmax_relative(x: np.ndarray, amax: np.ndarray, fmt: Format) -> np.ndarray:
    """Relative error model of p_i (the forward softmax envelope)."""
    return fmt.u * (shift_error_term(x, amax, fmt) + _common(x.shape[-1]))


def softmax_backward_absolute(x: np.ndarray, dy: np.ndarray, p: np.ndarray, amax: np.ndarray,
                              fmt: Format) -> np.ndarray:
    """g_i = p_i (dy_i - c), c = sum p_j dy_j: errors of p, of the dot product, of the difference."""
    u, n = fmt.u, x.shape[-1]
    rel_p = _softmax_relative(x, amax, fmt)
    tiny = fmt.smallest_subnormal  # p below the normal range is rounded absolutely, not relatively
    c = np.sum(p * dy, axis=-1, keepdims=True)
    err_c = np.sum((p * (rel_p + u * (np.log2(max(n, 1)) + 2)) + tiny) * np.abs(dy), axis=-1, keepdims=True)
    g = p * (dy - c)
    return p * (err_c + u * np.abs(dy - c)) + np.abs(g) * (rel_p + 2 * u) + tiny * np.abs(dy - c)


def log_softmax_backward_absolute(x: np.ndarray, dy: np.ndarray, p: np.ndarray, amax: np.ndarray,
                                  log_s: np.ndarray, fmt: Format) -> np.ndarray:
    """g_i = dy_i - exp(l_i) D, D = sum dy_j: l_i's forward error, the sum's, the product's."""
    u, n = fmt.u, x.shape[-1]
    rel_p = log_domain_absolute("log_softmax", x, amax, log_s, fmt) + u  # exp turns l's absolute error relative
    d = np.sum(dy, axis=-1, keepdims=True)
    d_abs = np.sum(np.abs(dy), axis=-1, keepdims=True)
    g = dy - p * d
    return p * np.abs(d) * (rel_p + 2 * u) + p * u * np.log2(max(n, 2)) * d_abs + u * np.abs(g)


def logsumexp_backward_absolute(x: np.ndarray, dy: np.ndarray, p: np.ndarray, amax: np.ndarray,
                                log_s: np.ndarray, fmt: Format) -> np.ndarray:
    """g_i = dy exp(x_i - y): the forward y's absolute error becomes relative, plus x_i - y and exp."""
    u = fmt.u
    y_abs = log_domain_absolute("logsumexp", x, amax, log_s, fmt)[:, None]
    a = np.where(np.isfinite(amax), amax, 0.0)[:, None]
    with np.errstate(invalid="ignore"):
        diff = np.abs(np.nan_to_num(x - a, neginf=0.0) - np.nan_to_num(log_s, nan=0.0)[:, None])
    g = np.abs(dy)[:, None] * p
    tiny = np.abs(dy)[:, None] * fmt.smallest_subnormal  # p below the normal range: rounded absolutely
    # Not linearised: y's error enters through exp, and in 16-bit formats at large offsets it is
    # several units (ulp(1e4) = 8 in float16), so exp(x - y) can be off by a factor e^4.
    with np.errstate(over="ignore"):
        return g * np.expm1(y_abs + u * (diff + 2)) + tiny


def cross_entropy_row_absolute(x: np.ndarray, coef: np.ndarray, loss: np.ndarray, amax: np.ndarray,
                               log_s: np.ndarray, fmt: Format) -> np.ndarray:
    """loss_i = sum_c coef_c (-l_c): each -l_c with log_softmax's envelope, and the weighted sum.

    For a hard target this is docs/envelope.md#the-model's u (|a - x_t| + |log s| + log2 n + 3), with
    log_softmax's model of -l_t in place of |a - x_t| + |log s|.
    """
    u, n = fmt.u, x.shape[-1]
    l_abs = log_domain_absolute("log_softmax", x, amax, log_s, fmt)
    with np.errstate(invalid="ignore"):
        per_term = np.where(coef > 0, coef * l_abs, 0.0)
    return np.sum(per_term, axis=-1) + u * (np.log2(max(n, 1)) + 1) * np.abs(np.nan_to_num(loss))


def cross_entropy_reduced_absolute(row_absolute: np.ndarray, loss: np.ndarray, denominator: float,
                                   fmt: Format) -> float:
    """sum (or mean) of the rows: their errors, the summation's, and the division's."""
    rows = row_absolute.size
    total = float(np.sum(np.abs(np.nan_to_num(loss))))
    err = float(np.sum(np.nan_to_num(row_absolute))) + fmt.u * (np.log2(max(rows, 1)) + 1) * total
    if denominator in (0.0, 1.0):
        return err
    return err / denominator + fmt.u * total / denominator


def cross_entropy_backward_absolute(x: np.ndarray, coef: np.ndarray, total: np.ndarray, g: np.ndarray,
                                    p: np.ndarray, amax: np.ndarray, log_s: np.ndarray, fmt: Format) -> np.ndarray:
    """G_c = g (A p_c - coef_c): p's forward error, A's summation, the rounding of the (weighted,
    smoothed) one-hot coef_c (two operations), the subtraction, and the scaling by the upstream."""
    u, n = fmt.u, x.shape[-1]
    # p comes either from the softmax or, as autograd does through log_softmax's backward, as
    # exp(log_softmax): both are textbook, and the second turns l's absolute error relative.
    a = np.where(np.isfinite(amax), amax, 0.0)[:, None]
    l_magnitude = np.abs(np.nan_to_num(x - a, neginf=0.0)) + np.abs(np.nan_to_num(log_s, nan=0.0))[:, None]
    rel_p = np.maximum(_softmax_relative(x, amax, fmt),
                       log_domain_absolute("log_softmax", x, amax, log_s, fmt) + u * (l_magnitude + 1))
    ap = total[:, None] * p
    h = ap - coef
    big_g = np.abs(g)[:, None]
    tiny = total[:, None] * fmt.smallest_subnormal  # p rounded below the normal range
    return big_g * (ap * (rel_p + u * (np.log2(max(n, 1)) + 2)) + tiny + 2 * u * coef + 2 * u * np.abs(h))
