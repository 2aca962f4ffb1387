"""Verdict tiers (DESIGN §6) and the one-line explanation of every finding.

FAIL: a hard failure (class mismatch, crash, wrong shape, modified input, an
undefined row the policy rejects) or a stability ratio above the gate's limit.
WARN: above the envelope but within the limit, or an undefined-row behaviour
the policy merely reports. PASS: otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from softaudit.envelope import DEFAULT_RATIO_LIMIT
from softaudit.metrics import Location, RecordMetrics

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

UNDEFINED_POLICIES: dict[str, frozenset[str] | None] = {
    "nan-or-zero": frozenset({"nan", "zero"}),
    "nan": frozenset({"nan"}),
    "zero": frozenset({"zero"}),
    "any": None,
}
"""Accepted behaviours on rows whose exact answer is undefined (fully masked, or a +inf entry).

"zero" means an all-zero softmax row, or an all -inf (or all 0) log_softmax row.
Under "any" nothing fails, and behaviours other than nan/zero are reported as WARN.
"""

DEFAULT_UNDEFINED_POLICY = "nan-or-zero"


@dataclass(frozen=True)
class Gate:
    """What the verdicts are judged against."""

    ratio_limit: float = DEFAULT_RATIO_LIMIT
    undefined_policy: str = DEFAULT_UNDEFINED_POLICY


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
    accepted = UNDEFINED_POLICIES[gate.undefined_policy]
    for behaviour, rows in sorted(m.undefined_rows.items()):
        if accepted is None:
            if behaviour not in ("nan", "zero"):
                warns.append(f"{rows} undefined row(s) (fully masked or +inf) returned {behaviour} values "
                             f"(policy 'any' accepts them)")
        elif behaviour not in accepted:
            fails.append(f"{rows} undefined row(s) (fully masked or +inf) returned {behaviour} values; "
                         f"policy '{gate.undefined_policy}' accepts {' or '.join(sorted(accepted))}")
    if m.worst is not None and m.max_ratio is not None and m.max_ratio > 1.0:
        w = m.worst
        detail = (f"worst at {where(w)}: {fmt_num(w.err_ulp)} ulp against an envelope of "
                  f"{fmt_num(w.envelope_ulp)} ulp (ratio {fmt_num(w.ratio)})")
        if m.max_ratio > gate.ratio_limit:
            fails.append(f"{_share(m.above_limit, m.judged)} exceed {fmt_num(gate.ratio_limit)}x the stability "
                         f"envelope; {detail}")
        else:
            warns.append(f"{_share(m.above_envelope, m.judged)} exceed the stability envelope "
                         f"(within the {fmt_num(gate.ratio_limit)}x limit); {detail}")
    if fails:
        return FAIL, fails + warns
    if warns:
        return WARN, warns
    return PASS, []
