"""The HTML report: self-contained, escaped, and every section holding what it claims.

One tiny real audit (a naive softmax file with a hostile name beside builtin:naive, one
case, float32) checks the page end to end; hand-built documents pin the counts (heat-map
cells, plotted points, speed rows) exactly.
"""

from __future__ import annotations

import html
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from softaudit.formats import get_format
from softaudit.judging.metrics import Location, RecordMetrics
from softaudit.judging.verdicts import PASS
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.reports.html_report import (
    DEFAULT_MAX_FINDINGS,
    LogScale,
    decade_label,
    is_hard_failure,
    ratio_colour,
    render_html,
)
from softaudit.results.document import ResultsDocument, repro_command, rerun_command
from softaudit.results.ranking import worst_findings
from softaudit.results.records import Record, SpeedRecord
from softaudit.results.schema import document_of
from softaudit.runner.loop import run_audit

HOSTILE = "<img src=x onerror=alert(1)>"
NAIVE_SOFTMAX = (
    "import numpy as np\n\n\n"
    "def softmax(x):\n"
    "    e = np.exp(x)\n"
    "    return e / e.sum(axis=-1, keepdims=True)\n"
)
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}
SVG_LEAVES = {"rect", "line", "circle", "path", "stop"}


# ----------------------------------------------------------------------------------------------
# Fixtures and builders
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> ResultsDocument:
    """A real audit: a hostile-named numpy softmax file and builtin:naive (softmax, logsumexp) on one
    case, float32."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / f"{HOSTILE}.py").write_text(NAIVE_SOFTMAX)
    result = run_audit([str(folder / f"{HOSTILE}.py"), "builtin:naive"],
                       AuditOptions(case_patterns=["offset-plus-1e3"], formats=[get_format("float32")],
                                    ops=["softmax", "logsumexp"], worker=WorkerOptions(isolated=False)))
    doc = document_of(result)
    doc.source = str(folder / "r.json")
    return doc


@pytest.fixture(scope="module")
def audited_html(audited: ResultsDocument) -> str:
    return render_html(audited)


def _loc(ratio: float = 0.5, err: float = 1.0, col: int | None = 3) -> Location:
    return Location(row=0, col=col, input=1000.5, computed=0.125, rounded_exact=0.125000001,
                    exact="0.12500000074505806", err_ulp=err, envelope_ulp=err / ratio if ratio else 2.0, ratio=ratio)


def _rec(candidate: str = "cand", op: str = "softmax", dtype: str = "float32", case: str = "c1",
         family: str = "fam", verdict: str = "PASS", *, max_ulp: float | None = 1.0, ratio: float | None = 0.5,
         offset: float | None = 10.0, rng: float | None = 5.0, mismatches: int = 0, direction: str = "forward",
         summary: bool = True, metrics: bool = True) -> Record:
    """One record with just the fields the report reads."""
    m = None
    if metrics:
        m = RecordMetrics(elements=16, judged=16, class_mismatches=mismatches,
                          mismatch_kinds={"finite->nan": mismatches} if mismatches else {},
                          first_mismatch=_loc(math.nan, math.nan) if mismatches else None,
                          max_ulp=max_ulp, max_ratio=ratio,
                          worst=_loc(ratio, max_ulp) if ratio is not None and max_ulp is not None else None)
    reasons = [] if verdict == PASS else [f"{verdict.lower()} reason for {case}"]
    return Record(candidate=candidate, target=f"{candidate}.py", op=op, dtype=dtype, case=case, family=family,
                  verdict=verdict, reasons=reasons, direction=direction, metrics=m, case_description=f"about {case}",
                  input_summary={"rows": 1, "n": 16, "offset": offset, "range": rng} if summary else {},
                  excerpt={"row": 0, "n": 16, "values": [[2, 999.25], [3, 1000.5], [4, -7.0]]} if m else None)



def _doc(records: list[Record], **kw) -> ResultsDocument:
    return ResultsDocument(records=records, environment={"softaudit": "0.1.0", "seed": 0, "device": "cpu"},
                           options={"ratio_limit": 4.0, "seed": 0, "cases_dirs": []},
                           summary={"seconds": 1.5, "exit_code": 1}, source="r.json", **kw)


class _Balance(HTMLParser):
    """Checks that every non-void element is closed in order, and collects tags and attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Balance:
    p = _Balance()
    p.feed(page)
    p.close()
    return p


