"""The terminal summary: a table per candidate x op x format, then the worst findings in words."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from softaudit.formats import FORMATS
from softaudit.judging.verdicts import FAIL, INTERPRETER_LIMITATION, PASS, SEVERITY, SKIP, WARN
from softaudit.ops import DIRECTIONS, OPS
from softaudit.printable import printable
from softaudit.results.ranking import worst_findings, worst_record
from softaudit.results.records import Record, SpeedRecord
from softaudit.runner.loop import AuditResult

STYLES = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


@dataclass
class Row:
    """One line of the summary table: a candidate x op x format over every case."""

    candidate: str
    op: str
    direction: str
    dtype: str
    verdict: str
    worst_case: str
    max_ulp: float | None
    max_ratio: float | None
    nan_inf: str
    """Elements whose class (NaN, ±inf, finite) differs from the exact answer's."""
    tally: str
    worst: Record | None


def summary_rows(records: list[Record]) -> list[Row]:
    """Group records by candidate/op/direction/format and keep each group's worst figures."""
    groups: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.candidate, r.op, r.direction, r.dtype)].append(r)
    rows = []
    order = {name: i for i, name in enumerate((*OPS, *DIRECTIONS, *FORMATS))}
    first_seen = {cand: i for i, cand in enumerate(dict.fromkeys(k[0] for k in groups))}
    keys = sorted(groups, key=lambda k: (first_seen[k[0]], order.get(k[1], 99), order.get(k[2], 99), order.get(k[3], 99)))
    for cand, op, direction, dtype in keys:
        recs = groups[(cand, op, direction, dtype)]
        judged = [r for r in recs if r.verdict != SKIP]
        verdict = max((r.verdict for r in recs), key=SEVERITY.__getitem__)
        worst = worst_record(judged)
        metrics = [r.metrics for r in judged if r.metrics is not None]
        max_ulp = max((m.max_ulp for m in metrics if m.max_ulp is not None), default=None)
        max_ratio = max((m.max_ratio for m in metrics if m.max_ratio is not None), default=None)
        wrong = sum(m.class_mismatches for m in metrics)
        t = {v: sum(1 for r in recs if r.verdict == v) for v in (PASS, WARN, FAIL, SKIP)}
        tally = f"{t[PASS]}/{t[WARN]}/{t[FAIL]}/{t[SKIP]}"
        rows.append(Row(cand, op, direction, dtype, verdict, worst.case if worst and worst.verdict != PASS else "-",
                        max_ulp, max_ratio, str(wrong), tally, worst))
    return rows


def _table(candidate: str, rows: list[Row], wide: bool = True) -> Table:
    """One candidate's summary: a line per op x direction x format ("softmax bwd": its gradient).

    Narrow terminals (and CI logs at 80 columns) get the table without the worst-case
    column; the findings below it name the cases.
    """
    table = Table(title=Text(f"softaudit: {printable(candidate)}"), title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    widths = {"op": 17, "dtype": 8, "verdict": 7, "max ulp": 7, "ratio": 7, "bad": 3, "P/W/F/S": 7}
    columns = ["op", "dtype", "verdict"] + (["worst case"] if wide else []) + ["max ulp", "ratio", "bad", "P/W/F/S"]
    for col in columns:
        left = col in ("op", "dtype", "verdict", "worst case")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "worst case",
                         overflow="fold", min_width=widths.get(col, 22 if col == "worst case" else 8))
    for r in rows:
        cells: list[Any] = [r.op if r.direction == "forward" else f"{r.op} bwd", r.dtype,
                 Text(r.verdict, style=STYLES[r.verdict])]
        cells += [printable(r.worst_case)] if wide else []
        cells += [short_number(r.max_ulp), short_number(r.max_ratio), r.nan_inf, r.tally]
        table.add_row(*cells)
    return table


