"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network access).

Built from a ResultsDocument only, so ``softaudit report r.json`` and ``softaudit run --html``
write the same file. Every string that comes from the document (candidate names, cases,
reasons, notes, environment values) is untrusted and goes through :func:`esc`.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softaudit.formats import FORMATS
from softaudit.judging.envelope import DEFAULT_RATIO_LIMIT
from softaudit.judging.metrics import Location
from softaudit.judging.verdicts import FAIL, PASS, SEVERITY, SKIP, WARN, fmt_num, fmt_value
from softaudit.ops import DIRECTIONS, OPS
from softaudit.reports.terminal import Row, short_number, summary_rows
from softaudit.results.document import ResultsDocument, repro_command, rerun_command
from softaudit.results.ranking import worst_findings
from softaudit.results.records import Record, SpeedRecord

DEFAULT_TITLE = "softaudit stability report"
DEFAULT_MAX_FINDINGS = 20

FORMAT_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00")
"""Okabe-Ito colours (told apart with the common colour-vision deficiencies), one per format."""
FORMAT_MARKERS = ("circle", "square", "triangle", "diamond")

HARD_COLOUR = "#5b2a86"

QUANTITIES = {
    "offset": "input offset: largest finite |x|",
    "range": "dynamic range: max − min of the finite x",
}
"""input_summary keys the error plots are drawn against, with their axis titles."""


def esc(value: Any) -> str:
    """Text from the document as HTML/SVG text or attribute value (quotes escaped too)."""
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------


def render_html(doc: ResultsDocument, title: str | None = None, max_findings: int = DEFAULT_MAX_FINDINGS) -> str:
    """The whole report as one HTML document: header, verdict summary, heat map, error plots,
    worst findings, speed, skipped records and environment, in that order."""
    page_title = title or DEFAULT_TITLE
    limit = ratio_limit(doc)
    sections = [
        _header(doc, page_title),
        _summary_section(doc),
        _heatmap_section(doc, limit),
        _plots_section(doc, limit),
        _findings_section(doc, max_findings),
        *([_diagnosis_section(doc)] if doc.diagnoses else []),
        _speed_section(doc),
        _skipped_section(doc),
        _environment_section(doc),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(page_title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n<footer>Written by softaudit from the results document alone; "
          "self-contained (no scripts, no external resources).</footer>\n</body>\n</html>\n"
    )


def ratio_limit(doc: ResultsDocument) -> float:
    """The gate's ratio limit the document was judged under (FAIL above it)."""
    try:
        return float(doc.options.get("ratio_limit", DEFAULT_RATIO_LIMIT))
    except (TypeError, ValueError):
        return DEFAULT_RATIO_LIMIT


def is_hard_failure(record: Record, limit: float = DEFAULT_RATIO_LIMIT) -> bool:
    """A FAIL that no stability ratio explains: a wrong class (NaN, inf), a crash or exception,
    a modified input, a rejected undefined row."""
    if record.verdict != FAIL:
        return False
    m = record.metrics
    if record.error is not None or record.input_modified or m is None or m.class_mismatches:
        return True
    return m.max_ratio is None or m.max_ratio <= limit


def overall_status(doc: ResultsDocument) -> str:
    """The most severe verdict of any record (SKIP when there is none, or all were skipped)."""
    return max((r.verdict for r in doc.records), key=lambda v: SEVERITY.get(v, 0), default=SKIP)


def _audited(doc: ResultsDocument) -> list[Record]:
    """Records of candidates that loaded (import failures are listed on their own)."""
    return [r for r in doc.records if r.op != "import"]


def _short(v: float | None) -> str:
    return short_number(v, missing="–")


def _op_label(op: str, direction: str) -> str:
    return op if direction == "forward" else f"{op} backward"


def _verdict_badge(verdict: str) -> str:
    return f'<span class="badge v-{esc(verdict)}">{esc(verdict)}</span>'


def _formats_in(records: list[Record]) -> list[str]:
    """Formats present, in the audit's usual order (unknown names after, as first seen)."""
    seen = list(dict.fromkeys(r.dtype for r in records))
    known = [f for f in FORMATS if f in seen]
    return known + [f for f in seen if f not in FORMATS]


# ----------------------------------------------------------------------------------------------
# 1. Header
# ----------------------------------------------------------------------------------------------


def _header(doc: ResultsDocument, title: str) -> str:
    counts = doc.counts()
    status = overall_status(doc)
    tally = " ".join(f'<span class="count v-{v}">{counts.get(v, 0)} {v}</span>' for v in (PASS, WARN, FAIL, SKIP))
    seconds = doc.summary.get("seconds")
    took = f"{float(seconds):.1f} s" if isinstance(seconds, (int, float)) else "not recorded"
    cache = doc.summary.get("reference_cache") or {}
    facts = [
        ("overall", f'{_verdict_badge(status)} exit code {esc(doc.summary.get("exit_code", "–"))}' if doc.complete else
         f'<strong class="warn-text">incomplete: interrupted (exit code {esc(doc.summary.get("exit_code", "–"))})</strong>'
         f'; the worst verdict so far {_verdict_badge(status)}'),
        ("records", f"{len(doc.records)} &nbsp; {tally}"),
        ("run", "complete" if doc.complete else
         '<strong class="warn-text">incomplete: interrupted, these are the records collected before the stop</strong>'),
        ("softaudit", esc(doc.softaudit_version or doc.environment.get("softaudit", "unknown"))),
        ("audit took", esc(took) + (f" (references: {esc(cache.get('hits', 0))} cached, "
                                    f"{esc(cache.get('misses', 0))} computed)" if cache else "")),
        ("source", f"<code>{esc(doc.source)}</code>" if doc.source else "an audit just run (no results file)"),
        ("candidates", ", ".join(f"<code>{esc(c)}</code>" for c in dict.fromkeys(r.candidate for r in doc.records))
         or "none"),
    ]
    if doc.summary.get("reference_uncertified"):
        facts.append(("uncertified", f"{esc(doc.summary['reference_uncertified'])} reference elements could not be "
                                     "certified correctly rounded; their verdicts rest on an uncertified rounding"))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "verdicts"), ("heatmap", "heat map"), ("plots", "error vs input"), ("findings", "worst findings"),
        *([("diagnosis", "diagnosis")] if doc.diagnoses else []), ("speed", "speed"), ("skipped", "skipped"), ("environment", "environment")))
    return (f'<header><h1>{esc(title)}</h1>\n<table class="facts">{rows}</table>\n'
            f'<nav>{nav}</nav></header>')


# ----------------------------------------------------------------------------------------------
# 2. Verdict summary
# ----------------------------------------------------------------------------------------------


def _summary_section(doc: ResultsDocument) -> str:
    audited = _audited(doc)
    parts = ['<section id="summary"><h2>Verdict summary</h2>']
    if audited:
        parts.append('<p class="note">Worst verdict of each candidate × op × format over every case, with the '
                     "largest error (ulp) and stability ratio (error ÷ envelope) among its records; hover a cell "
                     "for its worst case.</p>")
        parts.append(_summary_table(summary_rows(audited), _formats_in(audited)))
    else:
        parts.append("<p>No candidate was audited.</p>")
    parts.append(_import_failures(doc))
    parts.append("</section>")
    return "\n".join(parts)