def _svgs(page: str) -> list[ET.Element]:
    """Every inline SVG, parsed as XML (so each one is well-formed on its own)."""
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


# ----------------------------------------------------------------------------------------------
# The page as a whole
# ----------------------------------------------------------------------------------------------


def test_the_page_is_well_formed_and_holds_every_section_in_order(audited_html):
    parsed = _parse(audited_html)
    assert parsed.errors == [] and parsed.stack == []
    order = [audited_html.index(f'id="{a}"') for a in
             ("summary", "heatmap", "plots", "findings", "speed", "skipped", "environment")]
    assert order == sorted(order)
    svgs = _svgs(audited_html)
    assert len(svgs) >= 4  # heat map, its legend, two plots per candidate
    assert "@media print" in audited_html


def test_the_page_is_self_contained(audited_html):
    assert "http://" not in audited_html and "https://" not in audited_html
    assert "<script" not in audited_html.lower() and "@import" not in audited_html and "@font-face" not in audited_html
    for tag, attrs in _parse(audited_html).tags:
        assert tag not in ("script", "link", "img", "iframe", "object", "embed")
        assert "src" not in attrs
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        for key in ("href", "xlink:href"):
            assert attrs.get(key, "#").startswith("#"), (tag, attrs)
    assert set(re.findall(r"url\((.*?)\)", audited_html)) <= {"#sa-hatch"}


def test_a_hostile_candidate_name_is_text_never_markup(audited, audited_html):
    assert any(r.candidate == HOSTILE for r in audited.records)
    assert "<img" not in audited_html.lower()
    assert html.escape(HOSTILE, quote=True) in audited_html
    # In SVG titles and attributes too: parsed back, they hold the name as plain text.
    texts = [el.text or "" for svg in _svgs(audited_html) for el in svg.iter("title")]
    labels = [svg.get("aria-label", "") for svg in _svgs(audited_html)]
    assert any(HOSTILE in t for t in texts) and any(HOSTILE in a for a in labels)


def test_every_string_from_the_document_is_escaped():
    evil = '"><script>alert(1)</script>'
    rec = _rec(candidate=f"c{evil}", case=f"case{evil}", family=f"fam{evil}", verdict="FAIL", ratio=9.0)
    rec.reasons = [f"reason{evil}"]
    rec.notes = [f"note{evil}"]
    rec.case_description = f"desc{evil}"
    rec.error = f"error{evil}"
    rec.parameters = {"reduction": f"mean{evil}"}
    skipped = _rec(candidate=f"c{evil}", case="other", verdict="SKIP", metrics=False)
    skipped.reasons = [f"skip{evil}"]
    failed_import = Record(candidate=f"imp{evil}", target=f"imp{evil}.py", op="import", dtype="-", case="-",
                           family="-", verdict="FAIL", reasons=[f"import{evil}"], error=f"raised{evil}")
    doc = _doc([rec, skipped, failed_import])
    doc.environment["device"] = f"gpu{evil}"
    doc.options["cases"] = [f"pat{evil}"]
    doc.candidates = [{"name": f"c{evil}", "target": "x", "ops": ["softmax"], "backend": ["numpy"],
                       "description": f"d{evil}"}]
    page = render_html(doc, title=f"title{evil}")
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 10
    parsed = _parse(page)
    assert parsed.errors == [] and parsed.stack == []
    for svg in _svgs(page):
        assert all("script" not in el.tag for el in svg.iter())