def speed_grid(speed: list[SpeedRecord]) -> tuple[list[tuple[int, int]], list[tuple[str, str, list[str | None]]]]:
    """Timings as a grid: the shapes (columns), and a line per op x direction x format timed at
    some shape: (op label, dtype, a cell per shape: "% · time", "not timed", or None where that
    shape was not asked for). The terminal, Markdown and JUnit reports print it."""
    shapes = list(dict.fromkeys(sp.shape for sp in speed))
    order = {name: i for i, name in enumerate((*OPS, *DIRECTIONS, *FORMATS))}
    cells: dict[tuple[str, str, str], dict[tuple[int, int], SpeedRecord]] = defaultdict(dict)
    for sp in speed:
        cells[(sp.op, sp.direction, sp.dtype)][sp.shape] = sp
    lines: list[tuple[str, str, list[str | None]]] = []
    for op, direction, dtype in sorted(cells, key=lambda k: tuple(order.get(v, 99) for v in k)):
        by_shape = cells[(op, direction, dtype)]
        if all(sp.median_s is None for sp in by_shape.values()):
            continue  # not timed at any shape (a numpy candidate's missing backward): said elsewhere
        row: list[str | None] = []
        for shape in shapes:
            timed = by_shape.get(shape)
            if timed is None or timed.median_s is None:
                row.append(None if timed is None else "not timed")
                continue
            pct = (timed.figures or {}).get("pct_copy_bandwidth")
            matmul = (timed.figures or {}).get("pct_matmul_bound")
            bound = f" ({short_number(matmul)}% matmul)" if isinstance(matmul, (int, float)) else ""
            row.append(f"{short_number(pct)}%{bound} · {seconds_text(timed.median_s)}")
        lines.append((op if direction == "forward" else f"{op} bwd", dtype, row))
    return shapes, lines


SPEED_LEGEND = ("each cell: % of the copy bandwidth (a device copy of the same bytes, timed in the same run) "
                "· median time of one call; linear_cross_entropy also the % of its matmul bound (torch's own "
                "matmuls of the same shapes)")


BREAKDOWN_PARTS = (("draw_s", "drawing inputs"), ("reference_s", "reference"), ("transfer_s", "transfers"),
                   ("compile_s", "compilation"), ("timing_s", "timed calls"), ("copy_s", "copy timing"))


def bench_breakdown(speed: list[SpeedRecord]) -> str:
    """One line: the bench's wall time and where it went (figures' ``breakdown``, summed)."""
    total: dict[str, float] = {}
    for sp in speed:
        for key, value in ((sp.figures or {}).get("breakdown") or {}).items():
            total[key] = total.get(key, 0.0) + float(value)
    if not total:
        return ""
    timed = total.get("timing_s", 0.0) - total.get("compile_s", 0.0)  # compilations happen inside the timing
    parts = {**total, "timing_s": timed}
    return f"bench: {total.get('total_s', 0.0):.1f} s: " + ", ".join(
        f"{label} {parts.get(key, 0.0):.1f} s" for key, label in BREAKDOWN_PARTS)


