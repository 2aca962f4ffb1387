"""linear_cross_entropy's rules: the bug classes of a fused linear cross-entropy, read from its
records (which tensor fails: the loss, or the hidden, weight and bias gradients; the error against
the format's ulp of the logits; the pattern across formats) and settled by experiments on small
projections (experiments.token_count, logit_scale, smoothing_vocabulary).

The softmax family's rules (diagnose.RULES) read features this op's records do not have (rows of
scores, offsets, masks), so this op has rules of its own (docs/diagnosis.md#fused-linear-cross-entropy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from softaudit.diagnosis import experiments as X
from softaudit.diagnosis.evidence import PRECISION, SIXTEEN_BIT, RecordView, num, tensor_ratios
from softaudit.diagnosis.grouping import Group, fraction, make_cause, run_info
from softaudit.results.diagnoses import Cause, ExperimentRun

LinearRule = Callable[[Group], "Cause | list[Cause] | None"]
LINEAR_RULES: list[LinearRule] = []
"""The rules applied to linear_cross_entropy's groups, in order."""

WIDE = ("float32", "float64")


def linear_rule(fn: LinearRule) -> LinearRule:
    """Register ``fn`` as a rule of linear_cross_entropy."""
    LINEAR_RULES.append(fn)
    return fn


def tensor_outcome(res: X.ExperimentResult, suffix: str, tensor: str) -> float | None:
    """The ratio of ``tensor`` in an experiment's record: 0.0 when it passes, None without a record."""
    r = res.records.get(suffix)
    if r is None or r.get("verdict") == "SKIP":
        return None
    return tensor_ratios(r).get(tensor, 0.0)


def _show(x: float | None) -> str:
    return "-" if x is None else ("pass" if x == 0 else f"{x:.3g}")


def logit_error_scale(v: RecordView) -> float | None:
    """A forward record's worst error over u |z| min(|loss|, 1), z its token's largest logit: about 1
    to 2 when the logits were rounded to the format (u its unit roundoff), far below otherwise."""
    w, loc = v.worst_values(), v.raw.get("worst") or {}
    z = num(loc.get("input"))
    if w is None or z is None or not all(math.isfinite(x) for x in (*w, z)) or v.dtype not in PRECISION:
        return None
    c, e = w
    u = 2.0 ** -PRECISION[v.dtype]
    return abs(c - e) / (u * max(abs(z), 1.0) * max(min(abs(e), 1.0), 1e-30))


def _twins_pass(g: Group, hit: list[RecordView]) -> list[RecordView]:
    """float32 / float64 records of the failing records' cases that pass."""
    cases = {v.case for v in hit}
    return g.passes(lambda v: v.dtype in WIDE and v.case in cases)


@linear_rule
def _weight_accumulation(g: Group) -> Cause | None:
    if g.direction != "backward":
        return None
    hit = g.fails(lambda v: v.dtype in SIXTEEN_BIT and not v.error and bool({"weight", "bias"} & set(v.tensors))
                  and "hidden" not in v.tensors)
    if not hit:
        return None
    twins = _twins_pass(g, hit)
    names = sorted({t for v in hit for t in v.tensors})
    finding = (f"the {' and '.join(names)} gradient fails in {len(hit)} 16-bit record(s) while the hidden gradient "
               "passes" + (f"; float32/float64 pass {len(twins)}" if twins else ""))
    conf, runs, settled = 0.55 + (0.1 if twins else 0.0), [], None
    res = g.run(X.token_count, g.dtype_for(hit, ("bfloat16", "float16")))
    if res is not None:
        one, many = (tensor_outcome(res, f"tokens-{t}", "weight") for t in X.LINEAR_TOKENS)
        runs.append(run_info(res, f"weight gradient over 1 token: {_show(one)}, over 128 tokens: {_show(many)}"))
        if many and one == 0:
            conf, settled = 0.93, "token-count"
            finding += "; one token passes, 128 tokens fail"
        elif one:
            conf = 0.2   # wrong with a single chunk: not the accumulation across chunks
    return make_cause("weight-gradient-16bit-accumulation", conf, finding, hit, runs, settled or "records")


def _logit_signature(g: Group, v: RecordView) -> bool:
    if v.dtype not in SIXTEEN_BIT or v.error or v.hard:
        return False
    return "loss" in v.tensors if g.direction == "forward" else "hidden" in v.tensors


