"""The one table of how each (op, direction) output is judged: the exact reference it is held to
and its envelope, then the one judge every rule shares (element judgement, figures, verdict).
The audit loop (softaudit.runner.loop) and reproduce (softaudit.reproduction) both call ``judge``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from softaudit.cases.inputs import LossInputs
from softaudit.formats import Format
from softaudit.judging.envelope import (
    cross_entropy_backward_absolute,
    cross_entropy_reduced_absolute,
    cross_entropy_row_absolute,
    log_softmax_backward_absolute,
    logsumexp_backward_absolute,
    softmax_backward_absolute,
)
from softaudit.judging.metrics import ElementJudgement, RecordMetrics, judge_elements, summarize
from softaudit.judging.unit import AuditUnit, exact_as_float64
from softaudit.judging.verdicts import Gate, decide
from softaudit.reference import OpReference, RowStats
from softaudit.reference.loss import mean_denominator, upstream_scale


@dataclass(frozen=True)
class Output:
    """One call's output to judge, with what the call was given."""

    op: str
    direction: str
    unit: AuditUnit
    y: np.ndarray
    """The output as float64; a 0-d array for a reduced cross-entropy."""
    loss: LossInputs | None = None
    """cross_entropy's inputs; forward, ``reduction`` is the one a reduced (0-d) output is judged
    under; backward, the reduction the gradient was asked under."""
    dy: np.ndarray | None = None
    """The upstream gradient of a backward call."""


@dataclass(frozen=True)
class Rule:
    """How one (op, direction) is judged: the reference the output is held to, and its stability
    envelope in absolute terms (None: the op's own envelope in ulps, envelope.envelope_ulp)."""

    reference: Callable[[Output], OpReference]
    envelope: Callable[[Output], np.ndarray | None]


def _forward_reference(out: Output) -> OpReference:
    return out.unit.refs.ops[out.op]


def _no_absolute(out: Output) -> None:
    return None


def _x64(out: Output) -> np.ndarray:
    return out.unit.x.astype(np.float64)


def _loss(out: Output) -> LossInputs:
    assert out.loss is not None, f"{out.op} {out.direction} is judged with its loss inputs"
    return out.loss


def _upstream(out: Output) -> np.ndarray:
    assert out.dy is not None, f"{out.op} {out.direction} is judged with its upstream gradient"
    return out.dy


def _loss_forward_reference(out: Output) -> OpReference:
    """Per-row losses, or the mean or sum a reduced (0-d) output gives."""
    lref = out.unit.loss_reference()
    if out.y.ndim != 0:
        return lref.none
    return lref.mean if _loss(out).reduction == "mean" else lref.sum


def _loss_forward_absolute(out: Output) -> np.ndarray:
    unit, loss = out.unit, _loss(out)
    stats = unit.refs.stats
    coef, _total = unit.coefficients()
    row_loss = exact_as_float64(unit.loss_reference().none)
    row_abs = cross_entropy_row_absolute(_x64(out), coef, row_loss, stats.amax, stats.log_s, unit.fmt)
    if out.y.ndim != 0:
        return row_abs
    denom = float(mean_denominator(loss, unit.x.shape[0])) if loss.reduction == "mean" else 1.0
    return np.array([cross_entropy_reduced_absolute(row_abs, row_loss, denom, unit.fmt)])


def _gradient_reference(out: Output) -> OpReference:
    return out.unit.gradient(out.op, _upstream(out), None)


BackwardEnvelope = Callable[[np.ndarray, np.ndarray, np.ndarray, RowStats, Format], np.ndarray]
"""(x, dy, softmax, row statistics, format) -> the absolute envelope of a gradient."""


def _backward_absolute(envelope: BackwardEnvelope) -> Callable[[Output], np.ndarray]:
    def absolute(out: Output) -> np.ndarray:
        unit = out.unit
        return envelope(_x64(out), _upstream(out).astype(np.float64), unit.probabilities(), unit.refs.stats, unit.fmt)
    return absolute


def _loss_gradient_reference(out: Output) -> OpReference:
    return out.unit.gradient(out.op, _upstream(out), _loss(out))