def speed_table(candidate: str, speed: list[SpeedRecord]) -> Table:
    """One candidate's timings: a line per op x direction x format, a column per shape."""
    table = Table(title=f"speed: {candidate}", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    shapes, lines = speed_grid(speed)
    table.add_column("op", justify="left", no_wrap=True, min_width=17)
    table.add_column("dtype", justify="left", no_wrap=True, min_width=8)
    for rows, n in shapes:  # a narrow console (a CI log: 80 columns) wraps a cell at " · ", never cuts it
        table.add_column(f"{rows}x{n}", justify="right", overflow="fold")
    for label, dtype, row in lines:
        table.add_row(label, dtype, *(cell if cell is not None and cell != "not timed"
                                      else Text(cell or "-", style="dim") for cell in row))
    return table


def seconds_text(s: float) -> str:
    """A duration in the unit that keeps it readable: 12.3 ms, 456 µs."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _not_audited(skipped_rows: list[Row], records: list[Record]) -> list[str]:
    """One line per op and direction that was skipped in every format and case, with the reason
    (a numpy candidate's missing backward, say), instead of a table line per format."""
    groups: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for row in skipped_rows:
        for r in records:
            if (r.candidate, r.op, r.direction, r.dtype) == (row.candidate, row.op, row.direction, row.dtype):
                groups[(r.op, r.direction)][r.reasons[0] if r.reasons else "skipped"] += 1
    lines = []
    for (op, direction), reasons in groups.items():
        label = op if direction == "forward" else f"{op} bwd"
        lines.append(f"  {label}: not audited ({printable(reasons.most_common(1)[0][0])})")
    return lines


def short_number(v: float | None, missing: str = "-") -> str:
    """Three significant digits, exponents written short (1.6e3): tables are for scanning;
    the JSON keeps full values. None and NaN are ``missing``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    text = f"{v:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def render(result: AuditResult, console: Console, max_findings: int = 10, diagnoses: Sequence[Any] | None = None,
           explain: bool = False, diagnosis_note: str = "") -> None:
    """Print the summary table, the worst findings, the diagnosis (when there is one), and the closing tally."""
    rows = summary_rows(result.records)
    for name in dict.fromkeys(r.candidate for r in rows):
        mine = [r for r in rows if r.candidate == name]
        shown = [r for r in mine if r.verdict != SKIP]
        console.print(_table(name, shown or mine, wide=console.width >= 100))
        if shown:
            for line in _not_audited([r for r in mine if r.verdict == SKIP], result.records):
                console.print(Text(line, style="dim"))

    for name in dict.fromkeys(sp.candidate for sp in result.speed):
        console.print(speed_table(name, [sp for sp in result.speed if sp.candidate == name]))
    if result.speed:
        console.print(Text(f"  {SPEED_LEGEND}; every figure is in --json", style="dim"))
        line = bench_breakdown(result.speed)
        if line:
            console.print(Text(f"  {line}", style="dim"))

    findings = worst_findings(result.records)
    if findings and max_findings > 0:  # --findings 0: none, and no heading either
        console.print()
        console.print(Text("Worst findings", style="bold"))
        for rec in findings[:max_findings]:
            head = Text(f"{rec.verdict} ", style=STYLES[rec.verdict])
            head.append(f"{printable(rec.candidate)} {rec.op}{' backward' if rec.direction == 'backward' else ''} "
                        f"{rec.dtype} on {printable(rec.case)}: ", style="bold")
            head.append(printable(rec.reasons[0]) if rec.reasons else "")
            console.print(head)
            if rec.case_description:
                console.print(Text(f"    the case: {printable(rec.case_description)}", style="dim"))
        if len(findings) > max_findings:
            console.print(f"... and {len(findings) - max_findings} more (all records are in --json)")
    if diagnoses:
        render_diagnoses(diagnoses, console, explain=explain, note=diagnosis_note)
    c = result.counts()
    console.print()
    tally = Text(f"{len(result.records)} records: ")
    for v in (PASS, WARN, FAIL, SKIP):
        tally.append(f"{c[v]} {v}", style=STYLES[v])
        tally.append("  ")
    tally.append(f"in {result.seconds:.1f} s (references: {result.cache_hits} cached, {result.cache_misses} computed)")
    console.print(tally)
    limited = [r for r in result.records
               if r.verdict == SKIP and r.reasons and r.reasons[0].startswith(INTERPRETER_LIMITATION)]
    if limited:
        first = limited[0]
        console.print(Text(f"{len(limited)} SKIP(s) are limitations of Triton's CPU interpreter, not findings: the "
                           f"interpreter itself raised (first: {printable(first.candidate)} {first.op}"
                           f"{' backward' if first.direction == 'backward' else ''} {first.dtype} on "
                           f"{printable(first.case)}: {printable(first.error or '')}); audit on a GPU to judge them.",
                           style="yellow"))
    if result.uncertified:
        console.print(Text(f"{result.uncertified} reference elements could not be certified correctly rounded "
                           "within the precision cap; their verdicts rest on an uncertified rounding.",
                           style="yellow"))
    if result.cache_damaged:
        console.print(Text(f"{result.cache_damaged} reference cache entries did not match their inputs (damaged or "
                           "altered) and were recomputed.", style="yellow"))
    if not result.complete:
        console.print(Text("Interrupted: these are the records collected before the stop.", style="bold yellow"))
    if result.baseline is not None:
        opts = result.options
        console.print(Text(f"Relative rule: every other candidate FAILs where its stability ratio exceeds "
                           f"{opts.relative_factor:g}x {printable(result.baseline)}'s + {opts.relative_slack:g}; "
                           f"{printable(result.baseline)}'s own verdicts do not set the exit code."))
    if result.options.gate.strict:
        console.print(Text("Strict: WARN counts as FAIL."))
    if not result.complete:  # never "no FAIL (exit 0)" for a run that did not finish
        console.print(Text(f"Result: incomplete: interrupted (exit {result.exit_code})", style="bold yellow"))
        return
    verdict = "FAIL" if result.exit_code else "no FAIL"
    console.print(Text(f"Result: {verdict} (exit {result.exit_code})", style=STYLES[FAIL if result.exit_code else PASS]))


def diagnosis_label(op: str, direction: str) -> str:
    return op if direction == "forward" else f"{op} backward"


def render_diagnoses(diagnoses: Sequence[Any], console: Console, explain: bool = False, note: str = "") -> None:
    """The "Diagnosis" section: one line per cause of every failing candidate x op x direction
    (softaudit.diagnosis.Diagnosis); ``explain`` adds each cause's finding, evidence, experiments,
    explanation and fix; ``note`` follows the heading (what the diagnosis ran, in parentheses)."""
    console.print()
    head = Text("Diagnosis", style="bold")
    if note:
        head.append(f" ({note})", style="dim")
    console.print(head)
    for d in diagnoses:
        where = f"{printable(d.candidate)} {diagnosis_label(d.op, d.direction)}"
        for cause in d.causes:
            line = Text("  ")
            line.append(f"{d.verdict} ", style=STYLES.get(d.verdict, ""))
            line.append(f"{where}: ", style="bold")
            if cause.class_id == "no-known-cause":
                finding = cause.finding if explain or len(cause.finding) <= 160 else cause.finding[:159] + "…"
                line.append("no known cause", style="bold")
                line.append(f"; {printable(finding)}")
            else:
                line.append(cause.class_id, style="bold cyan")
                line.append(f" ({cause.confidence:.2f}) {printable(cause.title)}")
                line.append(f"; settled by {printable(cause.settled_by or 'the records')}", style="dim")
            console.print(line)
            if explain:
                _explain(cause, console)
    if not explain:
        console.print(Text("  --explain gives each cause's evidence, explanation and fix (docs/diagnosis.md)",
                           style="dim"))


def _explain(cause: Any, console: Console) -> None:
    indent = "      "
    if cause.class_id != "no-known-cause":
        console.print(Text(f"{indent}finding: {printable(cause.finding)}"))
    if cause.evidence:
        console.print(Text(f"{indent}evidence: {', '.join(printable(e) for e in cause.evidence)}", style="dim"))
    for e in cause.experiments:
        console.print(Text(f"{indent}experiment {printable(e.id)} ({printable(e.dtype)}): {printable(e.outcome)}",
                           style="dim"))
    if cause.explanation:
        console.print(Text(f"{indent}{printable(cause.explanation)}"))
    if cause.fix:
        console.print(Text(f"{indent}fix: {printable(cause.fix)}", style="green"))
    for code in (cause.sketch or "").splitlines():
        console.print(Text(f"{indent}    {printable(code)}", style="cyan"))
