"""The one ranking of findings: which FAIL and WARN records are the worst, and in what order.

The terminal summary, the Markdown and HTML reports and ``AuditReport.failures`` / ``.warnings``
all list findings in this order, so one results file gives one list wherever it is read.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from softaudit.judging.verdicts import FAIL, SEVERITY, WARN
from softaudit.results.records import Record

FINDING_VERDICTS = (FAIL, WARN)
"""The verdicts that make a record a finding, in tier order."""


def _figure(v: float | None) -> float:
    """A metric as a sort key: a missing or NaN figure counts as 0."""
    return 0.0 if v is None or math.isnan(v) else float(v)


def badness(record: Record) -> tuple[bool, int, float, float]:
    """How bad one record is, larger worse, compared in this order: a broken contract (a crash,
    an exception, a modified input), the count of wrong-class elements (NaN or ±inf where the exact
    value is finite, and the reverse), the stability ratio, the max ulp error."""
    m = record.metrics
    broken = record.error is not None or record.input_modified
    if m is None:
        return (broken, 0, 0.0, 0.0)
    return (broken, m.class_mismatches, _figure(m.max_ratio), _figure(m.max_ulp))


def worst_record(records: Sequence[Record]) -> Record | None:
    """The single worst of ``records`` (any verdict): the most severe verdict, then the greatest
    :func:`badness`, then the first in ``records``; None when there are none."""
    return max(records, key=lambda r: (SEVERITY.get(r.verdict, 0), badness(r)), default=None)


def worst_findings(records: Sequence[Record], limit: int | None = None) -> list[Record]:
    """The FAIL and WARN records of ``records``, worst first; only the first ``limit`` when given.

    The order, each key breaking the previous one's ties:

    1. verdict tier: every FAIL before any WARN;
    2. round: within a tier, the worst record of every candidate × op × direction comes before the
       second worst of any (the same failure in another format, or on a like case, is usually the
       same bug: a short list shows each broken thing once before it repeats one);
    3. turn: within a round, the candidates take turns, each one's worst before any one's second,
       so that one bad candidate cannot hide another;
    4. :func:`badness`, worst first: a broken contract, wrong-class elements, stability ratio, ulp;
    5. position in ``records`` (the audit's own, reproducible order): a stable tiebreak.
    """
    tier = {verdict: i for i, verdict in enumerate(FINDING_VERDICTS)}
    findings = [(i, r) for i, r in enumerate(records) if r.verdict in tier]
    # Worst first within each tier; rounds and turns are counted in this order.
    by_badness = sorted(findings, key=lambda ir: (tier[ir[1].verdict], _descending(badness(ir[1])), ir[0]))
    rounds: Counter[tuple[str, str, str, str]] = Counter()
    turns: Counter[tuple[str, int, str]] = Counter()
    keyed = []
    for i, r in by_badness:
        group = (r.verdict, r.candidate, r.op, r.direction)
        round_ = rounds[group]
        rounds[group] += 1
        turn = turns[(r.verdict, round_, r.candidate)]
        turns[(r.verdict, round_, r.candidate)] += 1
        keyed.append(((tier[r.verdict], round_, turn, _descending(badness(r)), i), r))
    keyed.sort(key=lambda kr: kr[0])
    ranked = [r for _, r in keyed]
    return ranked if limit is None else ranked[:max(limit, 0)]


def _descending(key: tuple[bool, int, float, float]) -> tuple[float, ...]:
    """``key`` negated, so that an ascending sort puts the worst first."""
    return tuple(-float(v) for v in key)
