"""Per-element measurements of a candidate's output against the exact reference.

* class check (docs/special-values.md#the-exact-answers-class): NaN / +inf / -inf / finite expected vs produced;
* error in ulps of the exact value (docs/formats.md#error-in-ulps), from the reference's
  (k, hi, lo) form: |y * 2^-k - hi - lo|, with y * 2^-k exact (a power-of-two
  scaling) and the subtraction done by TwoSum, so the figure is exact to a
  relative 2^-52 plus the reference's own certified accuracy (2^-30 ulp from
  the mpmath engine, 2^-16 ulp from the fast path: docs/references.md);
  values out of float64's reach go through mpmath;
* bits of error (Herbie's convention) from integer ordinals of the format;
* stability ratio = error / envelope (envelope.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import mpmath
import numpy as np

from softaudit.formats import Format, round_float64_array
from softaudit.judging.envelope import absolute_to_ulp, envelope_ulp, log_domain_absolute
from softaudit.reference import OpReference, RowStats

_FLOAT_MAX = sys.float_info.max


def ulp_error(y: np.ndarray, k: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """|y - exact| / ulp(exact) per element, for finite y (others give NaN)."""
    y = np.asarray(y, dtype=np.float64)
    out = np.full(y.shape, np.nan)
    ok = np.isfinite(y) & np.isfinite(hi)
    if not ok.any():
        return out
    yv, kv, hv, lv = y[ok], k[ok].astype(np.int64), hi[ok], lo[ok]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        big_y = np.ldexp(yv, -kv)
        # TwoSum: s + t == big_y - hv exactly.
        s = big_y - hv
        bb = s - big_y
        t = (big_y - (s - bb)) + (-hv - bb)
        err = np.abs(s + (t - lv))
    # The scaling is exact unless it overflowed (the error is then beyond float64:
    # reported as its largest value) or fell into float64's subnormals (mpmath).
    err[~np.isfinite(big_y)] = _FLOAT_MAX
    for j in np.flatnonzero((yv != 0) & (np.abs(big_y) < 2.0**-1022)):
        err[j] = _exact_ulp_error(float(yv[j]), int(kv[j]), float(hv[j]), float(lv[j]))
    out[ok] = err
    return out


_ctx = mpmath.MPContext()
_ctx.prec = 256


def _exact_ulp_error(y: float, k: int, hi: float, lo: float) -> float:
    e = abs(_ctx.ldexp(y, -k) - _ctx.mpf(hi) - _ctx.mpf(lo))
    return min(float(e), _FLOAT_MAX)


def _sign_and_magnitude(values: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """(negative?, position of |value| among the format's values) as exact integers."""
    bits = round_float64_array(values, fmt).view(fmt.uint_dtype).astype(np.uint64)
    sign = np.uint64(1) << np.uint64(fmt.uint_dtype.itemsize * 8 - 1)
    return (bits & sign) != 0, bits & ~sign


def bits_of_error(y: np.ndarray, rounded: np.ndarray, fmt: Format) -> np.ndarray:
    """log2(1 + number of format values between y and round(exact)); NaN where either is not finite.

    The count is taken in unsigned 64-bit integers (±0 count once), exact for float64 too.
    """
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(rounded)
    out = np.full(y.shape, np.nan)
    if ok.any():
        neg_a, mag_a = _sign_and_magnitude(y[ok], fmt)
        neg_b, mag_b = _sign_and_magnitude(rounded[ok], fmt)
        same = neg_a == neg_b
        between = np.where(same, np.maximum(mag_a, mag_b) - np.minimum(mag_a, mag_b), mag_a + mag_b)
        out[ok] = np.log2(1.0 + between.astype(np.float64))
    return out


CLASS_NAMES = {0: "finite", 1: "nan", 2: "+inf", 3: "-inf"}


def value_class(v: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +inf, 3 -inf."""
    v = np.asarray(v, dtype=np.float64)
    return np.select([np.isnan(v), v == np.inf, v == -np.inf], [1, 2, 3], 0)


@dataclass
class ElementJudgement:
    """Every per-element figure of one output, aligned with it."""

    err_ulp: np.ndarray
    bits: np.ndarray
    envelope: np.ndarray
    ratio: np.ndarray
    expected_class: np.ndarray
    got_class: np.ndarray
    class_mismatch: np.ndarray
    """True where the produced class differs from the exact one (a hard failure)."""
    judged: np.ndarray
    """False for elements of undefined rows, which the undefined-row policy judges."""


def judge_elements(op: str, x: np.ndarray, y: np.ndarray, ref: OpReference,
                   stats: RowStats, fmt: Format,
                   absolute_envelope: np.ndarray | None = None) -> ElementJudgement:
    """Compare output ``y`` (float64 holding format values) with the reference, element by element.

    The forward row ops' envelopes are computed here from the row statistics; gradients
    and losses pass theirs as ``absolute_envelope`` (absolute errors, envelope.py).
    """
    x64 = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    judged = ~ref.undefined
    if y.ndim == 2:
        judged = np.broadcast_to(judged[:, None], y.shape)
    expected = value_class(ref.rounded)
    got = value_class(y)
    # An exact finite value that rounds to ±inf (overflow) may come back as the
    # infinity or as a finite value measured in ulps: both are right answers.
    overflowed = np.isinf(ref.rounded) & (ref.hi != 0) & np.isfinite(ref.hi)
    mismatch = (expected != got) & ~(overflowed & (got == 0)) & judged
    err = ulp_error(y, ref.k, ref.hi, ref.lo)
    err = np.where(overflowed & (got == expected), 0.0, err)
    if absolute_envelope is None:
        env = envelope_ulp(op, x64, stats.amax, stats.log_s, ref.k, ref.hi, fmt)
    else:
        absolute_envelope = np.broadcast_to(np.asarray(absolute_envelope, dtype=np.float64), y.shape)
        env = absolute_to_ulp(absolute_envelope, ref.k)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        ratio = err / env
        beyond = ~np.isfinite(env) & np.isfinite(y)
        if beyond.any():
            # ulp(exact) is too small for float64 to count the envelope in it (a
            # float64 log-domain result at or near 0): compare absolute errors.
            exact = np.ldexp(ref.hi, ref.k) + np.ldexp(ref.lo, ref.k)
            if absolute_envelope is None:
                absolute = log_domain_absolute(op, x64, stats.amax, stats.log_s, fmt)
            else:
                absolute = absolute_envelope
            absolute = np.broadcast_to(absolute, y.shape)
            ratio = np.where(beyond, np.abs(y - exact) / absolute, ratio)
    finite_pair = judged & ~mismatch & (got == 0) & np.isfinite(err)
    err = np.where(finite_pair, err, np.nan)
    ratio = np.where(finite_pair, ratio, np.nan)
    bits = np.where(finite_pair, bits_of_error(y, np.where(np.isfinite(ref.rounded), ref.rounded, 0.0), fmt), np.nan)
    return ElementJudgement(err, bits, env, ratio, expected, got, mismatch, np.asarray(judged))


def undefined_behaviour(op: str, y_row: np.ndarray, x_row: np.ndarray | None = None) -> str:
    """What a candidate produced on a row whose exact answer is undefined (docs/special-values.md#undefined-rows-and-the-policy): "nan",
    "zero", "limit" (a row holding +inf: the limit of the op there) or "other".

    On a row holding k entries of +inf, what correct max-shifted code returns - NaN at the +inf
    entries and 0 (softmax) or -inf (log_softmax) elsewhere - counts as "nan", as autograd's
    gradient pattern does; the limit - 1/k (softmax) or -log k (log_softmax) at the +inf entries
    and 0 / -inf elsewhere, log k or +inf for cross-entropy (which of the two depends on the
    target) - counts as "limit" (docs/special-values.md).
    """
    y_row = np.asarray(y_row, dtype=np.float64)
    nan = np.isnan(y_row)
    if nan.all() or (op.endswith("_backward") and nan.any() and (y_row[~nan] == 0).all()):
        # A gradient flagged NaN where the forward is infinite and 0 elsewhere (autograd's
        # logsumexp at a +inf entry) counts as NaN: the row says it is undefined.
        return "nan"
    posinf = None if x_row is None else np.asarray(x_row, dtype=np.float64) == np.inf
    if posinf is not None and posinf.any():
        k = int(np.count_nonzero(posinf))
        with np.errstate(invalid="ignore"):
            if op in ("softmax", "log_softmax") and y_row.shape == posinf.shape:
                rest = 0.0 if op == "softmax" else -np.inf
                if (y_row[~posinf] == rest).all():
                    if nan[posinf].all():
                        return "nan"
                    at_limit = 1.0 / k if op == "softmax" else -math.log(k)
                    if np.allclose(y_row[posinf], at_limit, rtol=LIMIT_RTOL, atol=0.0):
                        return "limit"
            elif op == "cross_entropy" and y_row.ndim == 0:
                if y_row == np.inf or (k > 1 and np.isclose(y_row, math.log(k), rtol=LIMIT_RTOL, atol=0.0)) \
                        or (k == 1 and y_row == 0):
                    return "limit"
    if op == "log_softmax" and (y_row == -np.inf).all():
        return "zero"
    if (y_row == 0).all():
        return "zero"
    return "other"


LIMIT_RTOL = 2.0**-7
"""How close to 1/k or log k an output on a +inf row must be to count as the limit: half an ulp of
bfloat16 (the coarsest format), so a correctly rounded limit in any format qualifies."""


@dataclass
class Location:
    """Where one element sits, and its values (all as exact as the format allows)."""

    row: int
    col: int | None
    input: float | None
    computed: float
    rounded_exact: float
    exact: str = ""
    err_ulp: float = math.nan
    envelope_ulp: float = math.nan
    ratio: float = math.nan


@dataclass
class RecordMetrics:
    """Aggregates of one candidate x op x format x case."""

    elements: int
    judged: int
    class_mismatches: int
    mismatch_kinds: dict[str, int] = field(default_factory=dict)
    """"expected->got" class pairs, e.g. {"finite->nan": 12}."""
    first_mismatch: Location | None = None
    nan_out: int = 0
    inf_out: int = 0
    max_ulp: float | None = None
    """None (JSON null) when no element could be measured, e.g. every one is NaN."""
    median_ulp: float | None = None
    p99_ulp: float | None = None
    max_bits: float | None = None
    max_ratio: float | None = None
    worst: Location | None = None
    above_envelope: int = 0
    above_limit: int = 0
    undefined_rows: dict[str, int] = field(default_factory=dict)
    masked_rows: dict[str, int] = field(default_factory=dict)
    """The fully masked rows (every entry -inf) among ``undefined_rows``, by behaviour: the
    rows a policy such as "jax" judges by their own rule (verdicts.MASKED_ROW_POLICIES)."""


def summarize(op: str, x: np.ndarray, y: np.ndarray, ref: OpReference, j: ElementJudgement,
              limit: float) -> RecordMetrics:
    """Reduce element judgements to the record's figures, with the worst element located."""
    y64 = np.asarray(y, dtype=np.float64)
    x64 = np.asarray(x, dtype=np.float64)
    m = RecordMetrics(elements=int(y64.size), judged=int(np.count_nonzero(j.judged)),
                      class_mismatches=int(np.count_nonzero(j.class_mismatch)))
    m.nan_out = int(np.count_nonzero(np.isnan(y64)))
    m.inf_out = int(np.count_nonzero(np.isinf(y64)))
    if m.class_mismatches:
        for e, g in zip(j.expected_class[j.class_mismatch].ravel(), j.got_class[j.class_mismatch].ravel()):
            key = f"{CLASS_NAMES[int(e)]}->{CLASS_NAMES[int(g)]}"
            m.mismatch_kinds[key] = m.mismatch_kinds.get(key, 0) + 1
        idx = tuple(int(i) for i in np.argwhere(j.class_mismatch)[0])
        m.first_mismatch = locate(op, x64, y64, ref, j, idx)
    for r in np.flatnonzero(ref.undefined):
        x_row = x64[r] if x64.ndim == 2 and x64.shape[0] == y64.shape[0] else None
        b = undefined_behaviour(ref.op, y64[r], x_row)
        m.undefined_rows[b] = m.undefined_rows.get(b, 0) + 1
        if x_row is not None and x_row.size and bool(np.all(x_row == -np.inf)):
            m.masked_rows[b] = m.masked_rows.get(b, 0) + 1
    err = j.err_ulp[np.isfinite(j.err_ulp)]
    if err.size:
        m.max_ulp = float(err.max())
        m.median_ulp = float(np.median(err))
        m.p99_ulp = float(np.percentile(err, 99))
        m.max_bits = float(np.nanmax(j.bits))
        ratio = np.where(np.isfinite(j.ratio), j.ratio, -1.0)
        m.max_ratio = float(ratio.max())
        m.above_envelope = int(np.count_nonzero(ratio > 1.0))
        m.above_limit = int(np.count_nonzero(ratio > limit))
        # Worst = highest ratio; among equal ratios, the largest ulp error; among equal both, the
        # last (what a stable lexsort's last gives, found in linear time: rows of 262,144 elements).
        at_max = ratio.ravel() == m.max_ratio
        errs = np.where(at_max, np.nan_to_num(j.err_ulp, nan=-1.0).ravel(), -np.inf)
        flat = errs.size - 1 - int(np.argmax(errs[::-1]))
        idx = tuple(int(i) for i in np.unravel_index(flat, ratio.shape))
        m.worst = locate(op, x64, y64, ref, j, idx)
    return m


def _exact_text(op: str, x: np.ndarray, ref: OpReference, idx: tuple[int, ...]) -> str:
    """17 significant digits of the exact value: from the stored reference when it holds
    them, else recomputed (values far below the format's range, special values)."""
    from softaudit.reference import exact_element

    stored = ref.exact_str(idx)
    if stored is not None:
        return stored
    if ref.op not in ("softmax", "log_softmax", "logsumexp"):
        # Gradients and losses store exact zeros, and values below 2^-66 of the smallest
        # subnormal, as 0; infinities as their class. (ref.op, not op: a backward record's op
        # is the forward op's name, whose exact_element would give the forward value.)
        value = float(ref.rounded[idx])
        return "0" if value == 0 else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    col = idx[1] if len(idx) > 1 else None
    return exact_element(x[idx[0]], op, col)


def locate(op: str, x: np.ndarray, y: np.ndarray, ref: OpReference, j: ElementJudgement,
            idx: tuple[int, ...]) -> Location:
    row = idx[0]
    col = idx[1] if len(idx) > 1 else None
    if col is None:
        # logsumexp: show the row's largest input, the value the result hinges on.
        finite = x[row][~np.isnan(x[row])]
        inp = float(finite.max()) if finite.size else math.nan
    else:
        inp = float(x[row, col])
    return Location(
        row=row, col=col, input=inp, computed=float(y[idx]), rounded_exact=float(ref.rounded[idx]),
        exact=_exact_text(op, x, ref, idx), err_ulp=float(j.err_ulp[idx]),
        envelope_ulp=float(j.envelope[idx]), ratio=float(j.ratio[idx]),
    )
