"""The one ranking of findings (results/ranking.py): its order, and that the terminal summary, the
Markdown and HTML reports and AuditReport list the same findings in the same order."""

from __future__ import annotations

import io

from rich.console import Console

import softaudit
from softaudit.judging.metrics import RecordMetrics
from softaudit.options import AuditOptions
from softaudit.reports.html_report import render_html
from softaudit.reports.markdown_report import render_markdown
from softaudit.reports.terminal import render
from softaudit.results.document import ResultsDocument
from softaudit.results.ranking import badness, worst_findings, worst_record
from softaudit.results.records import Record
from softaudit.runner.loop import AuditResult


def _rec(case: str, verdict: str, ratio: float | None = 2.0, *, candidate: str = "alpha", op: str = "softmax",
         direction: str = "forward", dtype: str = "float32", mismatches: int = 0, ulp: float | None = None,
         error: str | None = None) -> Record:
    metrics = None if error else RecordMetrics(elements=8, judged=8, class_mismatches=mismatches,
                                               max_ratio=ratio, max_ulp=ratio if ulp is None else ulp)
    return Record(candidate=candidate, target=f"{candidate}.py", op=op, dtype=dtype, case=case, family="f",
                  verdict=verdict, reasons=[f"{verdict.lower()} on {case}"], direction=direction, metrics=metrics,
                  error=error)


def test_badness_puts_a_broken_contract_then_wrong_classes_then_ratio_then_ulp() -> None:
    crash = _rec("a", "FAIL", error="raised ValueError")
    wrong = _rec("b", "FAIL", 1.0, mismatches=3)
    ratio = _rec("c", "FAIL", 50.0)
    ulp = _rec("d", "FAIL", 50.0, ulp=900.0)
    nan = _rec("e", "FAIL", float("nan"))
    assert sorted([nan, ratio, ulp, wrong, crash], key=badness, reverse=True) == [crash, wrong, ulp, ratio, nan]
    assert badness(nan) == (False, 0, 0.0, 0.0)


def test_fail_tier_then_rounds_per_candidate_op_direction_then_turns_then_badness() -> None:
    records = [
        _rec("a-sm-1", "FAIL", 10.0),
        _rec("a-sm-2", "FAIL", 30.0, dtype="bfloat16"),  # same candidate x op x direction: a repeat
        _rec("a-lse", "FAIL", 5.0, op="logsumexp"),
        _rec("a-warn", "WARN", 3.0),
        _rec("b-sm", "FAIL", 6.0, candidate="beta"),
        _rec("a-pass", "PASS", 0.5),
        _rec("a-skip", "SKIP", None),
    ]
    ranked = [r.case for r in worst_findings(records)]
    # Round 0: alpha's worst group leader (a-sm-2) and beta's (b-sm) take the first turn, alpha's
    # second leader (a-lse) the next; round 1: alpha's softmax repeat; then the WARN tier.
    assert ranked == ["a-sm-2", "b-sm", "a-lse", "a-sm-1", "a-warn"]
    assert [r.case for r in worst_findings(records, 2)] == ["a-sm-2", "b-sm"]
    assert worst_findings(records, 0) == []


def test_ties_keep_the_order_records_came_in() -> None:
    records = [_rec(f"t{i}", "FAIL", 7.0, op=op) for i, op in enumerate(("softmax", "logsumexp", "log_softmax"))]
    assert worst_findings(records) == records
    assert worst_findings(list(reversed(records))) == list(reversed(records))


def test_worst_record_is_the_most_severe_then_the_baddest() -> None:
    records = [_rec("p", "PASS", 0.9), _rec("w", "WARN", 3.0), _rec("f1", "FAIL", 5.0), _rec("f2", "FAIL", 9.0)]
    assert worst_record(records).case == "f2"
    assert worst_record([]) is None


def _mixed_records() -> list[Record]:
    """Two candidates, several groups, both tiers and every kind of badness; unique case names."""
    return [
        _rec("k01", "FAIL", 12.0),
        _rec("k02", "FAIL", 40.0, dtype="bfloat16"),
        _rec("k03", "FAIL", 8.0, op="logsumexp"),
        _rec("k04", "FAIL", 1.5, op="logsumexp", mismatches=4),
        _rec("k05", "WARN", 3.5),
        _rec("k06", "WARN", 2.5, op="logsumexp", direction="backward"),
        _rec("k07", "PASS", 0.5),
        _rec("k08", "FAIL", 6.0, candidate="beta"),
        _rec("k09", "FAIL", None, candidate="beta", op="cross_entropy", error="raised RuntimeError"),
        _rec("k10", "WARN", 3.9, candidate="beta"),
        _rec("k11", "FAIL", 7.0, candidate="beta", dtype="bfloat16"),
        _rec("k12", "WARN", 2.0, candidate="beta", op="log_softmax"),
    ]


def _order(text: str, marker: str, cases: list[str]) -> list[str]:
    """The cases in the order ``marker`` (with the case name in it) first appears in ``text``."""
    at = {c: text.find(marker.format(c)) for c in cases}
    return sorted((c for c in cases if at[c] >= 0), key=at.__getitem__)


def test_every_report_lists_the_same_findings_in_the_same_order() -> None:
    records = _mixed_records()
    cases = [r.case for r in records]
    expected = [r.case for r in worst_findings(records)]
    assert len(expected) == 11

    doc = ResultsDocument(records=records, options={"ratio_limit": 4.0, "seed": 0}, source="r.json")
    assert _order(render_markdown(doc, max_findings=50), "/{}: ", cases) == expected
    assert _order(render_html(doc, max_findings=50), "case <code>{}</code>", cases) == expected

    result = AuditResult(records=records, candidates=[], options=AuditOptions(), environment={}, seconds=0.0,
                         cache_hits=0, cache_misses=0)
    out = io.StringIO()
    render(result, Console(file=out, width=250), max_findings=50)
    findings_part = out.getvalue().split("Worst findings", 1)[1]
    assert _order(findings_part, " on {}: ", cases) == expected

    report = softaudit.AuditReport(result, "alpha")
    assert [r.case for r in report.failures + report.warnings] == expected

    # A short list is the ranking's head, wherever it is shown.
    assert _order(render_markdown(doc, max_findings=3), "/{}: ", cases) == expected[:3]
    assert _order(render_html(doc, max_findings=3), "case <code>{}</code>", cases) == expected[:3]