# ----------------------------------------------------------------------------------------------
# Header, summary, import failures
# ----------------------------------------------------------------------------------------------


def test_header_states_counts_status_completeness_version_time_and_source(audited, audited_html):
    header = audited_html[:audited_html.index("</header>")]
    counts = audited.counts()
    for verdict in ("PASS", "WARN", "FAIL", "SKIP"):
        assert f"{counts[verdict]} {verdict}" in header
    assert 'badge v-FAIL">FAIL' in header and "complete" in header
    assert "0.1.0" in header and html.escape(audited.source) in header
    assert f"{audited.summary['seconds']:.1f} s" in header
    stopped = _doc([_rec()], complete=False)
    stopped.summary["exit_code"] = 143  # SIGTERM: the header states the real exit code, not 0 or 1
    interrupted = render_html(stopped)
    assert "incomplete: interrupted (exit code 143)" in interrupted[:interrupted.index("</header>")]


def test_summary_table_has_the_worst_verdict_per_candidate_op_and_format():
    doc = _doc([_rec(case="a"), _rec(case="b", verdict="WARN", ratio=2.0, max_ulp=7.0),
                _rec(dtype="bfloat16", case="a", max_ulp=3.0)])
    section = _section(render_html(doc), "summary")
    assert section.index(">float32<") < section.index(">bfloat16<")
    cells = re.findall(r'<td class="cell v-(\w+)"[^>]*>(.*?)</td>', section)
    assert [v for v, _ in cells] == ["WARN", "PASS"]
    assert "max 7 ulp · ratio 2" in cells[0][1] and 'title="worst case: b"' in section


def test_import_failures_are_listed_apart_with_their_reason():
    bad = Record(candidate="broken", target="broken.py", op="import", dtype="-", case="-", family="-",
                 verdict="FAIL", reasons=["broken.py: raised ImportError: no module named zz"],
                 error="raised ImportError: no module named zz")
    page = render_html(_doc([_rec(), bad]))
    section = _section(page, "summary")
    assert "failed to import (1)" in section and "no module named zz" in section
    assert "broken" not in _section(page, "heatmap") and "broken" not in _section(page, "plots")


# ----------------------------------------------------------------------------------------------
# Heat map
# ----------------------------------------------------------------------------------------------


def test_heat_map_has_one_cell_per_candidate_and_family_with_hard_failures_marked():
    records = [
        _rec("a", family="offsets", ratio=0.5), _rec("a", family="masking", case="m", ratio=20.0, verdict="FAIL"),
        _rec("b", family="offsets", verdict="FAIL", mismatches=4, max_ulp=None, ratio=None),
        _rec("c", family="masking", case="m", verdict="SKIP", metrics=False),
    ]
    page = render_html(_doc(records))
    heat = next(svg for svg in _svgs(page) if svg.get("class") == "heat")
    cells = [g for g in heat.iter("g") if (g.get("class") or "").startswith("hc")]
    assert len(cells) == 3 * 2
    kinds = [g.get("data-kind") for g in cells]
    assert kinds == ["ratio", "ratio", "hard", "empty", "empty", "skipped"]
    hard = cells[2]
    assert hard.find("rect").get("fill") == "url(#sa-hatch)"
    assert "1 hard failure(s)" in hard.find("title").text
    assert "worst ratio 20" in cells[1].find("title").text


def test_ratio_colours_run_from_green_within_the_envelope_to_red_beyond_the_limit():
    def rgb(c: str) -> tuple[int, ...]:
        return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))

    inside, beyond = rgb(ratio_colour(0.5, 4.0)), rgb(ratio_colour(1e4, 4.0))
    assert inside[1] > inside[0] and beyond[0] > 2 * beyond[1]
    assert ratio_colour(0.0, 4.0) == ratio_colour(1e-9, 4.0)  # clamped at the pale end


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _plot(page: str, candidate: str, quantity: str) -> ET.Element:
    return next(svg for svg in _svgs(page) if svg.get("data-quantity") == quantity
                and candidate in svg.get("aria-label", ""))