def _summary_table(rows: list[Row], formats: list[str]) -> str:
    by_key = {(r.candidate, r.op, r.direction, r.dtype): r for r in rows}
    lines = ["<table class=\"matrix\"><thead><tr><th>op</th>"
             + "".join(f"<th>{esc(f)}</th>" for f in formats) + "</tr></thead><tbody>"]
    for cand in dict.fromkeys(r.candidate for r in rows):
        lines.append(f'<tr class="cand-row"><th colspan="{len(formats) + 1}">{esc(cand)}</th></tr>')
        for op, direction in dict.fromkeys((r.op, r.direction) for r in rows if r.candidate == cand):
            cells = "".join(_summary_cell(by_key.get((cand, op, direction, f))) for f in formats)
            lines.append(f"<tr><th class=\"op\">{esc(_op_label(op, direction))}</th>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _summary_cell(row: Row | None) -> str:
    if row is None:
        return '<td class="empty">not audited</td>'
    hint = f"worst case: {row.worst_case}" if row.worst_case != "-" else "no case above the envelope"
    wrong = f' · <span class="wrong">{esc(row.nan_inf)} wrong class</span>' if row.nan_inf not in ("0", "") else ""
    if row.verdict == SKIP:
        figures = ""
    else:
        figures = (f' <span class="fig">max {esc(_short(row.max_ulp))} ulp · ratio {esc(_short(row.max_ratio))}'
                   f"{wrong}</span>")
    return (f'<td class="cell v-{esc(row.verdict)}" title="{esc(hint)}">{_verdict_badge(row.verdict)}{figures}'
            f'<div class="tally">P/W/F/S {esc(row.tally)}</div></td>')


def _import_failures(doc: ResultsDocument) -> str:
    failed = [r for r in doc.records if r.op == "import"]
    if not failed:
        return ""
    rows = "".join(f"<tr><td><code>{esc(r.candidate)}</code></td><td><code>{esc(r.target)}</code></td>"
                   f"<td>{esc(r.error or (r.reasons[0] if r.reasons else 'import failed'))}</td></tr>" for r in failed)
    return (f"<h3>Targets that failed to import ({len(failed)})</h3>"
            f"<table class=\"plain\"><thead><tr><th>candidate</th><th>target</th><th>reason</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


# ----------------------------------------------------------------------------------------------
# SVG helpers: one scale type, one axes drawer
# ----------------------------------------------------------------------------------------------


@dataclass
class LogScale:
    """A log10 scale over whole decades lo..hi drawn from pixel ``a`` to ``b``, with a slot at
    ``zero`` (before ``a``) for values of 0 that a log scale cannot place."""

    lo: int
    hi: int
    a: float
    b: float
    zero: float

    def __call__(self, v: float) -> float:
        """Pixel of a value; 0 (and anything below 10**lo) goes to the zero slot."""
        if not v > 0 or math.log10(v) < self.lo:
            return self.zero if v <= 0 else self.a
        t = (min(math.log10(v), self.hi) - self.lo) / (self.hi - self.lo)
        return self.a + t * (self.b - self.a)

    def ticks(self, max_labels: int = 9) -> list[tuple[float, str]]:
        """Decade ticks (every k-th when there are many) and the zero slot's "0"."""
        step = max(1, math.ceil((self.hi - self.lo) / max_labels))
        out = [(self.zero, "0")]
        for k in range(self.lo, self.hi + 1):
            if k % step == 0:
                out.append((self.a + (k - self.lo) / (self.hi - self.lo) * (self.b - self.a), decade_label(k)))
        return out

    @classmethod
    def fit(cls, values: list[float], a: float, b: float, zero: float, floor: int = -9,
            at_least: tuple[int, int] = (0, 1)) -> LogScale:
        """Whole decades around the positive values (at least ``at_least``), never below 10**floor."""
        logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
        lo = max(floor, min([math.floor(x) for x in logs] + [at_least[0]]))
        hi = max([math.ceil(x) for x in logs] + [at_least[1], lo + 1])
        return cls(lo, hi, a, b, zero)


def decade_label(k: int) -> str:
    """10**k written briefly: 0.01, 0.1, 1, 10, 100, 1000, then 1e4, 1e-3..."""
    if -2 <= k <= 3:
        return f"{10.0 ** k:g}" if k < 0 else str(10 ** k)
    return f"1e{k}"


@dataclass
class PlotBox:
    """The plotting area of an SVG chart, in pixels."""

    left: float
    top: float
    right: float
    bottom: float


def svg_axes(box: PlotBox, xticks: list[tuple[float, str]], yticks: list[tuple[float, str]],
             xlabel: str, ylabel: str) -> str:
    """Frame, grid lines, ticks with their numbers, and the two axis titles (escaped)."""
    out = [f'<rect class="frame" x="{box.left:.1f}" y="{box.top:.1f}" width="{box.right - box.left:.1f}" '
           f'height="{box.bottom - box.top:.1f}"/>']
    for x, label in xticks:
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{box.top:.1f}" x2="{x:.1f}" y2="{box.bottom:.1f}"/>'
                   f'<line class="tick" x1="{x:.1f}" y1="{box.bottom:.1f}" x2="{x:.1f}" y2="{box.bottom + 4:.1f}"/>'
                   f'<text class="tl" x="{x:.1f}" y="{box.bottom + 16:.1f}" text-anchor="middle">{esc(label)}</text>')
    for y, label in yticks:
        out.append(f'<line class="grid" x1="{box.left:.1f}" y1="{y:.1f}" x2="{box.right:.1f}" y2="{y:.1f}"/>'
                   f'<line class="tick" x1="{box.left - 4:.1f}" y1="{y:.1f}" x2="{box.left:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tl" x="{box.left - 7:.1f}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    out.append(f'<text class="at" x="{cx:.1f}" y="{box.bottom + 36:.1f}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text class="at" transform="translate({box.left - 52:.1f} {cy:.1f}) rotate(-90)" '
               f'text-anchor="middle">{esc(ylabel)}</text>')
    return "".join(out)


def _marker(shape: str, x: float, y: float, r: float, attrs: str, tooltip: str) -> str:
    """One plot marker (circle, square, triangle, diamond or cross) with its <title> tooltip."""
    t = f"<title>{esc(tooltip)}</title>"
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {attrs}>{t}</circle>'
    if shape == "square":
        s = r * 0.9
        return f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" {attrs}>{t}</rect>'
    if shape == "triangle":
        d = f"M{x:.1f} {y - r * 1.2:.1f}L{x + r * 1.1:.1f} {y + r * 0.8:.1f}L{x - r * 1.1:.1f} {y + r * 0.8:.1f}Z"
    elif shape == "diamond":
        d = f"M{x:.1f} {y - r * 1.3:.1f}L{x + r:.1f} {y:.1f}L{x:.1f} {y + r * 1.3:.1f}L{x - r:.1f} {y:.1f}Z"
    else:  # cross
        d = (f"M{x - r:.1f} {y - r:.1f}L{x + r:.1f} {y + r:.1f}"
             f"M{x - r:.1f} {y + r:.1f}L{x + r:.1f} {y - r:.1f}")
    return f'<path d="{d}" {attrs}>{t}</path>'


def _format_style(formats: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each format: fixed by the format's place in FORMATS, so every plot agrees."""
    order = list(FORMATS) + [f for f in formats if f not in FORMATS]
    return {f: (FORMAT_COLOURS[order.index(f) % len(FORMAT_COLOURS)],
                FORMAT_MARKERS[order.index(f) % len(FORMAT_MARKERS)]) for f in formats}


# ----------------------------------------------------------------------------------------------
# 3. Heat map: candidates x case families
# ----------------------------------------------------------------------------------------------


@dataclass
class HeatCell:
    """What one candidate showed on one case family, over every op, direction and format."""

    candidate: str
    family: str
    records: list[Record] = field(default_factory=list)
    hard: int = 0
    worst_ratio: float | None = None
    worst_id: str = ""

    @property
    def kind(self) -> str:
        """hard, ratio, unmeasured (judged, no ratio), skipped (all SKIP) or empty (no records)."""
        if not self.records:
            return "empty"
        if self.hard:
            return "hard"
        if self.worst_ratio is not None:
            return "ratio"
        return "skipped" if all(r.verdict == SKIP for r in self.records) else "unmeasured"


def heat_cells(doc: ResultsDocument) -> tuple[list[str], list[str], list[list[HeatCell]]]:
    """(candidates, families, cells[candidate][family]): worst ratio and hard failures per cell."""
    audited = _audited(doc)
    limit = ratio_limit(doc)
    candidates = list(dict.fromkeys(r.candidate for r in audited))
    families = list(dict.fromkeys(r.family for r in audited))
    grid = {(c, f): HeatCell(c, f) for c in candidates for f in families}
    for r in audited:
        cell = grid[(r.candidate, r.family)]
        cell.records.append(r)
        if is_hard_failure(r, limit):
            cell.hard += 1
        ratio = r.metrics.max_ratio if r.metrics is not None and r.verdict != SKIP else None
        if ratio is not None and ratio >= 0 and (cell.worst_ratio is None or ratio > cell.worst_ratio):
            cell.worst_ratio, cell.worst_id = ratio, r.id
    return candidates, families, [[grid[(c, f)] for f in families] for c in candidates]


def _ratio_stops(limit: float) -> list[tuple[float, tuple[int, int, int]]]:
    """Colour stops on log10(ratio): greens within the envelope, a step to yellow just above it,
    amber at the limit, reds beyond."""
    top = math.log10(max(limit, 1.0001))
    return [(-2.0, (237, 247, 237)), (0.0, (110, 190, 115)), (0.0, (255, 238, 140)), (top, (255, 193, 7)),
            (top + 1, (251, 140, 0)), (top + 3, (229, 57, 53)), (top + 6, (140, 16, 16))]


def ratio_colour(ratio: float, limit: float) -> str:
    """Heat-map colour of a stability ratio (interpolated on log10 between the stops)."""
    stops = _ratio_stops(limit)
    x = math.log10(ratio) if ratio > 0 else stops[0][0]
    x = min(max(x, stops[0][0]), stops[-1][0])
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 1.0
            return "#" + "".join(f"{round(a + t * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{c:02x}" for c in stops[-1][1])


def _ink(fill: str) -> str:
    """Black or white text, whichever reads on ``fill``."""
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _heatmap_section(doc: ResultsDocument, limit: float) -> str:
    candidates, families, cells = heat_cells(doc)
    head = ('<section id="heatmap"><h2>Heat map: worst stability ratio per candidate × case family</h2>'
            '<p class="note">Each cell: the largest stability ratio (error ÷ envelope) over every op, direction, '
            "format and case of the family. ≤ 1 is within the envelope a careful implementation meets; above "
            f"{esc(fmt_num(limit))} is a FAIL. Hatched purple cells hold hard failures (NaN or inf where the exact "
            "value is finite, crashes, modified inputs); the count is written in the cell. Hover a cell for its "
            "figures.</p>")
    if not candidates:
        return head + "<p>No candidate was audited.</p></section>"
    return (head + f'<div class="scroll">{_heatmap_svg(candidates, families, cells, limit)}</div>'
            + _heat_legend_svg(limit) + "</section>")


def _heatmap_svg(candidates: list[str], families: list[str], cells: list[list[HeatCell]], limit: float) -> str:
    label_w = min(280, 20 + 7.2 * max(len(c) for c in candidates))
    rotate = len(families) > 6 or max(len(f) for f in families) > 18
    cw = 84 if rotate else max(150, 8 * max(len(f) for f in families) + 20)
    ch = 52
    top = (12 + 6.5 * min(max(len(f) for f in families), 30)) * 0.75 + 10 if rotate else 34
    width, height = label_w + cw * len(families) + 10, top + ch * len(candidates) + 6
    out = [f'<svg class="heat" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="heat map">'
           '<defs><pattern id="sa-hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
           f'patternTransform="rotate(45)"><rect width="8" height="8" fill="{HARD_COLOUR}"/>'
           '<line x1="0" y1="0" x2="0" y2="8" stroke="#b48ad6" stroke-width="2.5"/></pattern></defs>']
    for j, fam in enumerate(families):
        x = label_w + cw * j + cw / 2
        if rotate:
            out.append(f'<text class="hl" transform="translate({x - 4:.1f} {top - 6:.1f}) rotate(-45)">'
                       f"{esc(_clip(fam, 30))}<title>{esc(fam)}</title></text>")
        else:
            out.append(f'<text class="hl" x="{x:.1f}" y="{top - 10:.1f}" text-anchor="middle">{esc(fam)}</text>')
    for i, cand in enumerate(candidates):
        y = top + ch * i
        out.append(f'<text class="hl" x="{label_w - 10:.1f}" y="{y + ch / 2 + 4:.1f}" text-anchor="end">'
                   f"{esc(_clip(cand, 36))}<title>{esc(cand)}</title></text>")
        for j, cell in enumerate(cells[i]):
            out.append(_heat_cell_svg(cell, label_w + cw * j, y, cw, ch, limit))
    out.append("</svg>")
    return "".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _heat_cell_svg(cell: HeatCell, x: float, y: float, w: float, h: float, limit: float) -> str:
    kind = cell.kind
    n = len(cell.records)
    verdicts = Counter(r.verdict for r in cell.records)
    tally = "/".join(str(verdicts.get(v, 0)) for v in (PASS, WARN, FAIL, SKIP))
    ratio_text = f"worst ratio {fmt_num(cell.worst_ratio)} ({cell.worst_id})" if cell.worst_ratio is not None \
        else "no ratio measured"
    tip = f"{cell.candidate} × {cell.family}: {ratio_text}; {cell.hard} hard failure(s); P/W/F/S {tally} of {n}"
    if kind == "hard":
        fill, ink = "url(#sa-hatch)", "#fff"
        line1 = f"{cell.hard} hard"
        line2 = f"of {n}" + (f" · ratio {_short(cell.worst_ratio)}" if cell.worst_ratio is not None and w > 120
                             else "")
    elif kind == "ratio":
        fill = ratio_colour(cell.worst_ratio or 0.0, limit)
        ink, line1 = _ink(fill), _short(cell.worst_ratio)
        line2 = f"{verdicts.get(FAIL, 0)} FAIL of {n}" if w > 120 else f"{verdicts.get(FAIL, 0)}/{n} FAIL"
    elif kind == "unmeasured":
        fill, ink, line1, line2 = "#f4f4f4", "#444", "no ratio", f"{n} records"
    elif kind == "skipped":
        fill, ink, line1, line2 = "#e0e0e0", "#555", "skipped", f"{n} records"
    else:
        fill, ink, line1, line2 = "#ffffff", "#999", "–", "no records"
        tip = f"{cell.candidate} × {cell.family}: no records"
    cls = "hc hard" if kind == "hard" else "hc"
    return (f'<g class="{cls}" data-kind="{kind}"><rect x="{x + 1:.1f}" y="{y + 1:.1f}" width="{w - 2:.1f}" '
            f'height="{h - 2:.1f}" fill="{fill}" stroke="#fff"/>'
            f'<text x="{x + w / 2:.1f}" y="{y + h / 2 - (2 if line2 else -4):.1f}" text-anchor="middle" '
            f'class="cv{" halo" if kind == "hard" else ""}" fill="{ink}">{esc(line1)}</text>'
            + (f'<text x="{x + w / 2:.1f}" y="{y + h / 2 + 13:.1f}" text-anchor="middle" class="cs'
               f'{" halo" if kind == "hard" else ""}" fill="{ink}">{esc(line2)}</text>' if line2 else "")
            + f"<title>{esc(tip)}</title></g>")


def _heat_legend_svg(limit: float) -> str:
    """The colour bar (log10 ratio, 1e-2 .. the darkest stop) with the limit marked, and swatches
    for the other cell kinds."""
    stops = _ratio_stops(limit)
    lo, hi = stops[0][0], math.ceil(stops[-1][0])
    x0, y0, steps = 20.0, 30.0, 90
    w = 58.0 * (hi - lo)

    def at(v: float) -> float:
        return x0 + w * (v - lo) / (hi - lo)

    width = x0 + w + 30
    out = [f'<svg class="legend" width="{width:.0f}" height="96" viewBox="0 0 {width:.0f} 96" role="img" '
           'aria-label="heat map legend">',
           f'<text class="tl" x="{x0}" y="12">colour: worst stability ratio (error ÷ envelope), log scale</text>']
    for i in range(steps):
        v = lo + (hi - lo) * (i + 0.5) / steps
        out.append(f'<rect x="{x0 + w * i / steps:.1f}" y="{y0}" width="{w / steps + 0.6:.1f}" height="14" '
                   f'fill="{ratio_colour(10 ** v, limit)}"/>')
    for k in range(int(lo), hi + 1):
        out.append(f'<line class="tick" x1="{at(k):.1f}" y1="{y0 + 14}" x2="{at(k):.1f}" y2="{y0 + 19}"/>'
                   f'<text class="tl" x="{at(k):.1f}" y="{y0 + 31}" text-anchor="middle">{decade_label(k)}</text>')
    lx = at(math.log10(limit))
    out.append(f'<line x1="{lx:.1f}" y1="{y0 - 5}" x2="{lx:.1f}" y2="{y0 + 16}" stroke="#111" stroke-width="2"/>'
               f'<text class="tl" x="{lx + 4:.1f}" y="{y0 - 4}">FAIL above {esc(fmt_num(limit))}</text>'
               f'<text class="tl" x="{at(0) - 4:.1f}" y="{y0 - 4}" text-anchor="end">within envelope ≤ 1</text>')
    sx, sy = x0, y0 + 48
    for fill, label in (("url(#sa-hatch)", "hard failure (count written)"), ("#e0e0e0", "all skipped"),
                        ("#f4f4f4", "judged, no ratio"), ("#ffffff", "no records")):
        out.append(f'<rect x="{sx:.1f}" y="{sy}" width="18" height="14" fill="{fill}" stroke="#999"/>'
                   f'<text class="tl" x="{sx + 23:.1f}" y="{sy + 11}">{label}</text>')
        sx += 40 + 6.2 * len(label)
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# 4. Error against the input's offset and dynamic range
# ----------------------------------------------------------------------------------------------


@dataclass
class PlotPoint:
    """One record as a point: its error (None for a hard failure, drawn in the top band)."""

    record: Record
    x: float
    ulp: float | None
    hard: bool


def plot_points(records: list[Record], quantity: str, limit: float) -> tuple[list[PlotPoint], Counter[str]]:
    """The plottable records against ``input_summary[quantity]``, and why the others are left out.

    Plotted: judged records with a finite input quantity and either a measured max error or a
    hard failure (drawn in the top band).
    """
    points: list[PlotPoint] = []
    left_out: Counter[str] = Counter()
    for r in records:
        x = r.input_summary.get(quantity) if r.input_summary else None
        hard = is_hard_failure(r, limit)
        ulp = r.metrics.max_ulp if r.metrics is not None else None
        if r.verdict == SKIP:
            left_out["skipped"] += 1
        elif not r.input_summary:
            left_out["no input summary"] += 1
        elif x is None or not math.isfinite(x):
            left_out["no finite input value"] += 1
        elif not hard and (ulp is None or not math.isfinite(ulp)):
            left_out["no metrics" if r.metrics is None else "no measured error"] += 1
        else:
            points.append(PlotPoint(r, float(x), None if hard else float(ulp), hard))  # type: ignore[arg-type]
    return points, left_out


_PLOT_W, _PLOT_H = 640, 340
_PLOT_BOX = PlotBox(left=72, top=62, right=_PLOT_W - 14, bottom=_PLOT_H - 50)
_HARD_BAND_Y = 48.0


def _plots_section(doc: ResultsDocument, limit: float) -> str:
    audited = _audited(doc)
    out = ['<section id="plots"><h2>Error against the input</h2>'
           '<p class="note">One point per record: its largest error in ulps (log scale; 0 at the bottom) against '
           "the case input's offset (largest finite |x|) and dynamic range (max − min of the finite values), both "
           "on log10 scales with 0 at the far left. Colour and marker say the format; × in the top band marks a "
           "hard failure. Points that fall on the same pixel are drawn once (hover for the records).</p>"]
    formats = _formats_in(audited)
    style = _format_style(formats)
    for cand in dict.fromkeys(r.candidate for r in audited):
        mine = [r for r in audited if r.candidate == cand]
        plotted = {q: plot_points(mine, q, limit) for q in QUANTITIES}
        if not any(points for points, _ in plotted.values()):
            out.append(f'<p><code>{esc(cand)}</code>: nothing to plot ({esc(_left_out_text(plotted["offset"][1]))}).'
                       "</p>")
            continue
        svgs = "".join(_scatter_svg(cand, q, points, style) for q, (points, _) in plotted.items())
        out.append(f'<figure class="pair"><figcaption><code>{esc(cand)}</code></figcaption>'
                   f'<div class="plots">{svgs}</div><p class="note">{esc(_plotted_text(plotted))}</p></figure>')
    if not audited:
        out.append("<p>No records to plot.</p>")
    out.append("</section>")
    return "\n".join(out)


def _left_out_text(left_out: Counter[str]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(left_out.items())) or "none left out"


def _plotted_text(plotted: dict[str, tuple[list[PlotPoint], Counter[str]]]) -> str:
    """How many records each plot holds and why the others are not in it."""
    counts = {(len(points), tuple(sorted(left.items()))) for points, left in plotted.values()}
    if len(counts) == 1:
        points, left = next(iter(plotted.values()))
        return f"{len(points)} records in each plot; left out: {_left_out_text(left)}."
    return " ".join(f"{QUANTITIES[q].split(':')[0]}: {len(points)} plotted, left out: {_left_out_text(left)}."
                    for q, (points, left) in plotted.items())


def _scatter_svg(candidate: str, quantity: str, points: list[PlotPoint], style: dict[str, tuple[str, str]]) -> str:
    box = _PLOT_BOX
    xs = LogScale.fit([p.x for p in points], box.left + 34, box.right - 8, box.left + 10)
    ys = LogScale.fit([p.ulp for p in points if p.ulp is not None], box.bottom - 30, box.top + 8, box.bottom - 10,
                      at_least=(-1, 1))
    breaks = (f'<line class="brk" x1="{(xs.zero + xs.a) / 2:.1f}" y1="{box.top}" x2="{(xs.zero + xs.a) / 2:.1f}" '
              f'y2="{box.bottom}"/><line class="brk" x1="{box.left}" y1="{(ys.zero + ys.a) / 2:.1f}" '
              f'x2="{box.right}" y2="{(ys.zero + ys.a) / 2:.1f}"/>')
    yticks = ys.ticks(max_labels=8)
    out = [f'<svg class="scatter" viewBox="0 0 {_PLOT_W} {_PLOT_H}" '
           f'width="{_PLOT_W}" height="{_PLOT_H}" role="img" data-quantity="{quantity}" '
           f'aria-label="{esc(candidate)}: error against {quantity}">',
           f'<text class="pt-title" x="{box.left}" y="16">{esc(_clip(candidate, 48))}: max error vs {quantity}</text>',
           _scatter_legend(style, box.left, 34),
           f'<rect class="band" x="{box.left}" y="{_HARD_BAND_Y - 10}" width="{box.right - box.left}" height="20"/>',
           f'<text class="tl hardl" x="{box.left - 7}" y="{_HARD_BAND_Y + 4}" text-anchor="end">hard</text>',
           svg_axes(box, xs.ticks(max_labels=8), yticks, QUANTITIES[quantity] + " (log scale)", "max error (ulp)"),
           breaks]
    out.extend(_scatter_markers(points, xs, ys, style, quantity))
    out.append("</svg>")
    return "".join(out)


def _scatter_legend(style: dict[str, tuple[str, str]], x: float, y: float) -> str:
    out = []
    for fmt, (colour, shape) in style.items():
        out.append(_marker(shape, x + 5, y - 4, 4.5, f'fill="{colour}" stroke="#333" stroke-width="0.6"', fmt)
                   + f'<text class="tl" x="{x + 14}" y="{y}">{esc(fmt)}</text>')
        x += 26 + 7 * len(fmt)
    out.append(_marker("cross", x + 5, y - 4, 4.5, f'stroke="{HARD_COLOUR}" stroke-width="2.4" fill="none"', "hard")
               + f'<text class="tl" x="{x + 14}" y="{y}">hard failure (NaN/inf, crash…), colour = format</text>')
    return "".join(out)


def _scatter_markers(points: list[PlotPoint], xs: LogScale, ys: LogScale, style: dict[str, tuple[str, str]],
                     quantity: str) -> list[str]:
    """Markers, one per pixel position and format: coincident records are merged (data-n counts them)."""
    merged: dict[tuple[int, int, str, bool], list[PlotPoint]] = defaultdict(list)
    for p in points:
        y = _HARD_BAND_Y if p.hard else ys(p.ulp or 0.0)
        merged[(round(xs(p.x)), round(y), p.record.dtype, p.hard)].append(p)
    out = []
    # Hard failures last, so they sit on top.
    for (px, py, dtype, hard), group in sorted(merged.items(), key=lambda kv: kv[0][3]):
        colour, shape = style.get(dtype, (FORMAT_COLOURS[0], "circle"))
        first = group[0]
        figure = ("hard failure: " + _clip(first.record.reasons[0] if first.record.reasons else
                                           first.record.error or "failed", 140)) if hard \
            else f"max {fmt_num(first.ulp)} ulp"
        tip = f"{first.record.id}: {figure}; {quantity} {fmt_num(first.x)}"
        if len(group) > 1:
            tip += f" (+{len(group) - 1} more here: " + ", ".join(
                f"{g.record.op}{' bwd' if g.record.direction == 'backward' else ''}/{g.record.case}"
                for g in group[1:6]) + (" …" if len(group) > 6 else "") + ")"
        if hard:
            attrs = f'class="pt hard" data-n="{len(group)}" stroke="{colour}" stroke-width="2.4" fill="none"'
            out.append(_marker("cross", px, py, 5, attrs, tip))
        else:
            attrs = f'class="pt soft" data-n="{len(group)}" fill="{colour}"'
            out.append(_marker(shape, px, py, 4.2, attrs, tip))
    return out


# ----------------------------------------------------------------------------------------------
# 5. Worst findings
# ----------------------------------------------------------------------------------------------


def _findings_section(doc: ResultsDocument, n: int) -> str:
    findings = worst_findings(_audited(doc), n)
    total = sum(1 for r in _audited(doc) if r.verdict in (FAIL, WARN))
    out = ['<section id="findings"><h2>Worst findings</h2>']
    if not findings:
        out.append("<p>No FAIL or WARN: every judged record is within its stability envelope.</p></section>")
        return "\n".join(out)
    out.append(f'<p class="note">{len(findings)} of {total} FAIL/WARN records: FAIL first, the worst of each '
               "candidate × op × direction before the next worst of any, the candidates taking turns. Values are exact: inputs and "
               "outputs are written with repr, the exact value with 17 significant digits.</p>")
    out.extend(_finding(r, doc, i + 1) for i, r in enumerate(findings))
    out.append("</section>")
    return "\n".join(out)


def _finding(r: Record, doc: ResultsDocument, number: int) -> str:
    m = r.metrics
    at = (m.worst or m.first_mismatch) if m is not None else None
    head = (f'<h3>{number}. {_verdict_badge(r.verdict)} <code>{esc(r.candidate)}</code> · '
            f"{esc(_op_label(r.op, r.direction))} · {esc(r.dtype)} · case <code>{esc(r.case)}</code> "
            f'<span class="fam">({esc(r.family)})</span></h3>')
    what = f'<p class="desc">The case: {esc(r.case_description)}</p>' if r.case_description else ""
    params = ""
    if r.parameters:
        params = '<p class="params">parameters: ' + ", ".join(
            f"{esc(k)}={esc(v)}" for k, v in r.parameters.items()) + "</p>"
    reasons = "".join(f"<li>{esc(x)}</li>" for x in r.reasons)
    extra = f'<li class="error">error: {esc(r.error)}</li>' if r.error and r.error not in r.reasons else ""
    notes = "".join(f'<li class="notes">note: {esc(x)}</li>' for x in r.notes)
    values = _values_table(m.worst if m else None, m.first_mismatch if m else None)
    excerpt = _excerpt_table(r.excerpt, at)
    commands = (f'<div class="cmds"><div>re-audit this record:<br><code class="cmd">{esc(rerun_command(r, doc))}'
                '</code></div><div>write a standalone repro script:<br>'
                f'<code class="cmd">{esc(repro_command(r, doc))}</code></div></div>')
    return (f'<article class="finding v-{esc(r.verdict)}">{head}{what}{params}<ul class="reasons">{reasons}{extra}'
            f'{notes}</ul><div class="evidence">{excerpt}{values}{commands}</div></article>')


# ----------------------------------------------------------------------------------------------
# 5b. Diagnosis (docs/diagnosis.md): a card per candidate with FAILs or WARNs
# ----------------------------------------------------------------------------------------------


def _diagnosis_section(doc: ResultsDocument) -> str:
    diagnoses = doc.diagnoses or []
    out = ['<section id="diagnosis"><h2>Diagnosis</h2>',
           '<p class="note">The likely cause of each candidate × op × direction with a FAIL or WARN, ranked by '
           "confidence: each names the experiment (a few small discriminating inputs, judged like the audit) or "
           "the records that settled it. Open a cause for its evidence, explanation and fix (docs/diagnosis.md)."
           "</p>"]
    for cand in dict.fromkeys(d.candidate for d in diagnoses):
        mine = [d for d in diagnoses if d.candidate == cand]
        groups = "".join(_diagnosis_group(d) for d in mine)
        out.append(f'<article class="diag-card"><h3>Candidate <code>{esc(cand)}</code></h3>{groups}</article>')
    out.append("</section>")
    return "\n".join(out)


def _diagnosis_group(d: Any) -> str:
    head = (f'<h4>{_verdict_badge(d.verdict)} {esc(_op_label(d.op, d.direction))} '
            f'<span class="fam">({esc(d.failing_records)} failing record{"s" if d.failing_records != 1 else ""})'
            "</span></h4>")
    return head + '<ol class="causes">' + "".join(_diagnosis_cause(c) for c in d.causes) + "</ol>"


def _diagnosis_cause(c: Any) -> str:
    if c.class_id == "no-known-cause":
        line = f'<strong>no known cause</strong> — {esc(c.finding)}'
    else:
        line = (f'<code class="cls">{esc(c.class_id)}</code> <span class="conf">{c.confidence:.2f}</span> '
                f'{esc(c.title)} <span class="settled">settled by {esc(c.settled_by or "the records")}</span>')
    body = []
    if c.class_id != "no-known-cause" and c.finding:
        body.append(f"<p><strong>Finding:</strong> {esc(c.finding)}</p>")
    if c.experiments:
        body.append("<ul>" + "".join(f"<li>experiment <code>{esc(e.id)}</code> ({esc(e.dtype)}): {esc(e.outcome)}</li>"
                                     for e in c.experiments) + "</ul>")
    if c.evidence:
        body.append("<p><strong>Evidence:</strong> " + ", ".join(f"<code>{esc(e)}</code>" for e in c.evidence) + "</p>")
    if c.explanation:
        body.append(f"<p>{esc(c.explanation)}</p>")
    if c.fix:
        body.append(f"<p><strong>Fix:</strong> {esc(c.fix)}</p>")
    if c.sketch:
        body.append(f'<pre class="sketch">{esc(c.sketch)}</pre>')
    return f'<li><details><summary>{line}</summary>{"".join(body)}</details></li>'


def _values_table(worst: Location | None, first: Location | None) -> str:
    """The located elements' values, one column each: exact (17 digits), correctly rounded,
    computed (repr, so exact), and the error figures."""
    located = [(label, loc) for label, loc in (("worst element", worst), ("first wrong class", first))
               if loc is not None]
    if len(located) == 2 and first == worst:
        located = located[:1]
    if not located:
        return '<p class="note">No element values: the call produced nothing to compare.</p>'
    fields: list[tuple[str, str, Callable[[Location], str]]] = [
        ("where", "", lambda loc: f"row {loc.row}" + (f", col {loc.col}" if loc.col is not None else "")),
        ("input", "num", lambda loc: fmt_value(loc.input)),
        ("exact", "num exact", lambda loc: loc.exact or "–"),
        ("rounded exact", "num", lambda loc: fmt_value(loc.rounded_exact)),
        ("computed", "num computed", lambda loc: fmt_value(loc.computed)),
        ("err ulp", "num", lambda loc: fmt_num(loc.err_ulp)),
        ("envelope ulp", "num", lambda loc: fmt_num(loc.envelope_ulp)),
        ("stability ratio", "num", lambda loc: fmt_num(loc.ratio)),
    ]
    head = "".join(f"<th>{label}</th>" for label, _ in located)
    rows = "".join(f"<tr><th>{name}</th>" + "".join(f'<td class="{cls}">{esc(get(loc))}</td>' for _, loc in located)
                   + "</tr>" for name, cls, get in fields)
    return f'<table class="values"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _excerpt_table(excerpt: dict | None, at: Location | None) -> str:
    """The input row around the pointed-at element: col → value (repr), that column highlighted."""
    if not excerpt or not excerpt.get("values"):
        return ""
    values = excerpt["values"]
    finite = [(c, v) for c, v in values if v is not None and not math.isnan(v)]
    largest = max(finite, key=lambda cv: cv[1])[0] if finite else None
    pointed = at.col if at is not None and at.col is not None and at.row == excerpt.get("row") else largest
    rows = []
    for col, value in values:
        cls = ' class="pointed"' if col == pointed else ""
        tag = " ◀ pointed at" if col == pointed else (" (row max)" if col == largest else "")
        rows.append(f"<tr{cls}><td class=\"num\">{esc(col)}</td><td class=\"num\">{esc(fmt_value(value))}"
                    f'<span class="tag">{esc(tag)}</span></td></tr>')
    return (f'<table class="excerpt"><caption>input row {esc(excerpt.get("row"))} '
            f'(n = {esc(excerpt.get("n"))})</caption><thead><tr><th>col</th><th>x</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


# ----------------------------------------------------------------------------------------------
# 6. Speed
# ----------------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    """Timing of one candidate × op × direction × format: medians over the shapes it was timed at."""

    candidate: str
    op: str
    direction: str
    dtype: str
    median_s: float
    shapes: int
    pct_copy_bandwidth: float | None


def speed_rows(speed: list[SpeedRecord]) -> list[SpeedRow]:
    """Timed speed records grouped like the summary table (medians over the shapes)."""
    groups: dict[tuple[str, str, str, str], list[SpeedRecord]] = defaultdict(list)
    for sp in speed:
        if sp.median_s is not None:
            groups[(sp.candidate, sp.op, sp.direction, sp.dtype)].append(sp)
    first_seen = {c: i for i, c in enumerate(dict.fromkeys(sp.candidate for sp in speed))}
    order = {name: i for i, name in enumerate((*OPS, *DIRECTIONS, *FORMATS))}
    out = []
    for (cand, op, direction, dtype), timed in sorted(groups.items(), key=lambda kv: (
            first_seen[kv[0][0]], *(order.get(k, 99) for k in kv[0][1:]))):
        pct = [float(sp.figures["pct_copy_bandwidth"]) for sp in timed  # type: ignore[index]
               if isinstance((sp.figures or {}).get("pct_copy_bandwidth"), (int, float))]
        out.append(SpeedRow(cand, op, direction, dtype, _median([sp.median_s for sp in timed]),  # type: ignore[misc]
                            len(timed), _median(pct) if pct else None))
    return out


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _speed_section(doc: ResultsDocument) -> str:
    rows = speed_rows(doc.speed)
    if not rows:
        return ('<section id="speed"><h2>Speed</h2><p>Speed was not measured in this run '
                "(softaudit run --bench).</p></section>")
    lines = "".join(
        f"<tr><td><code>{esc(s.candidate)}</code></td><td>{esc(_op_label(s.op, s.direction))}</td>"
        f'<td>{esc(s.dtype)}</td><td class="num">{esc(_seconds(s.median_s))}</td><td class="num">{s.shapes}</td>'
        f'<td class="num">{esc(_short(s.pct_copy_bandwidth))}</td></tr>' for s in rows)
    table = ('<table class="plain"><thead><tr><th>candidate</th><th>op</th><th>format</th><th>median time</th>'
             f"<th>shapes timed</th><th>% of copy bandwidth</th></tr></thead><tbody>{lines}</tbody></table>")
    bars = [s for s in rows if s.pct_copy_bandwidth is not None]
    return (f'<section id="speed"><h2>Speed</h2>{table}'
            + (_bandwidth_svg(bars) if bars else "") + "</section>")


def _seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _bandwidth_svg(rows: list[SpeedRow]) -> str:
    """Horizontal bars: % of a plain copy's memory bandwidth each candidate × op × format reached."""
    labels = [f"{_clip(s.candidate, 30)} · {_op_label(s.op, s.direction)} · {s.dtype}" for s in rows]
    label_w, bar_h = min(480, 16 + 6.4 * max(len(label) for label in labels)), 18
    width = label_w + 580
    box = PlotBox(left=label_w, top=12, right=width - 20, bottom=12 + bar_h * len(rows) + 4)
    top_pct = max(100.0, max(s.pct_copy_bandwidth or 0.0 for s in rows))

    def scale(pct: float) -> float:
        return box.left + (box.right - box.left) * pct / top_pct

    xticks = [(scale(p), f"{p:g}%") for p in range(0, int(top_pct) + 1, 25 if top_pct <= 200 else 100)]
    colours = {c: FORMAT_COLOURS[i % len(FORMAT_COLOURS)] for i, c in enumerate(dict.fromkeys(s.candidate
                                                                                                for s in rows))}
    out = [f'<svg class="bars" width="{width:.0f}" height="{box.bottom + 50:.0f}" '
           f'viewBox="0 0 {width:.0f} {box.bottom + 50:.0f}" role="img" aria-label="percent of copy bandwidth">',
           svg_axes(box, xticks, [], "% of copy bandwidth (median over the shapes timed)", "")]
    for i, s in enumerate(rows):
        y = box.top + 2 + bar_h * i
        out.append(f'<text class="tl" x="{label_w - 8}" y="{y + 12:.1f}" text-anchor="end">{esc(labels[i])}</text>'
                   f'<rect class="bar" x="{box.left:.1f}" y="{y + 2:.1f}" height="{bar_h - 5}" '
                   f'width="{scale(s.pct_copy_bandwidth or 0.0) - box.left:.1f}" fill="{colours[s.candidate]}">'
                   f"<title>{esc(s.candidate)} {esc(_op_label(s.op, s.direction))} {esc(s.dtype)}: "
                   f"{esc(_short(s.pct_copy_bandwidth))}% of copy bandwidth</title></rect>")
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# 7. Skipped, 8. Environment
# ----------------------------------------------------------------------------------------------


def _skipped_section(doc: ResultsDocument) -> str:
    skipped = [r for r in doc.records if r.verdict == SKIP]
    if not skipped:
        return '<section id="skipped"><h2>Skipped</h2><p>Nothing was skipped.</p></section>'
    by_reason: dict[str, list[Record]] = defaultdict(list)
    for r in skipped:
        by_reason[r.reasons[0] if r.reasons else "skipped (no reason given)"].append(r)
    rows = "".join(
        f'<tr><td class="num">{len(recs)}</td><td>{esc(reason)}</td>'
        f'<td>{esc(", ".join(dict.fromkeys(r.candidate for r in recs)))}</td>'
        f'<td>{esc(", ".join(dict.fromkeys(r.dtype for r in recs)))}</td></tr>'
        for reason, recs in sorted(by_reason.items(), key=lambda kv: -len(kv[1])))
    return (f'<section id="skipped"><h2>Skipped ({len(skipped)} records)</h2><table class="plain"><thead><tr>'
            "<th>records</th><th>reason</th><th>candidates</th><th>formats</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


_EMPTY_MEANS_ALL = ("ops", "dtypes", "cases")
"""Options whose empty list means "every one" (docs/json-schema.md)."""


def _value_text(v: Any, key: str = "") -> str:
    """An environment or option value as text: lists comma-joined, dicts as JSON."""
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else ("(all)" if key in _EMPTY_MEANS_ALL else "(none)")
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _key_table(caption: str, items: dict) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_value_text(v, k))}</td></tr>" for k, v in items.items())
    return f'<table class="kv"><caption>{esc(caption)}</caption><tbody>{rows or "<tr><td>–</td></tr>"}</tbody></table>'


def _environment_section(doc: ResultsDocument) -> str:
    cands = "".join(
        f"<tr><td><code>{esc(c.get('name', ''))}</code></td><td><code>{esc(c.get('target', ''))}</code></td>"
        f"<td>{esc(_value_text(c.get('ops'), 'ops'))}</td><td>{esc(_value_text(c.get('backend')))}</td>"
        f"<td>{esc(c.get('description') or '')}</td></tr>" for c in doc.candidates)
    run = {k: v for k, v in doc.summary.items() if k not in ("pass", "warn", "fail", "skip")}
    return ('<section id="environment"><h2>Environment</h2><div class="kvs">'
            + _key_table("environment", doc.environment) + _key_table("options", doc.options)
            + _key_table("run summary", run) + "</div>"
            + ('<table class="plain"><caption>candidates</caption><thead><tr><th>name</th><th>target</th><th>ops</th>'
               f"<th>backend</th><th>description</th></tr></thead><tbody>{cands}</tbody></table>" if cands else "")
            + "</section>")


_CSS = """
:root{--ink:#1d232a;--muted:#5d6670;--line:#d9dee3;--soft:#f5f7f9}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1380px;padding:20px 28px 40px;color:var(--ink);background:#fff;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
code,.num,.cmd{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
h1{font-size:24px;margin:4px 0 10px}h2{font-size:19px;margin:30px 0 8px;padding-bottom:4px;
border-bottom:2px solid var(--line)}h3{font-size:15px;margin:8px 0 6px}
.note{color:var(--muted);margin:4px 0 10px;max-width:1100px}
nav{margin:10px 0 0;color:var(--muted)}nav a{color:#0b5cad;text-decoration:none}
table{border-collapse:collapse}th,td{padding:4px 9px;text-align:left;vertical-align:top}
.facts th{color:var(--muted);font-weight:500;padding-left:0;white-space:nowrap}
.badge{display:inline-block;padding:1px 7px;border-radius:4px;font-weight:700;font-size:12px;letter-spacing:.3px}
.badge.v-PASS{background:#2e7d32;color:#fff}.badge.v-WARN{background:#f2b200;color:#222}
.badge.v-FAIL{background:#c62828;color:#fff}.badge.v-SKIP{background:#9e9e9e;color:#fff}
.count{margin-right:8px;font-weight:600}.count.v-PASS{color:#2e7d32}.count.v-WARN{color:#9a6700}
.count.v-FAIL{color:#c62828}.count.v-SKIP{color:#757575}.warn-text{color:#9a6700}
.matrix{margin:6px 0}.matrix td,.matrix th{border:1px solid var(--line)}
.matrix thead th{background:var(--soft);text-align:center}
.matrix .cand-row th{background:#eef2f6;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}
.matrix th.op{font-weight:500;white-space:nowrap}
.cell{min-width:190px}.cell.v-PASS{background:#eef8ee}.cell.v-WARN{background:#fff6d6}
.cell.v-FAIL{background:#fde8e6}.cell.v-SKIP{background:#f2f2f2;color:var(--muted)}
.cell .fig{font-size:12px;margin-left:4px}.cell .tally{font-size:11px;color:var(--muted)}
.cell .wrong{color:#a31515;font-weight:600}td.empty{color:#aaa;font-size:12px}
.plain td,.plain th,.kv td,.kv th,.values td,.values th,.excerpt td,.excerpt th{border:1px solid var(--line)}
.plain thead th,.values thead th,.excerpt thead th{background:var(--soft)}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:system-ui,"DejaVu Sans",sans-serif}
.tl{font-size:11px;fill:#333}.at{font-size:12px;fill:#222}.hl{font-size:12.5px;fill:#222}
.pt-title{font-size:13px;font-weight:600;fill:#222}
.cv{font-size:14px;font-weight:700}.cs{font-size:11px}
.halo{paint-order:stroke;stroke:#3b1858;stroke-width:3px}
.frame{fill:#fff;stroke:#888}.grid{stroke:#e6e9ec}.tick{stroke:#666}
.band{fill:#f6effb}.hardl{fill:#5b2a86;font-weight:600}
.pt.soft{stroke:#222;stroke-width:.5;fill-opacity:.78}.pt.hard{stroke-linecap:round}
.brk{stroke:#999;stroke-dasharray:3 3}
.legend{margin-top:8px}.scroll{overflow-x:auto}svg.heat{max-width:none}
.pair{margin:14px 0 22px}.pair figcaption{font-weight:600;margin-bottom:4px}
.plots{display:flex;flex-wrap:wrap;gap:14px}
.finding{border:1px solid var(--line);border-left:5px solid #c62828;border-radius:4px;padding:8px 14px 10px;
margin:12px 0}.finding.v-WARN{border-left-color:#f2b200}
.finding .fam{color:var(--muted);font-weight:400}.desc{margin:2px 0;color:#333}.params{margin:2px 0;
color:var(--muted);font-size:12.5px}.reasons{margin:6px 0 8px;padding-left:20px}.reasons li{margin:2px 0}
.reasons .notes{color:var(--muted)}.reasons .error{color:#a31515}
.evidence{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.values td{white-space:nowrap}.values tbody th{color:var(--muted);font-weight:500;white-space:nowrap}
.excerpt caption,.kv caption,.plain caption{text-align:left;font-weight:600;padding:2px 0;color:var(--muted)}
.excerpt tr.pointed td{background:#fff1b8;font-weight:700}.tag{color:var(--muted);font-weight:400;
font-family:system-ui,sans-serif;font-size:11px;margin-left:6px}
.values td.exact{background:#eef6ff}.values td.computed{background:#fff4f2}
.cmds{flex:1 1 420px;font-size:12.5px;color:var(--muted)}.cmds div{margin:0 0 8px}
.cmd{color:var(--ink);background:var(--soft);border:1px solid var(--line);border-radius:3px;padding:1px 5px;
user-select:all;overflow-wrap:anywhere}
.kvs{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start;margin-bottom:14px}
.kv th{color:var(--muted);font-weight:500}.kv td{font-family:ui-monospace,"DejaVu Sans Mono",monospace;
font-size:12.5px;max-width:520px;word-break:break-word}
.diag-card{border:1px solid var(--line);border-left:5px solid #5b2a86;border-radius:4px;padding:8px 14px 10px;
margin:12px 0}.diag-card h4{font-size:14px;margin:10px 0 4px}.causes{margin:4px 0;padding-left:22px}
.causes summary{cursor:pointer}.cls{font-weight:700}.conf{font-weight:600;color:#5b2a86}
.settled{color:var(--muted);font-size:12.5px}.sketch{background:var(--soft);border:1px solid var(--line);
padding:6px 10px;overflow-x:auto;font-size:12.5px}
footer{margin-top:36px;color:var(--muted);font-size:12px}
@media print{
body{max-width:none;padding:0;font-size:11px;background:#fff;color:#000}
nav,footer{display:none}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
table,figure,svg,.finding,.pair,tr{break-inside:avoid;page-break-inside:avoid}
h2,h3{break-after:avoid;page-break-after:avoid}
.cmd{background:#fff}svg.heat{max-width:100%}.scroll{overflow:visible}
}
"""