@linear_rule
def _logits_rounded(g: Group) -> Cause | None:
    hit = g.fails(lambda v: _logit_signature(g, v))
    if not hit:
        return None
    twins = _twins_pass(g, hit)
    which = "the loss" if g.direction == "forward" else "the hidden gradient"
    finding = f"{which} fails in {len(hit)} 16-bit record(s)"
    scales = [s for s in (logit_error_scale(v) for v in hit) if s is not None] if g.direction == "forward" else []
    fitting = [s for s in scales if 0.05 <= s <= 8]
    if scales:
        finding += f"; the worst error is {max(fitting or scales):.2g} u |z| (u: the format's unit roundoff)"
    conf = 0.5 + 0.15 * fraction(len(fitting), len(scales)) + (0.1 if twins else 0.0)
    if twins:
        finding += f"; float32/float64 pass {len(twins)}"
    runs: list[ExperimentRun] = []
    settled = None
    dtype = g.dtype_for(hit, ("bfloat16", "float16"))
    if g.direction == "backward":   # dL/dz rounded: the hidden gradient is wrong even over a single token
        one_res = g.run(X.token_count, dtype)
        if one_res is not None:
            one = tensor_outcome(one_res, "tokens-1", "hidden")
            runs.append(run_info(one_res, f"hidden gradient over 1 token: {_show(one)}"))
            if one:
                conf, settled = 0.9, "token-count"
                finding += "; it fails over a single token too (no accumulation involved)"
            elif one == 0:
                conf = min(conf, 0.4)
        return make_cause("logits-rounded-16bit", conf, finding, hit, runs, settled or "records")
    res = g.run(X.logit_scale, dtype)
    if res is not None:
        small, large = (res.ratio(f"margin-{m:g}") for m in X.LOGIT_MARGINS)
        runs.append(run_info(res, f"ratio {_show(small)} at target logit 4, {_show(large)} at 32"))
        if large is not None and large != math.inf and large > 1 and large > 3 * max(small or 0.0, 0.05):
            conf, settled = 0.93, "logit-scale"
            finding += "; the error grows with the logits"
        elif large is not None and large <= 1:
            conf = 0.25
    return make_cause("logits-rounded-16bit", conf, finding, hit, runs, settled or "records")


def _infinite(r: RecordView | Mapping[str, Any]) -> bool:
    kinds = r.kinds if isinstance(r, RecordView) else (r.get("mismatch_kinds") or {})
    return any(k.startswith("finite->") for k in kinds)


def smoothed(v: RecordView) -> bool:
    """The record's case has label smoothing."""
    return float(v.params.get("label_smoothing") or 0) > 0


@linear_rule
def _smoothing_overflow(g: Group) -> Cause | None:
    hit = g.fails(lambda v: smoothed(v) and _infinite(v))
    if not hit:
        return None
    formats = {v.dtype for v in hit}
    plain = [v for v in g.views if v.dtype in formats and not smoothed(v) and not _infinite(v)]
    finding = (f"inf/NaN loss on finite inputs with label smoothing in {len(hit)} record(s) "
               f"({', '.join(sorted(formats))})" + (f"; {len(plain)} unsmoothed record(s) are finite" if plain else ""))
    conf, runs, settled = 0.6 + (0.1 if plain else 0.0), [], None
    res = g.run(X.smoothing_vocabulary, g.dtype_for(hit, ("float16", "bfloat16")))
    if res is not None:
        small, large = (res.records.get(f"vocab-{n}") for n in X.SMOOTHING_VOCABS)
        if small is not None and large is not None:
            s_inf, l_inf = _infinite(small), _infinite(large)
            runs.append(run_info(res, f"smoothing over 1024 classes {'inf/NaN' if s_inf else 'finite'}, "
                                      f"over 16384 {'inf/NaN' if l_inf else 'finite'}"))
            if l_inf and not s_inf:
                conf, settled = 0.92, "smoothing-vocabulary"
            elif not l_inf:
                conf = 0.25
    return make_cause("smoothing-sum-overflow", conf, finding, hit, runs, settled or "records")


@linear_rule
def _sequential_summation(g: Group) -> Cause | None:
    hit = g.fails(lambda v: v.dtype in WIDE and not v.hard and not v.error and v.n >= 4096)
    if not hit:
        return None
    short_ok = g.passes(lambda v: v.dtype in WIDE and v.n < 4096)
    finding = f"float32/float64 records over vocabularies >= 4096 fail in {len(hit)} record(s)" + (
        f"; {len(short_ok)} smaller vocabularies pass" if short_ok else "")
    # No experiment: on small projections torch's lane-by-lane log_softmax sum stays inside the
    # envelope (docs/diagnosis.md#fused-linear-cross-entropy); the records alone name it, softly.
    return make_cause("sequential-summation", 0.45 + (0.1 if short_ok else 0.0), finding, hit,
                      settled_by="records (float32/float64 over large vocabularies)")