def _markers(svg: ET.Element) -> list[ET.Element]:
    return [el for el in svg.iter() if "pt" in (el.get("class") or "").split()]


def test_error_plots_have_one_point_per_plottable_record():
    records = [_rec(case=f"c{i}", max_ulp=10.0 ** i, offset=10.0 ** (2 * i), rng=3.0 ** i) for i in range(6)]
    records += [_rec(case="zero", max_ulp=0.0, offset=0.0, rng=0.0, dtype="bfloat16"),
                _rec(case="hard", verdict="FAIL", mismatches=3, max_ulp=None, ratio=None, offset=50.0),
                _rec(case="skip", verdict="SKIP", metrics=False),
                _rec(case="nosummary", summary=False),
                _rec(case="allinf", offset=None, rng=None)]
    page = render_html(_doc(records))
    for quantity in ("offset", "range"):
        markers = _markers(_plot(page, "cand", quantity))
        assert len(markers) == 8 and sum(int(m.get("data-n")) for m in markers) == 8
        hard = [m for m in markers if "hard" in m.get("class")]
        assert len(hard) == 1 and "hard failure" in hard[0].find("title").text
    plots = _section(page, "plots")
    assert "8 records in each plot; left out: 1 no finite input value, 1 no input summary, 1 skipped." in plots


def test_coincident_points_are_merged_and_counted():
    records = [_rec(case=f"c{i}", max_ulp=2.0, offset=100.0) for i in range(50)]
    markers = _markers(_plot(render_html(_doc(records)), "cand", "offset"))
    assert len(markers) == 1 and markers[0].get("data-n") == "50"
    assert "+49 more here" in markers[0].find("title").text


def test_plot_points_of_the_real_audit_match_its_judged_records(audited, audited_html):
    for cand in {r.candidate for r in audited.records}:
        judged = [r for r in audited.records if r.candidate == cand and r.verdict != "SKIP"
                  and (r.metrics and r.metrics.max_ulp is not None or is_hard_failure(r))]
        markers = _markers(_plot(audited_html, cand, "offset"))
        assert sum(int(m.get("data-n")) for m in markers) == len(judged)


def test_log_scale_places_zero_in_its_own_slot_and_labels_decades():
    scale = LogScale.fit([0.0, 0.5, 3e4], a=100.0, b=10.0, zero=110.0)
    assert (scale.lo, scale.hi) == (-1, 5)
    assert scale(0.0) == 110.0 and scale(0.1) == 100.0 and scale(1e5) == pytest.approx(10.0)
    labels = [label for _, label in scale.ticks()]
    assert labels[0] == "0" and "1" in labels and "1e5" in labels
    assert [decade_label(k) for k in (-3, -1, 0, 3, 4)] == ["1e-3", "0.1", "1", "1000", "1e4"]


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------


def _findings(page: str) -> list[str]:
    return re.findall(r'<article class="finding.*?</article>', page, flags=re.S)


def test_each_finding_shows_its_exact_values_excerpt_and_both_commands(audited, audited_html):
    shown = worst_findings([r for r in audited.records if r.op != "import"], DEFAULT_MAX_FINDINGS)
    articles = _findings(audited_html)
    assert shown and len(articles) == len(shown)
    for rec, article in zip(shown, articles):
        loc = rec.metrics.worst or rec.metrics.first_mismatch
        assert html.escape(loc.exact) in article
        assert html.escape(rerun_command(rec, audited)) in article
        assert html.escape(repro_command(rec, audited)) in article
        assert html.escape(rec.reasons[0]) in article and html.escape(rec.case_description) in article
        for _col, value in rec.excerpt["values"]:
            assert f">{repr(value)}<" in article
        assert 'class="pointed"' in article


