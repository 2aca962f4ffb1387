"""The audit of linear_cross_entropy on one (format, case): its inputs drawn once, each candidate
called forward and backward, each output judged (softaudit.judging.linear_rules) into a record."""

from __future__ import annotations

import numpy as np

from softaudit.candidates.calling import CallRequest
from softaudit.cases.inputs import NotApplicable, upstream
from softaudit.cases.linear_inputs import LinearLossInputs, linear_inputs
from softaudit.cases.model import Case
from softaudit.formats import Format, to_float64
from softaudit.judging.linear_rules import OP, LinearUnit, judge_linear_backward, judge_linear_forward
from softaudit.judging.verdicts import FAIL, INTERPRETER_LIMITATION, PASS, SKIP, Gate, interpreter_limitation
from softaudit.ops import backward_name
from softaudit.options import AuditOptions
from softaudit.reference import ReferenceCache
from softaudit.results.records import Record
from softaudit.runner.isolation import CandidateInfo, Executor


def linear_records(executor: Executor, candidates: list[CandidateInfo], directions: list[str], fmt: Format,
                   case: Case, options: AuditOptions, cache: ReferenceCache) -> tuple[list[Record], int]:
    """Every record of one (format, case) of linear_cross_entropy, and the reference elements left uncertified."""
    try:
        inp = linear_inputs(case, fmt, seed=options.seed)
    except NotApplicable as exc:
        return [_record(c, d, fmt, case, verdict=SKIP, reasons=[exc.reason]) for c in candidates for d in directions], 0
    unit = LinearUnit(case, fmt, inp, cache, options.seed)
    records = [linear_record(executor, c, d, unit, options.gate.for_record(OP, fmt.name))
               for c in candidates for d in directions]
    return records, unit.uncertified


def _record(c: CandidateInfo, direction: str, fmt: Format, case: Case, verdict: str = PASS,
            reasons: list[str] | None = None, unit: LinearUnit | None = None) -> Record:
    return Record(candidate=c.name, target=c.target, op=OP, dtype=fmt.name, case=case.name, family=case.family,
                  verdict=verdict, reasons=reasons or [], direction=direction, case_description=case.description,
                  parameters=unit.parameters() if unit else {}, input_summary=unit.summary() if unit else {})


def keyword_function(c: CandidateInfo, direction: str) -> str:
    """The function that receives the keywords: the forward (also through autograd), or the explicit backward."""
    if direction == "forward" or c.backward.get(OP) == "autograd":
        return OP
    return backward_name(OP)


def needed_keywords(inp: LinearLossInputs, function: str) -> list[str]:
    """The keywords a call must pass for the case to mean what it says: those away from their
    neutral values (ignore_index -100, reduction "mean"), and ``bias`` when the case has one (the
    explicit backward takes bias positionally)."""
    needed = [k for k in inp.keywords() if k not in ("ignore_index", "reduction")]
    if inp.ignore_index != -100:
        needed.append("ignore_index")
    if inp.reduction != "mean":
        needed.append("reduction")
    if inp.bias is not None and function == OP:
        needed.append("bias")
    return needed


def skip_reason(c: CandidateInfo, direction: str, inp: LinearLossInputs) -> str | None:
    """Why this candidate cannot be audited on this case in this direction, or None."""
    if direction == "backward" and OP not in c.backward:
        return c.backward_missing.get(OP, f"no backward pass for {OP}")
    fn = keyword_function(c, direction)
    accepted = set(c.keywords.get(fn, ()))
    missing = [k for k in needed_keywords(inp, fn) if k not in accepted]
    if missing:
        return f"{fn} takes no {', '.join(missing)} keyword, which this case needs"
    return None


def linear_record(executor: Executor, c: CandidateInfo, direction: str, unit: LinearUnit, gate: Gate) -> Record:
    """One record: the call, its references, the verdict."""
    inp, fmt = unit.inp, unit.fmt
    rec = _record(c, direction, fmt, unit.case, unit=unit)
    reason = skip_reason(c, direction, inp)
    if reason is not None:
        rec.verdict, rec.reasons = SKIP, [reason]
        return rec
    takes_reduction = "reduction" in c.keywords.get(keyword_function(c, direction), ())
    reduction = inp.reduction if takes_reduction else "mean"
    dy = None
    if direction == "backward":
        dy = upstream(unit.case, fmt, (inp.tokens,) if reduction == "none" else (), seed=unit.seed)
    res = executor.call(c, CallRequest(op=OP, direction=direction, x=inp.hidden, fmt_name=fmt.name, linear=inp, dy=dy))
    rec.seconds, rec.output_dtype, rec.input_modified = res.seconds, res.output_dtype, res.input_modified
    key = OP if direction == "forward" else backward_name(OP)
    rec.notes = list(c.notes.get(key, ())) + list(res.notes)
    label = OP if direction == "forward" else f"{OP} backward"
    if res.unsupported:
        rec.verdict, rec.reasons = SKIP, [res.unsupported]
        return rec
    if res.raised and interpreter_limitation(res.error) and not res.input_modified:
        rec.error = res.error
        rec.verdict, rec.reasons = SKIP, [f"{INTERPRETER_LIMITATION}: {label} {res.error} "
                                          "(Triton's CPU interpreter cannot run this; not a finding: audit on a GPU)"]
        return rec
    if res.error is not None or res.output is None:
        rec.error = res.error or "returned no output"
        rec.verdict, rec.reasons = FAIL, [f"{label} {rec.error}"]
    elif direction == "forward":
        y = to_float64(np.asarray(res.output))
        judged = judge_linear_forward(unit, y, reduction if y.ndim == 0 else "none", gate)
        rec.parameters = {**rec.parameters, "reduction": reduction if y.ndim == 0 else "none"}
        rec.metrics, rec.verdict, rec.reasons, rec.excerpt = judged.metrics, judged.verdict, judged.reasons, judged.excerpt
    else:
        assert dy is not None
        judged = judge_linear_backward(unit, dy, reduction, dict(res.parts), gate)
        rec.parameters = {**rec.parameters, "reduction": reduction}
        rec.metrics, rec.verdict, rec.reasons, rec.excerpt = judged.metrics, judged.verdict, judged.reasons, judged.excerpt
    if res.input_modified:
        rec.verdict = FAIL
        rec.reasons.insert(0, f"{label} modified its input")
    return rec
