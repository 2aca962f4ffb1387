"""Verdict tiers (docs/verdicts.md#verdict-tiers) and the one-line explanation of every finding.

FAIL: a hard failure (class mismatch, crash, wrong shape, modified input, an
undefined row the policy rejects) or a stability ratio above the gate's limit.
WARN: above the envelope but within the limit, or an undefined-row behaviour
the policy merely reports. PASS: otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from softaudit.judging.envelope import DEFAULT_RATIO_LIMIT
from softaudit.judging.metrics import Location, RecordMetrics

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

INTERPRETER_LIMITATION = "Triton interpreter limitation"
"""The first words of a SKIP's reason when Triton's CPU interpreter itself raised
(``InterpreterError``): the kernel could not be run on the CPU, which says nothing about its
arithmetic; audit it on a GPU (docs/verdicts.md#interpreter-limitations)."""


_INTERPRETER_SHORTCOMINGS = ("AttributeError(", "NotImplementedError(")
"""What Triton's interpreter wraps in InterpreterError when its own emulation falls short (a
Python float where it expects a tensor: ``'float' object has no attribute 'to'``; an operation
it does not implement). Whatever else it wraps stays the candidate's: a device assertion, an
index out of bounds (an illegal access on a GPU), a type error in the kernel (a compile error
on a GPU)."""


def interpreter_limitation(error: str | None) -> bool:
    """Whether a call's one-line error (``raised InterpreterError: AttributeError(...)``) is a
    shortcoming of Triton's interpreter itself rather than of the candidate's code or arithmetic."""
    prefix = "raised InterpreterError: "
    if not error or not error.startswith(prefix):
        return False
    return error[len(prefix):].startswith(_INTERPRETER_SHORTCOMINGS)


UNDEFINED_POLICIES: dict[str, frozenset[str] | None] = {
    "nan-or-zero": frozenset({"nan", "zero", "limit"}),
    "nan": frozenset({"nan"}),
    "zero": frozenset({"zero"}),
    "any": None,
    "jax": frozenset({"nan", "zero", "limit"}),
}
"""Accepted behaviours on rows whose exact answer is undefined (fully masked, or a +inf entry).

"zero" means an all-zero softmax row, or an all -inf (or all 0) log_softmax row. On a row holding
+inf, NaN at the +inf entries with 0 (or -inf) elsewhere counts as "nan", and the op's limit there
(1/k, -log k; log k or +inf for cross-entropy) as "limit", which the default accepts
(docs/special-values.md). Under "any" nothing fails, and behaviours other than nan/zero/limit are
reported as WARN. "jax" judges rows holding +inf as the default does, and fully masked rows by
MASKED_ROW_POLICIES.
"""

MASKED_ROW_POLICIES: dict[str, frozenset[str]] = {
    "jax": frozenset({"zero"}),
}
"""Policies with their own rule for fully masked rows (every entry -inf): "jax" is JAX's documented
convention for an all-False ``where`` (jax.nn.softmax: 0, jax.nn.log_softmax: -inf; a loss and
every gradient over such a row: 0), docs/special-values.md#jaxs-convention."""

DEFAULT_UNDEFINED_POLICY = "nan-or-zero"


def rejected_undefined(m: RecordMetrics, policy: str) -> list[tuple[str, int, str, frozenset[str]]]:
    """(behaviour, rows, kind, accepted) for each behaviour on undefined rows that ``policy``
    rejects; kind is "fully masked" for rows judged by MASKED_ROW_POLICIES, else "fully masked or
    +inf". Empty under "any"."""
    accepted = UNDEFINED_POLICIES[policy]
    if accepted is None:
        return []
    masked_rule = MASKED_ROW_POLICIES.get(policy)
    out: list[tuple[str, int, str, frozenset[str]]] = []
    for behaviour, rows in sorted(m.undefined_rows.items()):
        if masked_rule is None:
            if behaviour not in accepted:
                out.append((behaviour, rows, "fully masked or +inf", accepted))
            continue
        masked = m.masked_rows.get(behaviour, 0)
        if masked and behaviour not in masked_rule:
            out.append((behaviour, masked, "fully masked", masked_rule))
        if rows - masked and behaviour not in accepted:
            out.append((behaviour, rows - masked, "+inf", accepted))
    return out


@dataclass(frozen=True)
class Limits:
    """Limits set for some ops and formats (``[tool.softaudit.limits]``); None leaves a limit as is."""

    ratio: float | None = None
    """Stability-ratio limit: FAIL above it, WARN between 1 and it."""
    max_ulp: float | None = None
    """Largest error in ulps tolerated, on top of the stability envelope."""


@dataclass(frozen=True)
class Gate:
    """What the verdicts are judged against."""

    ratio_limit: float = DEFAULT_RATIO_LIMIT
    undefined_policy: str = DEFAULT_UNDEFINED_POLICY
    max_ulp: float | None = None
    """FAIL where the max error exceeds this many ulps (None: no such limit)."""
    strict: bool = False
    """WARN fails too (reported as FAIL with the WARN's reasons)."""
    limits: tuple[tuple[str, Limits], ...] = ()
    """Per-op and per-format overrides keyed "op", "format" or "op.format"."""

    def for_record(self, op: str, dtype: str) -> Gate:
        """The gate one record is judged by: the most specific limit wins, field by field
        ("op.format" over "op" over "format" over the gate's own)."""
        if not self.limits:
            return self
        table = dict(self.limits)
        ratio, max_ulp = self.ratio_limit, self.max_ulp
        for key in (dtype, op, f"{op}.{dtype}"):
            lim = table.get(key)
            if lim is not None:
                ratio = lim.ratio if lim.ratio is not None else ratio
                max_ulp = lim.max_ulp if lim.max_ulp is not None else max_ulp
        return Gate(ratio_limit=ratio, undefined_policy=self.undefined_policy, max_ulp=max_ulp, strict=self.strict)


def fmt_num(v: float | None) -> str:
    """Numbers as people read them in findings: full precision for values, short for ratios."""
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def fmt_value(v: float | None) -> str:
    """A format value, round-trippable (repr of the float64 that holds it)."""
    if v is None:
        return "-"
    if math.isnan(v) or math.isinf(v):
        return fmt_num(v)
    return repr(float(v))


def where(loc: Location) -> str:
    pos = f"row {loc.row}" + (f", col {loc.col}" if loc.col is not None else "")
    inp = "max input" if loc.col is None else "input"
    return f"{pos}: {inp} {fmt_value(loc.input)}, exact {loc.exact}, computed {fmt_value(loc.computed)}"


def describe(loc: Location) -> str:
    """An element as findings word it: where, its input, exact and computed values, and (when
    measured) its error against its envelope."""
    text = where(loc)
    if math.isfinite(loc.err_ulp):
        text += (f": {fmt_num(loc.err_ulp)} ulp against an envelope of {fmt_num(loc.envelope_ulp)} ulp "
                 f"(ratio {fmt_num(loc.ratio)})")
    return text


def _share(count: int, total: int) -> str:
    pct = 100.0 * count / total if total else 0.0
    return f"{count} / {total} elements ({pct:.1f}%)"


def decide(m: RecordMetrics, gate: Gate) -> tuple[str, list[str]]:
    """Verdict and reasons (most serious first) for a record whose call succeeded."""
    fails: list[str] = []
    warns: list[str] = []
    if m.class_mismatches:
        kinds = ", ".join(f"{k.split('->')[1]} where the exact value is {k.split('->')[0]} ({v})"
                          for k, v in sorted(m.mismatch_kinds.items(), key=lambda kv: -kv[1]))
        assert m.first_mismatch is not None
        fails.append(f"{_share(m.class_mismatches, m.elements)} have the wrong class: {kinds}; "
                     f"first at {where(m.first_mismatch)}")
    if UNDEFINED_POLICIES[gate.undefined_policy] is None:
        for behaviour, rows in sorted(m.undefined_rows.items()):
            if behaviour not in ("nan", "zero", "limit"):
                warns.append(f"{rows} undefined row(s) (fully masked or +inf) returned {behaviour} values "
                             f"(policy 'any' accepts them)")
    for behaviour, rows, kind, accepted in rejected_undefined(m, gate.undefined_policy):
        fails.append(f"{rows} undefined row(s) ({kind}) returned {behaviour} values; "
                     f"policy '{gate.undefined_policy}' accepts {' or '.join(sorted(accepted))}"
                     + (" there" if kind != "fully masked or +inf" else ""))
    if m.worst is not None and m.max_ratio is not None and m.max_ratio > 1.0:
        detail = f"worst at {describe(m.worst)}"
        if m.max_ratio > gate.ratio_limit:
            fails.append(f"{_share(m.above_limit, m.judged)} exceed {fmt_num(gate.ratio_limit)}x the stability "
                         f"envelope; {detail}")
        else:
            warns.append(f"{_share(m.above_envelope, m.judged)} exceed the stability envelope "
                         f"(within the {fmt_num(gate.ratio_limit)}x limit); {detail}")
    if gate.max_ulp is not None and m.max_ulp is not None and m.max_ulp > gate.max_ulp:
        detail = f"; worst at {where(m.worst)}" if m.worst is not None else ""
        fails.append(f"max error {fmt_num(m.max_ulp)} ulp exceeds the limit of {fmt_num(gate.max_ulp)} ulp{detail}")
    if fails:
        return FAIL, fails + warns
    if warns and gate.strict:
        return FAIL, [f"strict: {w}" for w in warns]
    if warns:
        return WARN, warns
    return PASS, []


def apply_relative_rule(records: list, baseline: str, factor: float, slack: float) -> int:
    """FAIL every other candidate's record whose max stability ratio exceeds ``factor`` x the baseline
    candidate's on the same op, direction, format and case, plus ``slack``; returns how many.

    Records are Record objects (results/records.py). The baseline's own records keep the envelope's verdict;
    where the baseline has no measured error (it crashed, was skipped, or every element had the
    wrong class), no relative judgement is made.
    """
    base = {(r.op, r.direction, r.dtype, r.case): r for r in records if r.candidate == baseline}
    failed = 0
    for r in records:
        if r.candidate == baseline or r.metrics is None or r.metrics.max_ratio is None:
            continue
        b = base.get((r.op, r.direction, r.dtype, r.case))
        if b is None or b.metrics is None or b.metrics.max_ratio is None:
            continue
        allowed = factor * b.metrics.max_ratio + slack
        if r.metrics.max_ratio > allowed:
            reason = (f"stability ratio {fmt_num(r.metrics.max_ratio)} exceeds {fmt_num(factor)}x the baseline "
                      f"{baseline}'s {fmt_num(b.metrics.max_ratio)} + {fmt_num(slack)} on the same input "
                      f"(max error {fmt_num(r.metrics.max_ulp)} ulp against {fmt_num(b.metrics.max_ulp)} ulp)")
            if r.verdict != FAIL:
                r.verdict, r.reasons = FAIL, [reason]
            else:
                r.reasons.append(reason)
            failed += 1
    return failed