def test_findings_put_fail_before_warn_and_stop_at_the_limit():
    records = [_rec(case=f"w{i}", verdict="WARN", ratio=3.0) for i in range(5)]
    records += [_rec(case=f"f{i}", verdict="FAIL", ratio=5.0 + i) for i in range(5)]
    page = render_html(_doc(records), max_findings=6)
    articles = _findings(page)
    assert len(articles) == 6
    assert all("v-FAIL" in a for a in articles[:5]) and "v-WARN" in articles[5]
    assert "case <code>f4</code>" in articles[0]  # the highest ratio first
    assert ">1000.5<" in articles[0] and "0.12500000074505806" in articles[0]


# ----------------------------------------------------------------------------------------------
# Speed, skipped, environment
# ----------------------------------------------------------------------------------------------


def test_speed_section_appears_only_with_speed_data(audited_html):
    assert "Speed was not measured in this run (softaudit run --bench)." in audited_html
    assert 'class="bars"' not in audited_html
    def sp(op: str, shape: tuple[int, int], figures: dict | None, skipped: str | None = None) -> SpeedRecord:
        return SpeedRecord("cand", "cand.py", op, "forward", "float32", shape, figures, skipped)

    timed = [sp("softmax", (8, 1024), {"median_s": 2e-3, "pct_copy_bandwidth": 40.0}),
             sp("softmax", (4, 4096), {"median_s": 4e-3, "pct_copy_bandwidth": 60.0}),
             sp("logsumexp", (8, 1024), {"median_s": 5e-6}),
             sp("cross_entropy", (8, 1024), None, "not defined")]
    speed = _section(render_html(_doc([_rec()], speed=timed)), "speed")
    assert "not measured" not in speed
    assert "3 ms" in speed and "5 µs" in speed  # the median of 2 ms and 4 ms
    assert "cross_entropy" not in speed  # never timed: no row
    bars = [svg for svg in _svgs(speed) if svg.get("class") == "bars"]
    assert len(bars) == 1 and len(list(bars[0].iter("rect"))) == 2  # the frame and one bar (logsumexp has no %)
    assert "50% of copy bandwidth" in ET.tostring(bars[0], encoding="unicode")


def test_skipped_reasons_are_counted_in_groups_and_environment_lists_every_key(audited, audited_html):
    skipped = [r for r in audited.records if r.verdict == "SKIP"]
    section = _section(audited_html, "skipped")
    for reason in {r.reasons[0] for r in skipped}:
        count = sum(1 for r in skipped if r.reasons[0] == reason)
        assert f'<td class="num">{count}</td><td>{html.escape(reason)}</td>' in section
    env = _section(audited_html, "environment")
    for key in list(audited.environment) + list(audited.options):
        assert f"<th>{html.escape(key)}</th>" in env


def test_a_large_document_stays_small():
    records = [_rec(candidate=f"cand{c}", case=f"case{i}", family=f"fam{i % 7}", dtype=d, max_ulp=1.0 + i,
                    offset=1.5 ** i, rng=1.2 ** i, verdict="FAIL" if i % 5 == 0 else "PASS", ratio=i / 10)
                for c in range(4) for i in range(400) for d in ("float32", "bfloat16")]
    page = render_html(_doc(records))
    assert len(records) == 3200 and len(page.encode()) < 3_000_000
    assert len(_findings(page)) == 20


def test_an_empty_document_still_renders(tmp_path: Path):
    page = render_html(_doc([]))
    assert _parse(page).errors == [] and "No candidate was audited" in page


def test_a_candidate_with_nothing_to_plot_says_why_instead_of_drawing_empty_axes():
    page = render_html(_doc([_rec(verdict="SKIP", metrics=False), _rec(candidate="other")]))
    plots = _section(page, "plots")
    assert "<code>cand</code>: nothing to plot (1 skipped)." in plots
    assert [svg.get("aria-label") for svg in _svgs(plots)] == ["other: error against offset",
                                                               "other: error against range"]