def _loss_backward_absolute(out: Output) -> np.ndarray:
    unit, loss = out.unit, _loss(out)
    coef, total = unit.coefficients()
    g = np.array([float(v) for v in upstream_scale(loss, _upstream(out), unit.x.shape[0])])
    stats = unit.refs.stats
    return cross_entropy_backward_absolute(_x64(out), coef, total, g, unit.probabilities(), stats.amax, stats.log_s,
                                           unit.fmt)


JUDGING: dict[tuple[str, str], Rule] = {
    ("softmax", "forward"): Rule(_forward_reference, _no_absolute),
    ("log_softmax", "forward"): Rule(_forward_reference, _no_absolute),
    ("logsumexp", "forward"): Rule(_forward_reference, _no_absolute),
    ("cross_entropy", "forward"): Rule(_loss_forward_reference, _loss_forward_absolute),
    ("softmax", "backward"): Rule(_gradient_reference, _backward_absolute(
        lambda x, dy, p, stats, fmt: softmax_backward_absolute(x, dy, p, stats.amax, fmt))),
    ("log_softmax", "backward"): Rule(_gradient_reference, _backward_absolute(
        lambda x, dy, p, stats, fmt: log_softmax_backward_absolute(x, dy, p, stats.amax, stats.log_s, fmt))),
    ("logsumexp", "backward"): Rule(_gradient_reference, _backward_absolute(
        lambda x, dy, p, stats, fmt: logsumexp_backward_absolute(x, dy, p, stats.amax, stats.log_s, fmt))),
    ("cross_entropy", "backward"): Rule(_loss_gradient_reference, _loss_backward_absolute),
}
"""(op, direction) -> how its output is judged."""


@dataclass
class Judgement:
    """What judging one output gave: the record's figures and verdict, and the element-level
    judgement behind them (reproduce prints one element of it)."""

    metrics: RecordMetrics
    verdict: str
    reasons: list[str]
    excerpt: dict | None
    """The input around the element the verdict is about first (input_excerpt)."""
    ref: OpReference
    elements: ElementJudgement
    located_x: np.ndarray
    """The input the locations point into: the input itself, or, for a reduced loss, its largest logit."""
    y: np.ndarray
    """The output judged, as float64 (a reduced loss as one value)."""


def judge(out: Output, gate: Gate) -> Judgement:
    """Judge one output by its (op, direction) rule against the gate."""
    # Envelopes on rows with infinities are infinite or NaN by design (those elements are
    # judged by class, not by ulps): no warnings for them.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        rule = JUDGING[(out.op, out.direction)]
        ref = rule.reference(out)
        absolute = rule.envelope(out)
        x, y = out.unit.x, out.y
        located_x = x
        if y.ndim == 0:  # a reduced loss: located at the largest logit
            x64 = x.astype(np.float64)
            y = y.reshape(1)
            located_x = np.nanmax(np.where(np.isnan(x64), -np.inf, x64), keepdims=True).reshape(1, 1)
        j = judge_elements(out.op, located_x, y, ref, out.unit.refs.stats, out.unit.fmt, absolute_envelope=absolute)
        metrics = summarize(out.op, located_x, y, ref, j, gate.ratio_limit)
        verdict, reasons = decide(metrics, gate)
        at = metrics.first_mismatch or metrics.worst  # a wrong class is what the verdict is about first
        excerpt = None
        if at is not None:
            if located_x is x:
                excerpt = input_excerpt(x, at.row, at.col)
            else:  # a reduced loss: point at the row holding the largest logit
                x64 = x.astype(np.float64)
                flat = np.where(np.isnan(x64), -np.inf, x64)
                excerpt = input_excerpt(x, int(np.unravel_index(np.argmax(flat), flat.shape)[0]), None)
    return Judgement(metrics, verdict, reasons, excerpt, ref, j, located_x, y)


EXCERPT_RADIUS = 3
"""Neighbours shown on each side of the column a finding points at."""


def input_excerpt(x: np.ndarray, row: int, col: int | None) -> dict:
    """The input row around ``col`` (or its first entries for a per-row result) and its largest entry."""
    xr = np.asarray(x, dtype=np.float64)[row]
    n = xr.size
    centre = col if col is not None else 0
    cols = set(range(max(0, centre - EXCERPT_RADIUS), min(n, centre + EXCERPT_RADIUS + 1)))
    if not np.isnan(xr).all():
        cols.add(int(np.nanargmax(xr)))
    return {"row": int(row), "n": int(n), "values": [[c, float(xr[c])] for c in sorted(cols)]}
