"""How linear_cross_entropy's outputs are judged (docs/linear-cross-entropy.md#what-a-fail-means):
the loss against its certified reference (reference.linear_loss) under the fused loss's envelope
(judging.linear_envelope); backward, d_hidden, d_weight and d_bias each against theirs, the record's
verdict the worst of the three, every reason naming its tensor ("weight gradient: ...").

``LinearUnit`` is one (format, case) of the op: its inputs and the references computed for it
(cached on disk as the other ops' are)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from softaudit.cases.linear_inputs import LinearLossInputs, linear_summary
from softaudit.cases.model import Case
from softaudit.formats import Format
from softaudit.judging.linear_envelope import (
    float64_statistics,
    linear_ce_backward_absolute,
    linear_ce_forward_absolute,
    linear_ce_reduced_absolute,
)
from softaudit.judging.metrics import RecordMetrics, judge_elements, summarize
from softaudit.judging.rules import input_excerpt
from softaudit.judging.unit import exact_as_float64
from softaudit.judging.verdicts import SEVERITY, Gate, decide
from softaudit.reference import OpReference, ReferenceCache, RowStats
from softaudit.reference.linear_loss import linear_loss_gradient_reference, linear_loss_reference

OP = "linear_cross_entropy"

TENSOR_NAMES = {"hidden": "hidden gradient", "weight": "weight gradient", "bias": "bias gradient"}
"""How findings name each gradient of a backward record."""


@dataclass
class LinearUnit:
    """One (format, case) of linear_cross_entropy: its inputs, and references computed so far."""

    case: Case
    fmt: Format
    inp: LinearLossInputs
    cache: ReferenceCache
    seed: int
    uncertified: int = 0
    _loss: dict[str, OpReference] | None = None
    _grads: dict = field(default_factory=dict)
    _stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def summary(self) -> dict:
        return linear_summary(self.inp)

    def parameters(self) -> dict:
        """The case's loss parameters, as records show them."""
        inp = self.inp
        return {"reduction": inp.reduction, "ignore_index": inp.ignore_index, "label_smoothing": inp.label_smoothing,
                "z_loss": inp.z_loss, "softcap": inp.softcap, "bias": inp.bias is not None,
                "hidden_size": inp.hidden_size}

    def _key(self) -> list:
        inp = self.inp
        return [inp.hidden, inp.weight, inp.bias if inp.bias is not None else "no-bias", np.asarray(inp.target),
                f"{inp.ignore_index}/{inp.label_smoothing!r}/{inp.z_loss!r}/{inp.softcap!r}"]

    def loss_stored(self) -> bool:
        """Whether the loss references are in the cache's directory (prefetching skips such units)."""
        return self.cache.stored(self.cache.ops_key("linear-loss", self._key(), self.fmt))

    def loss_reference(self) -> dict[str, OpReference]:
        """"none", "mean" (absent when every token is ignored) and "sum" references of the loss."""
        if self._loss is None:
            def compute() -> tuple[dict[str, OpReference], int]:
                ref = linear_loss_reference(self.inp, self.fmt)
                return {"none": ref.none, "mean": ref.mean, "sum": ref.sum}, ref.uncertified

            self._loss, unc = self.cache.get_or_compute_ops("linear-loss", self._key(), self.fmt, compute)
            self.uncertified += unc
        return self._loss

    def gradients(self, dy: np.ndarray, reduction: str) -> dict[str, OpReference]:
        """"hidden", "weight" (and "bias") references for upstream ``dy`` under ``reduction``."""
        key = (reduction, dy.tobytes(), dy.shape)
        if key not in self._grads:
            inp = self._with_reduction(reduction)

            def compute() -> tuple[dict[str, OpReference], int]:
                g = linear_loss_gradient_reference(inp, dy, self.fmt)
                out = {"hidden": g.hidden, "weight": g.weight}
                if g.bias is not None:
                    out["bias"] = g.bias
                return out, g.uncertified

            ops, unc = self.cache.get_or_compute_ops("linear-vjp", [*self._key(), dy, reduction], self.fmt, compute)
            self.uncertified += unc
            self._grads[key] = ops
        return self._grads[key]

    def statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float64 (logits, p, lse) for the envelopes."""
        if self._stats is None:
            self._stats = float64_statistics(self.inp)
        return self._stats

    def _with_reduction(self, reduction: str) -> LinearLossInputs:
        return dataclasses.replace(self.inp, reduction=reduction)


@dataclass
class LinearJudgement:
    """A linear record's figures, verdict, reasons and excerpt."""

    metrics: RecordMetrics
    verdict: str
    reasons: list[str]
    excerpt: dict | None


