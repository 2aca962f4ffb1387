"""The Markdown report: a pull-request comment (short) or a job summary (complete), GitHub-flavoured.

Every string that comes from a candidate, a case or the environment goes through ``md_text``
(plain text) or ``md_code`` (a code span), so a hostile name shows as text: GitHub renders raw
HTML, and an unescaped ``|`` would split a table cell.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from softaudit.formats import FORMATS
from softaudit.judging.metrics import Location
from softaudit.judging.verdicts import FAIL, PASS, SEVERITY, SKIP, WARN, fmt_num, fmt_value, where
from softaudit.reports.terminal import SPEED_LEGEND, Row, short_number, speed_grid, summary_rows
from softaudit.results.document import ResultsDocument, rerun_command
from softaudit.results.ranking import worst_findings
from softaudit.results.records import Record

SMALL_TABLE_ROWS = 12
"""A summary table this long is shown whole even in the short form."""
SHORT_TABLE_ROWS = 25
"""The short form lists at most this many FAIL/WARN rows (a huge run stays a readable comment)."""

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""Control characters, and lone surrogates (JSON can hold them; UTF-8 cannot be written with them)."""
_MD_SPECIAL = {"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "~": "\\~",
               "|": "\\|", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_SPECIAL_RE = re.compile("|".join(re.escape(c) for c in _MD_SPECIAL))
_ICON = {FAIL: "❌", WARN: "⚠️", PASS: "✅"}
_BADGE = {v: f"{_ICON[v]} {v}" if v in _ICON else v for v in (FAIL, WARN, PASS, SKIP)}


def _one_line(text: object) -> str:
    """Control characters dropped, every run of whitespace (newlines included) one space."""
    return " ".join(_CONTROL.sub("", str(text)).split())


def md_text(text: object) -> str:
    """Untrusted text as inert Markdown on one line: safe in a paragraph, a list and a table cell.

    Backslash-escapes what Markdown would read as emphasis, code, links, strikethrough or a cell
    boundary, and writes ``< > &`` as entities so raw HTML is shown, never rendered.
    """
    return _MD_SPECIAL_RE.sub(lambda m: _MD_SPECIAL[m.group()], _one_line(text))


def md_code(text: object, in_table: bool = False) -> str:
    """Untrusted text as one code span: the fence is one backtick longer than the longest run inside.

    In a table cell ``|`` is escaped too (GFM splits cells before it parses code spans).
    """
    body = _one_line(text)
    if not body:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    if body[0] in "` " or body[-1] in "` ":
        body = f" {body} "
    if in_table:
        body = body.replace("|", "\\|")
    return f"{fence}{body}{fence}"


def finding_location(record: Record) -> tuple[str, Location] | None:
    """The element a finding points at, with a label: the first wrong-class element, else the
    element with the highest stability ratio; None when nothing was measured (a crash, a skip)."""
    m = record.metrics
    if m is None:
        return None
    if m.class_mismatches and m.first_mismatch is not None:
        return "first wrong-class element", m.first_mismatch
    if m.worst is not None:
        return "worst element", m.worst
    return None


def _figures(loc: Location) -> str:
    """The error at a measured element ("" for a wrong-class one, which has no error in ulps)."""
    if loc.err_ulp != loc.err_ulp:  # NaN: not measured
        return ""
    return f"{fmt_num(loc.err_ulp)} ulp, envelope {fmt_num(loc.envelope_ulp)} ulp, ratio {fmt_num(loc.ratio)}"


def describe_element(record: Record) -> str | None:
    """The element a finding points at in plain text (position, input, exact, computed, error), or None."""
    located = finding_location(record)
    if located is None:
        return None
    label, loc = located
    figures = _figures(loc)
    return f"{label}, {where(loc)}" + (f" ({figures})" if figures else "")


def _dtypes(records: list[Record]) -> list[str]:
    seen = {r.dtype for r in records if r.dtype in FORMATS}
    return [name for name in FORMATS if name in seen]


def _status_line(doc: ResultsDocument) -> str:
    """The verdict in one line: what failed (or warned) out of how many, over what."""
    n = len(doc.records)
    stopped = f"incomplete: interrupted (exit {doc.summary.get('exit_code', '?')})"
    if not n:
        return "**softaudit: no records**" + ("" if doc.complete else f" — {stopped}")
    c = doc.counts(gated_only=True)
    verdict = FAIL if c[FAIL] else WARN if c[WARN] else PASS
    if verdict == FAIL:
        text = f"{c[FAIL]} of {n} records fail" + (f", {c[WARN]} warn" if c[WARN] else "")
    elif verdict == WARN:
        text = f"{c[WARN]} of {n} records warn, none fail"
    else:
        text = f"all {n} records pass" if not c[SKIP] else f"{c[PASS]} of {n} records pass"
    if c[SKIP]:
        text += f", {c[SKIP]} skipped"
    candidates = len({r.candidate for r in doc.records})
    scope = f"{candidates} candidate{'s' if candidates != 1 else ''}"
    if _dtypes(doc.records):
        scope += ", " + "/".join(_dtypes(doc.records))
    line = (f"{_ICON[verdict]} **softaudit: {verdict}** — {text} ({scope})" if doc.complete else
            f"{_ICON[WARN]} **softaudit: {stopped}** — so far {text} ({scope})")
    if doc.baseline is not None:
        base_fails = doc.counts()[FAIL] - c[FAIL]
        line += (f"; baseline {md_text(doc.baseline)} of the relative rule not gated"
                 + (f" ({base_fails} of its records fail)" if base_fails else ""))
    if not doc.complete:
        line += " — these are the records collected before the stop"
    return line


_TABLE_HEAD = ("| candidate | op | direction | format | verdict | max ulp | max ratio | wrong class | worst case | P/W/F/S |\n"
               "|---|---|---|---|---|--:|--:|--:|---|--:|")


def _table_row(row: Row) -> str:
    cells = [md_text(row.candidate), md_text(row.op), md_text(row.direction), md_text(row.dtype),
             _BADGE.get(row.verdict, md_text(row.verdict)), short_number(row.max_ulp), short_number(row.max_ratio),
             row.nan_inf, md_text(row.worst_case), row.tally]
    return "| " + " | ".join(cells) + " |"


def _table(rows: list[Row]) -> list[str]:
    return [_TABLE_HEAD, *(_table_row(r) for r in rows)]


def _short_table(rows: list[Row]) -> list[str]:
    """The whole table when small; else the FAIL and WARN rows and a count of the others."""
    if len(rows) <= SMALL_TABLE_ROWS:
        return _table(rows)
    bad = [r for r in rows if r.verdict in (FAIL, WARN)]
    shown = {id(r) for r in sorted(bad, key=lambda r: -SEVERITY[r.verdict])[:SHORT_TABLE_ROWS]}
    lines = _table([r for r in bad if id(r) in shown]) if shown else []
    rest = []
    if len(bad) > len(shown):
        rest.append(f"{len(bad) - len(shown)} more FAIL/WARN rows")
    passing = sum(1 for r in rows if r.verdict == PASS)
    if passing:
        rest.append(f"{passing} row{'s' if passing != 1 else ''} that pass")
    skipped = sum(1 for r in rows if r.verdict == SKIP)
    if skipped:
        rest.append(f"{skipped} row{'s' if skipped != 1 else ''} not audited (every case skipped)")
    if rest:
        lines += ["", f"_Not shown: {', '.join(rest)} (the complete report, `--md-full`, lists every row)._"]
    return lines


def _finding(record: Record, doc: ResultsDocument) -> list[str]:
    """One finding as a bullet: verdict, id and first reason; the element; the case; the rerun line."""
    reason = record.reasons[0] if record.reasons else record.error or ""
    lines = [f"- **{record.verdict}** {md_text(record.id)}: {md_text(reason)}"]
    located = finding_location(record)
    if located is not None:
        label, loc = located
        figures = _figures(loc)
        lines.append(f"  - {label} (row {loc.row}{'' if loc.col is None else f', col {loc.col}'}): "
                     f"exact {md_code(loc.exact)}, computed {md_code(fmt_value(loc.computed))}"
                     + (f" — {figures}" if figures else ""))
    elif record.error:
        lines.append(f"  - error: {md_text(record.error)}")
    if record.case_description:
        lines.append(f"  - the case: {md_text(record.case_description)}")
    lines.append(f"  - rerun: {md_code(rerun_command(record, doc))}")
    return lines


def diagnosis_section(doc: ResultsDocument, complete: bool = False) -> list[str]:
    """A diagnosis card per candidate with FAILs or WARNs (docs/diagnosis.md): a line per cause
    (the top cause of each op x direction in the short form, every cause with ``complete``), then
    the explanations and fixes in a collapsible block."""
    diagnoses = doc.diagnoses or []
    out: list[str] = []
    for cand in dict.fromkeys(d.candidate for d in diagnoses):
        mine = [d for d in diagnoses if d.candidate == cand]
        out += [f"**Diagnosis: {md_text(cand)}**", ""]
        explained: dict[str, Any] = {}
        for d in mine:
            label = d.op if d.direction == "forward" else f"{d.op} backward"
            causes = d.causes if complete else d.causes[:1]
            for c in causes:
                if c.class_id == "no-known-cause":
                    finding = c.finding if complete or len(c.finding) <= 160 else c.finding[:159] + "…"
                    out.append(f"- {_BADGE.get(d.verdict, d.verdict)} {md_text(label)}: **no known cause** — "
                               f"{md_text(finding)}")
                    continue
                explained.setdefault(c.class_id, c)
                out.append(f"- {_BADGE.get(d.verdict, d.verdict)} {md_text(label)}: {md_code(c.class_id)} "
                           f"({c.confidence:.2f}) {md_text(c.title)} — settled by "
                           f"{md_text(c.settled_by or 'the records')}")
            if len(d.causes) > len(causes):
                out.append(f"  - _{len(d.causes) - len(causes)} more cause(s); `--md-full` lists them._")
        if explained:
            body: list[str] = []
            for c in explained.values():
                sketch = str(c.sketch or "")
                fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", sketch)), default=0) + 1)
                body += [f"{md_code(c.class_id)}: {md_text(c.explanation)}", "", f"Fix: {md_text(c.fix)}", ""]
                if sketch:
                    body += [f"{fence}python", _CONTROL.sub("", sketch), fence, ""]
            out += [""] + _details("Why, and the fix", body)
        out.append("")
    return out[:-1] if out else out


def _environment_line(doc: ResultsDocument) -> str:
    env = doc.environment
    torch = "not installed" if "torch" in env and env["torch"] is None else env.get("torch", "?")
    parts = [f"softaudit {env.get('softaudit') or doc.softaudit_version or '?'}", f"torch {torch}",
             f"numpy {env.get('numpy', '?')}", f"device {env.get('device', '?')}",
             f"seed {env.get('seed', doc.options.get('seed', 0))}"]
    return "<sub>" + " · ".join(md_text(p) for p in parts) + "</sub>"


def _details(summary: str, body: list[str], open_: bool = False) -> list[str]:
    """A collapsible block; ``summary`` is our own text (no Markdown is parsed inside <summary>)."""
    return [f"<details{' open' if open_ else ''}>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]


def speed_section(doc: ResultsDocument) -> list[str]:
    """With --bench: a table per candidate (a line per op x direction x format, a column per
    shape), folded in a collapsible block: a full bench is a hundred lines."""
    if not doc.speed:
        return []
    body: list[str] = [f"_{SPEED_LEGEND}._", ""]
    untimed = 0
    for name in dict.fromkeys(sp.candidate for sp in doc.speed):
        mine = [sp for sp in doc.speed if sp.candidate == name]
        untimed += sum(sp.median_s is None for sp in mine)
        shapes, lines = speed_grid(mine)
        if not lines:
            body += [f"**{md_text(name)}**: nothing could be timed.", ""]
            continue
        body += [f"**{md_text(name)}**", "",
                 "| op | dtype | " + " | ".join(f"{r}×{n}" for r, n in shapes) + " |",
                 "|---|---|" + "--:|" * len(shapes)]
        body += [f"| {md_text(label)} | {md_text(dtype)} | " + " | ".join(md_text(c or "-") for c in cells) + " |"
                 for label, dtype, cells in lines]
        body.append("")
    if untimed:
        body.append(f"_{untimed} measurements not timed; their reasons are in the JSON._")
    timed = len(doc.speed) - untimed
    return _details(f"Speed: {timed} measurements (% of copy bandwidth · median time)", body)


def _skip_reasons(skipped: list[Record]) -> list[str]:
    """The skipped records as a table: candidate, reason, how many (most frequent first)."""
    counts = Counter((r.candidate, r.reasons[0] if r.reasons else "skipped") for r in skipped)
    lines = ["| candidate | reason | records |", "|---|---|--:|"]
    lines += [f"| {md_text(cand)} | {md_text(reason)} | {n} |" for (cand, reason), n in counts.most_common()]
    return lines


_ALL_WHEN_EMPTY = ("ops", "dtypes", "cases")
"""Options whose empty list means "all" (docs/json-schema.md)."""


def _option_value(key: str, value: object) -> str:
    """An environment or option value as people read it: lists joined, empty ones "all" or "-"."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or ("all" if key in _ALL_WHEN_EMPTY else "-")
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_option_value(str(k), v)}" for k, v in value.items()) or "-"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _key_value_table(pairs: list[tuple[str, object]]) -> list[str]:
    lines = ["| name | value |", "|---|---|"]
    return lines + [f"| {md_text(k)} | {md_text(_option_value(k, v))} |" for k, v in pairs]


def _context_tables(doc: ResultsDocument) -> list[str]:
    """Environment, options and candidates, for the complete form."""
    lines = ["**Environment**", "", *_key_value_table(list(doc.environment.items()))]
    if doc.options:
        lines += ["", "**Options**", "", *_key_value_table(list(doc.options.items()))]
    if doc.candidates:
        lines += ["", "**Candidates**", "", "| name | target | backend | description |", "|---|---|---|---|"]
        lines += [f"| {md_text(c.get('name', ''))} | {md_text(c.get('target', ''))} | "
                  f"{md_text(', '.join(map(str, c.get('backend') or [])) or '-')} | {md_text(c.get('description') or '')} |"
                  for c in doc.candidates]
    return lines


def render_markdown(doc: ResultsDocument, complete: bool = False, max_findings: int = 5) -> str:
    """The report as GitHub-flavoured Markdown.

    Short (default, for a pull-request comment): status line, the table's FAIL/WARN rows (all rows
    when there are at most 12; at most 25 rows), the ``max_findings`` worst findings
    (results.ranking.worst_findings) and the environment in one line. ``complete``: every row, every FAIL/WARN record, the skip reasons
    and the environment, options and candidates, long parts in collapsible blocks.
    """
    rows = summary_rows(doc.records)
    out = [_status_line(doc), ""]
    if rows:
        if complete:
            table = _table(rows)
            out += _details(f"Summary: {len(rows)} rows (candidate × op × direction × format)", table, open_=True) \
                if len(rows) > SMALL_TABLE_ROWS else table
        else:
            out += _short_table(rows)
        out.append("")

    findings = worst_findings(doc.records)
    if findings:
        shown = findings if complete else findings[:max(max_findings, 0)]
        body = [line for rec in shown for line in _finding(rec, doc)]
        if complete and len(findings) > max_findings:
            out += _details(f"All {len(findings)} findings (FAIL, then WARN)", body)
        elif shown:
            out += ["**Worst findings**" if not complete else "**Findings**", "", *body]
        if not complete and len(findings) > len(shown):
            out += ["", f"_{len(shown)} of {len(findings)} FAIL/WARN records shown; `--md-full` lists them all._"]
        out.append("")

    diagnosis = diagnosis_section(doc, complete)
    if diagnosis:
        out += diagnosis + [""]

    speed = speed_section(doc)
    if speed:
        out += speed + [""]

    if complete:
        skipped = [r for r in doc.records if r.verdict == SKIP]
        if skipped:
            out += _details(f"{len(skipped)} skipped records, by reason", _skip_reasons(skipped)) + [""]
        out += _details("Environment, options and candidates", _context_tables(doc)) + [""]
    out.append(_environment_line(doc))
    return "\n".join(out) + "\n"
