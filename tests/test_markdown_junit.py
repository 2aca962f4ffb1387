"""The Markdown (pull-request comment) and JUnit XML reports: structure, counts and escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from softaudit.formats import FORMATS
from softaudit.judging.metrics import Location, RecordMetrics
from softaudit.judging.verdicts import FAIL, PASS, SKIP, WARN
from softaudit.ops import DIRECTIONS, OPS
from softaudit.options import AuditOptions, CacheOptions, WorkerOptions
from softaudit.reports.junit_report import render_junit
from softaudit.reports.markdown_report import md_code, md_text, render_markdown
from softaudit.results.document import ResultsDocument, rerun_command
from softaudit.results.records import Record
from softaudit.results.schema import document_of
from softaudit.runner.loop import run_audit

FAULTS = Path(__file__).parent / "fixtures" / "faults"
HOSTILE = "<img src=x onerror=alert(1)>"
CDATA_END = "c]]>d\x07e"
"""A case name with a CDATA terminator and a BEL control character (illegal in XML 1.0)."""

GFM = MarkdownIt("commonmark").enable("table")
"""A CommonMark renderer with GFM tables and raw HTML on, as GitHub has them."""


@pytest.fixture(scope="module")
def audit_doc(softaudit_cache_dir: Path) -> ResultsDocument:
    """A tiny real audit: naive (FAIL and PASS), a candidate that raises (FAIL with an error; its
    backward is SKIP) and one whose module fails to import."""
    opts = AuditOptions(case_patterns=["offset-plus-1e3"], formats=[FORMATS["float32"]], ops=["log_softmax"],
                        worker=WorkerOptions(isolated=False), cache=CacheOptions(directory=softaudit_cache_dir))
    result = run_audit(["builtin:naive", str(FAULTS / "raises.py"), str(FAULTS / "import_error.py")], opts)
    return document_of(result)


def _loc(computed: float = float("nan"), err: float = float("nan"), ratio: float = float("nan")) -> Location:
    return Location(row=1, col=2, input=3.0, computed=computed, rounded_exact=0.5, exact="0.50000000000000001",
                    err_ulp=err, envelope_ulp=2.0, ratio=ratio)


def _record(candidate: str = "cand", op: str = "softmax", direction: str = "forward", dtype: str = "float32",
            case: str = "case-a", verdict: str = PASS, reasons: list[str] | None = None, **kw: object) -> Record:
    metrics = kw.pop("metrics", None)
    if metrics is not None or verdict == SKIP:
        pass
    elif verdict == FAIL and "error" not in kw:
        metrics = RecordMetrics(elements=8, judged=8, class_mismatches=8, mismatch_kinds={"finite->nan": 8},
                                first_mismatch=_loc(), nan_out=8)
    elif verdict in (PASS, WARN):
        ratio = 2.0 if verdict == WARN else 0.5
        metrics = RecordMetrics(elements=8, judged=8, class_mismatches=0, max_ulp=ratio * 2, max_ratio=ratio,
                                worst=_loc(computed=0.5, err=ratio * 2, ratio=ratio))
    return Record(candidate=candidate, target=f"{candidate}.py", op=op, dtype=dtype, case=case, family="fam",
                  verdict=verdict, reasons=list(reasons or []), direction=direction, metrics=metrics, seconds=0.25,
                  **kw)  # type: ignore[arg-type]


def _doc(records: list[Record]) -> ResultsDocument:
    return ResultsDocument(records=records, environment={"softaudit": "0.1.0", "torch": None, "numpy": "2.0",
                                                         "device": "cpu", "seed": 0},
                           options={"seed": 0, "undefined_policy": "nan-or-zero"}, source="r.json")


def _big_doc() -> ResultsDocument:
    """Two candidates x every op (the five of OPS), direction and two formats (40 table rows); four rows fail."""
    records = []
    for cand in ("alpha", "beta"):
        for op in OPS:
            for direction in DIRECTIONS:
                for dtype in ("float32", "bfloat16"):
                    fails = cand == "beta" and direction == "forward" and dtype == "float32" and op != "softmax"
                    records.append(_record(cand, op, direction, dtype, "case-a", FAIL if fails else PASS,
                                           [f"{op} went wrong | badly"] if fails else []))
                    records.append(_record(cand, op, direction, dtype, "case-b", PASS))
    return _doc(records)


def _hostile_doc() -> ResultsDocument:
    return _doc([
        _record(HOSTILE, case=CDATA_END, verdict=FAIL, reasons=["8 / 8 wrong | class <b>bold</b>\x01 here\ud800\nsecond line"]),
        _record(HOSTILE, case="ok", verdict=PASS),
        _record("my.kernel", op="logsumexp", case=CDATA_END, verdict=SKIP, reasons=["takes no `dim` | keyword"]),
    ])


# --- JUnit ------------------------------------------------------------------


JUNIT_CHILDREN = {"testsuites": {"testsuite"}, "testsuite": {"properties", "testcase", "system-out", "system-err"},
                  "properties": {"property"}, "testcase": {"skipped", "error", "failure", "system-out", "system-err"}}
"""What the common JUnit schema (Jenkins' junit-10.xsd, which GitLab and GitHub readers follow) allows."""


def _junit(doc: ResultsDocument) -> ET.Element:
    """Render, parse and check the shape against the common schema."""
    text = render_junit(doc)
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites"
    for element in root.iter():
        assert {child.tag for child in element} <= JUNIT_CHILDREN.get(element.tag, set()), element.tag
        if element.get("time") is not None:
            assert re.fullmatch(r"\d+\.\d+", element.get("time"))
    for suite in root:
        assert suite[0].tag == "properties"
        assert all(suite.get(key, "").isdigit() for key in ("tests", "failures", "errors", "skipped"))
    return root


def test_junit_counts_follow_the_records(audit_doc: ResultsDocument) -> None:
    root = _junit(audit_doc)
    cases = root.findall("./testsuite/testcase")
    counts = audit_doc.counts()
    assert len(cases) == len(audit_doc.records)
    assert len(root.findall("./testsuite/testcase/failure")) == counts[FAIL] > 0
    assert len(root.findall("./testsuite/testcase/skipped")) == counts[SKIP] > 0
    assert not root.findall(".//error")
    assert root.get("tests") == str(len(audit_doc.records)) and root.get("failures") == str(counts[FAIL])
    for suite in root.findall("testsuite"):
        mine = [r for r in audit_doc.records if r.candidate == suite.get("name")]
        assert suite.get("tests") == str(len(mine)) == str(len(suite.findall("testcase")))
        assert suite.get("failures") == str(sum(r.verdict == FAIL for r in mine))
        assert suite.get("skipped") == str(sum(r.verdict == SKIP for r in mine))
        props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
        assert props["softaudit"] == audit_doc.environment["softaudit"] and props["seed"] == "0"


def test_junit_failure_carries_the_first_reason_and_the_rerun_command(audit_doc: ResultsDocument) -> None:
    root = _junit(audit_doc)
    by_key = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    for r in audit_doc.records:
        key = (f"softaudit.{r.candidate}", "import") if r.op == "import" else \
            (f"softaudit.{r.candidate}.{r.op}.{r.direction}.{r.dtype}", r.case)
        case = by_key[key]
        assert case.get("time") == f"{r.seconds:.6f}"
        failure = case.find("failure")
        if r.verdict != FAIL:
            assert failure is None
            continue
        assert failure.get("message") == r.reasons[0] and "\n" not in failure.get("message")
        assert rerun_command(r, audit_doc) in failure.text
        expected = "import" if r.op == "import" else "crash" if r.error else "wrong-class"
        assert failure.get("type") == expected, r.id
    crash = next(r for r in audit_doc.records if r.error and r.op != "import")
    assert crash.error in by_key[(f"softaudit.{crash.candidate}.{crash.op}.{crash.direction}.{crash.dtype}",
                                  crash.case)].find("failure").text


def test_junit_warn_passes_with_a_note_and_skip_gives_the_reason() -> None:
    doc = _doc([_record(verdict=WARN, reasons=["3 / 8 elements exceed the stability envelope"]),
                _record(case="case-b", verdict=SKIP, reasons=["no backward"])])
    warn, skip = _junit(doc).iter("testcase")
    assert warn.find("failure") is None and warn.find("skipped") is None
    assert warn.find("system-out").text.startswith("WARN: 3 / 8 elements exceed the stability envelope")
    assert skip.find("skipped").get("message") == "no backward"


def test_junit_hostile_names_round_trip_as_text() -> None:
    root = _junit(_hostile_doc())
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {HOSTILE, "my.kernel"}
    failing = suites[HOSTILE].find("testcase")
    assert failing.get("name") == "c]]>de"  # the BEL is removed, the rest is kept as text
    message = failing.find("failure").get("message")
    assert message == "8 / 8 wrong | class <b>bold</b> here second line"
    assert f"  - {message}\n" in failing.find("failure").text  # every reason on one line of the body
    dotted = suites["my.kernel"].find("testcase")
    assert dotted.get("classname") == "softaudit.my_kernel.logsumexp.forward.float32"
    assert dotted.find("skipped").get("message") == "takes no `dim` | keyword"


# --- Markdown ---------------------------------------------------------------


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every table of the rendered report: its rows (header first), each as its cells' text."""
    html = GFM.render(markdown)
    return [[[unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, re.S)]
             for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
            for table in re.findall(r"<table>(.*?)</table>", html, re.S)]


def _table_rows(markdown: str) -> list[list[str]]:
    return [row for table in _tables(markdown) for row in table]


_CELL_BORDER = re.compile(r"(?<!\\)(?:\\\\)*\|")
"""A "|" that separates cells: not escaped (preceded by an even number of backslashes)."""


def _summary_cells(markdown: str) -> list[list[str]]:
    return [cells for cells in _table_rows(markdown) if cells[0] != "candidate" and len(cells) == 10]


def test_short_markdown_lists_failing_rows_and_counts_the_rest() -> None:
    doc = _big_doc()
    text = render_markdown(doc)
    assert text.startswith("❌ **softaudit: FAIL** — 4 of 80 records fail (2 candidates, float32/bfloat16)")
    rows = _summary_cells(text)
    assert sorted((c[0], c[1], c[2], c[3]) for c in rows) == sorted(
        ("beta", op, "forward", "float32") for op in OPS if op != "softmax")
    assert all("FAIL" in c[4] for c in rows)
    assert "36 rows that pass" in text
    assert "**Worst findings**" in text
    for r in (r for r in doc.records if r.verdict == FAIL):
        assert f"rerun: {md_code(rerun_command(r, doc))}" in text
    assert len(text.splitlines()) < 60


def test_short_markdown_of_a_huge_failing_run_stays_a_comment() -> None:
    records = [_record(f"cand{i}", op, direction, dtype, "case-a", FAIL, ["wrong"])
               for i in range(3) for op in OPS for direction in DIRECTIONS for dtype in ("float32", "bfloat16")]
    text = render_markdown(_doc(records))
    assert len(text.splitlines()) <= 60
    assert len(_summary_cells(text)) == 25 and "35 more FAIL/WARN rows" in text


def test_short_findings_do_not_let_one_candidate_hide_another() -> None:
    big = RecordMetrics(elements=999, judged=999, class_mismatches=999, first_mismatch=_loc())
    records = [_record("loud", op, direction, dtype, "case-a", FAIL, ["many"], metrics=big)
               for op in OPS for direction in DIRECTIONS for dtype in ("float32", "bfloat16")]
    records.append(_record("quiet", "softmax", "forward", "float16", "case-q", FAIL, ["few"]))
    text = render_markdown(_doc(records), max_findings=3)
    findings = [line for line in text.splitlines() if line.startswith("- **FAIL**")]
    assert len(findings) == 3 and any(line.startswith("- **FAIL** quiet/") for line in findings)
    assert len({tuple(line.split("/")[1:3]) for line in findings if "loud/" in line}) == 2  # not float32 and bfloat16 of one


def test_short_markdown_shows_a_small_table_whole() -> None:
    doc = _doc([_record(case="a"), _record(op="logsumexp", case="b", verdict=FAIL, reasons=["bad"])])
    rows = _summary_cells(render_markdown(doc))
    assert [(c[1], c[4]) for c in rows] == [("softmax", "✅ PASS"), ("logsumexp", "❌ FAIL")]


def test_complete_markdown_lists_every_row_finding_skip_and_environment() -> None:
    doc = _big_doc()
    doc.records.append(_record("beta", case="case-c", verdict=SKIP, reasons=["needs | a keyword"]))
    text = render_markdown(doc, complete=True)
    assert len(_summary_cells(text)) == 40
    assert text.count("- **FAIL**") == 4
    assert ["beta", "needs | a keyword", "1"] in _table_rows(text)
    assert ["numpy", "2.0"] in _table_rows(text) and ["torch", "-"] in _table_rows(text)


def test_markdown_keeps_hostile_names_inert() -> None:
    doc = _hostile_doc()
    for text in (render_markdown(doc), render_markdown(doc, complete=True)):
        text.encode("utf-8")  # writable: the lone surrogate is gone
        html = GFM.render(text)
        assert "<img" not in html and "<b>" not in html
        outside_code = re.sub(r"(`+).*?\1", "", text)
        assert "<img" not in outside_code and "<b>" not in outside_code
        assert HOSTILE in unescape(re.sub(r"<[^>]+>", "", html))
        for block in re.findall(r"(?:^\|.*\n)+", text, re.M):  # a "|" in a name or reason adds no cell
            assert len({len(_CELL_BORDER.findall(line)) for line in block.splitlines()}) == 1, block
        assert any(cells[0] == HOSTILE and cells[-2] == CDATA_END.replace("\x07", "") for cells in _table_rows(text))
    assert "8 / 8 wrong | class <b>bold</b> here second line" in unescape(re.sub(r"<[^>]+>", "", GFM.render(text)))
    assert ["my.kernel", "takes no `dim` | keyword", "1"] in _table_rows(text)


@pytest.mark.parametrize("text", [
    "a*b*_c_ [x](y) ![i](j) ~~s~~ `z` & &amp; # h",
    HOSTILE + " | ]]> \\ \\| \\` end",
])
def test_md_text_renders_back_to_the_text(text: str) -> None:
    html = GFM.render(md_text(text))
    assert html.startswith("<p>") and unescape(html[3:-5]) == text
    cell = _table_rows(f"| h |\n|---|\n| {md_text(text)} |")
    assert cell == [["h"], [text]]


@pytest.mark.parametrize("text", ["plain", "a `tick`", "``double`` and `single`", "`edge`", "pipe | x"])
def test_md_code_is_one_code_span_of_the_text(text: str) -> None:
    assert GFM.render(md_code(text)) == f"<p><code>{text.replace('&', '&amp;')}</code></p>\n"
    assert _table_rows(f"| h |\n|---|\n| {md_code(text, in_table=True)} |") == [["h"], [text]]
    assert md_code("two\nlines") == "`two lines`"


def test_the_relative_rules_baseline_is_reported_but_not_counted_as_failing():
    """A baseline's FAILs do not set the exit code: the JUnit counts and the Markdown verdict agree."""
    import xml.etree.ElementTree as ET

    from softaudit.reports.junit_report import render_junit
    from softaudit.reports.markdown_report import render_markdown
    from softaudit.results.document import ResultsDocument
    from softaudit.results.records import Record

    def rec(candidate: str, verdict: str) -> Record:
        return Record(candidate=candidate, target=candidate, op="softmax", dtype="float32", case="c", family="f",
                      verdict=verdict, reasons=["bad"] if verdict == "FAIL" else [])

    doc = ResultsDocument(records=[rec("builtin:torch", "FAIL"), rec("mine", "PASS")],
                          options={"baseline": "builtin:torch"})
    root = ET.fromstring(render_junit(doc))
    assert root.get("failures") == "0" and root.find(".//failure") is None
    assert "baseline of the relative rule, not gated" in root.find(".//system-out").text
    head = render_markdown(doc).splitlines()[0]
    assert "softaudit: PASS" in head and "baseline builtin:torch" in head and "1 of its records fail" in head


def _speed_doc() -> ResultsDocument:
    """Speed for two candidates: "fast" timed at two shapes (one line not timed at one shape),
    "hostile" timed nowhere but named with markup."""
    from softaudit.results.records import SpeedRecord

    def sp(cand: str, op: str, direction: str, shape: tuple[int, int], median: float | None,
           pct: float | None = None) -> SpeedRecord:
        figures = None if median is None else {"median_s": median, "pct_copy_bandwidth": pct}
        return SpeedRecord(cand, f"{cand}.py", op, direction, "float32", shape, figures,
                           None if median is not None else "softmax_backward is not defined")

    doc = _doc([_record("fast"), _record(HOSTILE)])
    doc.speed = [sp("fast", "softmax", "forward", (8, 1024), 2e-3, 41.5), sp("fast", "softmax", "forward", (4, 4096), 3e-6, 7.0),
                 sp("fast", "softmax", "backward", (8, 1024), 5e-3, 88.0), sp("fast", "softmax", "backward", (4, 4096), None),
                 sp(HOSTILE, "softmax", "backward", (8, 1024), None)]
    return doc


def test_markdown_speed_is_a_folded_table_per_candidate_and_absent_without_bench() -> None:
    assert "Speed" not in render_markdown(_doc([_record()]))
    text = render_markdown(_speed_doc())
    html_out = GFM.render(text)
    assert "<summary>Speed: 3 measurements (% of copy bandwidth · median time)</summary>" in text
    assert "| softmax | float32 | 41.5% · 2 ms | 7% · 3 µs |" in text
    assert "| softmax bwd | float32 | 88% · 5 ms | not timed |" in text
    assert "**" + md_text(HOSTILE) + "**: nothing could be timed." in text
    assert "_2 measurements not timed; their reasons are in the JSON._" in text
    assert "<img" not in html_out  # the hostile name stays text
    assert "<summary>Speed: 3 measurements" in render_markdown(_speed_doc(), complete=True)


def test_junit_speed_is_the_suites_system_out_and_never_a_test_case() -> None:
    root = ET.fromstring(render_junit(_speed_doc()))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    out = suites["fast"].find("system-out")
    assert out is not None and suites[HOSTILE].find("system-out") is None
    lines = out.text.splitlines()
    assert lines[0].startswith("speed (each cell: % of the copy bandwidth")
    assert lines[1].split() == ["op", "dtype", "8x1024", "4x4096"]
    assert " ".join(lines[2].split()) == "softmax float32 41.5% · 2 ms 7% · 3 µs"
    assert " ".join(lines[3].split()) == "softmax bwd float32 88% · 5 ms not timed"
    assert root.get("tests") == "2"  # the two records; speed adds none