def _no_stats(rows: int, n: int) -> RowStats:
    """Row statistics for judge_elements, unused when an absolute envelope is given."""
    return RowStats(amax=np.zeros(rows), log_s=np.zeros(rows), n=n)


def _judge(y: np.ndarray, ref: OpReference, absolute: np.ndarray, located: np.ndarray, fmt: Format,
           gate: Gate) -> LinearJudgement:
    """One tensor judged element by element; ``located`` (rows, n): what locations point into."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        j = judge_elements(OP, located, y, ref, _no_stats(*located.shape), fmt, absolute_envelope=absolute)
        metrics = summarize(OP, located, y, ref, j, gate.ratio_limit)
    verdict, reasons = decide(metrics, gate)
    at = metrics.first_mismatch or metrics.worst
    excerpt = input_excerpt(located, at.row, at.col) if at is not None else None
    return LinearJudgement(metrics, verdict, reasons, excerpt)


def judge_linear_forward(unit: LinearUnit, y: np.ndarray, reduction: str, gate: Gate) -> LinearJudgement:
    """A loss output: per token ((T,), located at each token's logits) or reduced (0-d, ``reduction``)."""
    refs = unit.loss_reference()
    logits, p, lse = unit.statistics()
    inp = unit.inp
    per_token = linear_ce_forward_absolute(inp, logits, p, lse, unit.fmt)
    if y.ndim != 0:
        return _judge(y, refs["none"], per_token, logits, unit.fmt, gate)
    kept = int(np.count_nonzero(inp.target != inp.ignore_index))
    denom = float(kept) if reduction == "mean" else 1.0
    loss = exact_as_float64(refs["none"])
    absolute = np.array([linear_ce_reduced_absolute(per_token, loss, denom, unit.fmt)])
    located = np.array([[float(np.max(logits))]]) if logits.size else np.zeros((1, 1))
    return _judge(y.reshape(1), refs["mean" if reduction == "mean" else "sum"], absolute, located, unit.fmt, gate)


def judge_linear_backward(unit: LinearUnit, dy: np.ndarray, reduction: str, parts: dict[str, np.ndarray | None],
                          gate: Gate) -> LinearJudgement:
    """d_hidden, d_weight and d_bias judged each against its reference; the worst decides."""
    refs = unit.gradients(dy, reduction)
    logits, p, lse = unit.statistics()
    inp = unit._with_reduction(reduction)
    envelopes = dict(zip(("hidden", "weight", "bias"), linear_ce_backward_absolute(inp, dy, logits, p, lse, unit.fmt)))
    located = {"hidden": inp.hidden.astype(np.float64), "weight": inp.weight.astype(np.float64),
               "bias": None if inp.bias is None else inp.bias.astype(np.float64).reshape(-1, 1)}
    judged: list[tuple[str, LinearJudgement]] = []
    for name in ("hidden", "weight", "bias"):
        if name not in refs:
            continue
        out, env, at = parts.get(name), envelopes[name], located[name]
        if out is None or env is None or at is None:
            continue
        judged.append((name, _judge(np.asarray(out, dtype=np.float64), refs[name], env, at, unit.fmt, gate)))
    worst_name, worst = max(judged, key=lambda nj: (SEVERITY[nj[1].verdict], nj[1].metrics.class_mismatches,
                                                     nj[1].metrics.max_ratio or 0.0))
    reasons = [f"{TENSOR_NAMES[name]}: {r}" for name, jg in sorted(judged, key=lambda nj: nj[0] != worst_name)
               for r in jg.reasons]
    excerpt = dict(worst.excerpt, tensor=worst_name) if worst.excerpt is not None else None
    return LinearJudgement(worst.metrics, worst.verdict, reasons, excerpt)
