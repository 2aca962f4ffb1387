"""The stability envelope (DESIGN §6) and every number that judges a result.

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
"""Gate: FAIL above this stability ratio, WARN between 1 and this (DESIGN §6: "about 4")."""

ROUNDING_TERMS = 3.0
"""The '+3' of every envelope: exp, the division or log, and the final rounding."""

FINAL_ROUNDING_ULP = 0.5
"""Added to the absolute (log-domain) envelopes: DESIGN §6's log_softmax model omits the
rounding of x_i - a - log(s) at |l_i| when x_i - a is exact (calibration: builtin:shifted
float32 log_softmax on confident rows reached 1.10 without it)."""

MIN_ENVELOPE_ULP = 1.0
"""The envelope is never below 1 ulp of the exact value (subnormals and the final rounding)."""


def shift_error_term(x: np.ndarray, amax: np.ndarray, fmt: Format) -> np.ndarray:
    """delta_i = |x_i - a| where that subtraction is inexact in ``fmt``, else 0 (DESIGN §6).

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
