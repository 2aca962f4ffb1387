"""What ``softaudit search`` prints and writes: the terminal summary and the JSON result.

The minimal input is shown in full and exactly (each value as the repr of the float64 holding it);
runs of one repeated value are written ``value ×count`` so a 1 x 1025 row stays readable. The JSON
writes every value as a number, or the strings "inf", "-inf", "nan" (docs/search.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from softaudit.results.schema import json_number, record_dict
from softaudit.search.engine import Evaluation, SearchResult, describe_class

SEARCH_SCHEMA_VERSION = 1
RUN_LENGTH = 4
"""Runs of at least this many equal values are written once with their count."""


def value_text(v: float) -> str:
    """One input value, exactly (repr of its float64), as the case file writes it."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def row_text(row: Any) -> str:
    """A row in full, with runs of RUN_LENGTH or more equal values written ``value ×count``."""
    parts: list[str] = []
    values = [float(v) for v in row]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and value_text(values[j + 1]) == value_text(values[i]):
            j += 1
        count = j - i + 1
        if count >= RUN_LENGTH:
            parts.append(f"{value_text(values[i])} ×{count}")
        else:
            parts.extend(value_text(values[i]) for _ in range(count))
        i = j + 1
    return "[" + ", ".join(parts) + "]"


def display_path(path: Path | None) -> str:
    """A path relative to the current directory when it lies below it, else as it is."""
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _count(k: int, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"


def _shape(ev: Evaluation) -> str:
    rows, n = ev.trial.shape
    return f"{rows} x {n}"


def _loss_line(ev: Evaluation) -> str | None:
    t = ev.trial
    if t.target is None:
        return None
    parts = [f"target {list(t.target)}"]
    if t.label_smoothing:
        parts.append(f"label_smoothing {t.label_smoothing!r}")
    if t.ignore_index is not None:
        parts.append(f"ignore_index {t.ignore_index}")
    if t.reduction != "none":
        parts.append(f"reduction {t.reduction}")
    if t.weight is not None:
        parts.append(f"weight {row_text(t.weight)}")
    return ", ".join(parts)


def render_search(result: SearchResult, console: Console, show_reproducer: bool = True) -> None:
    """The search's outcome for a person at a terminal; an interrupted search ends with the line
    ``Result: incomplete: interrupted (exit 130)`` (143 for SIGTERM)."""
    _render_search(result, console, show_reproducer)
    if not result.complete:
        console.print(f"[yellow]Result: incomplete: interrupted (exit {result.exit_code})[/]", highlight=False)


def _render_search(result: SearchResult, console: Console, show_reproducer: bool) -> None:
    o = result.options
    label = o.op + (" backward" if o.direction == "backward" else "")
    console.print(f"[bold]softaudit search[/]: {result.candidate} · {label} · {o.format.name} · "
                  f"budget {o.budget:g} s · seed {o.seed}", highlight=False)
    mutations = result.evaluations - result.library_starts - result.random_starts
    console.print(f"Judged {_count(result.evaluations, 'input')} in {result.explore_seconds:.1f} s: "
                  f"{_count(result.library_starts, 'library case')}, {_count(result.random_starts, 'random start')}, "
                  f"{_count(mutations, 'mutation')} of the worst found.", highlight=False)
    if not result.complete:
        console.print("[yellow]Interrupted[/]: nothing was shrunk or saved.", highlight=False)
    worst = result.worst
    if result.minimal is None:
        if worst is None:
            console.print("[bold green]PASS[/]  no input could be judged (the candidate skipped every one)",
                          highlight=False)
            return
        if not result.complete and worst.failed:
            console.print(f"[bold red]FAIL[/]  {describe_class(worst.classes[0])} on a {_shape(worst)} input "
                          f"({worst.trial.origin})", highlight=False)
            return
        head = "[bold green]PASS[/]  no failing input found" if result.complete else "No failing input found so far"
        console.print(f"{head}; the worst: {worst.words()} on a {_shape(worst)} input "
                      f"({worst.trial.origin})", highlight=False)
        return
    minimal = result.minimal
    assert worst is not None and result.failure is not None
    console.print(f"[bold red]FAIL[/]  {describe_class(result.failure)}", highlight=False)
    console.print(f"  worst found: {worst.words()} on a {_shape(worst)} input, from {worst.trial.origin}"
                  + (f" after {len(worst.trial.moves)} mutations" if worst.trial.moves else ""), highlight=False)
    stats = result.shrink_stats
    if stats is not None:
        console.print(f"  shrunk to {_shape(minimal)} ({stats.kept} of {stats.tried} simplifications kept, "
                      f"{stats.seconds:.1f} s{'' if stats.complete else ', stopped by the time limit'})",
                      highlight=False)
    console.print()
    console.print(f"[bold]Minimal failing input[/] ({o.format.name}, {_shape(minimal)}; every value exact):",
                  highlight=False)
    for r, row in enumerate(minimal.trial.x):
        console.print(f"  row {r}: {row_text(row)}", highlight=False, soft_wrap=True)
    loss = _loss_line(minimal)
    if loss:
        console.print(f"  {loss}", highlight=False, soft_wrap=True)
    for reason in minimal.record.reasons:
        console.print(f"  {reason}", highlight=False, soft_wrap=True)
    console.print()
    if result.intermittent is not None:
        failed, judged = result.intermittent
        console.print(f"[bold yellow]Intermittent[/]: the saved case failed in {failed} of {judged} judgings of the "
                      "same input (and during the search): the candidate fails only sometimes on it.",
                      highlight=False, soft_wrap=True)
    verb = "Saved" if result.case_new else "Already in the corpus"
    console.print(f"{verb}: {display_path(result.case_path)}  (softaudit run adds the corpus to the case library; "
                  f"--case {result.case_name} selects it)", highlight=False, soft_wrap=True)
    if show_reproducer and result.reproducer:
        console.print()
        console.rule("Reproducer (softaudit repro): save it as a .py file and run it with python")
        console.print(result.reproducer, highlight=False, markup=False, soft_wrap=True, end="")
        console.rule()



def _input_json(ev: Evaluation) -> list[list[Any]]:
    return [[json_number(float(v)) for v in row] for row in ev.trial.x]


def search_dict(result: SearchResult) -> dict:
    """The search result as the JSON file holds it (docs/search.md)."""
    o = result.options
    out: dict[str, Any] = {
        "schema": "softaudit-search", "schema_version": SEARCH_SCHEMA_VERSION,
        "target": result.target, "candidate": result.candidate, "op": o.op, "direction": o.direction,
        "format": o.format.name, "seed": o.seed, "budget": o.budget, "complete": result.complete,
        "found": result.found, "exit_code": result.exit_code,
        "evaluations": result.evaluations, "explore_seconds": result.explore_seconds,
        "library_starts": result.library_starts, "random_starts": result.random_starts,
        "ratio_limit": o.gate.ratio_limit, "undefined_policy": o.gate.undefined_policy,
        "failure": result.failure, "failure_description": describe_class(result.failure) if result.failure else None,
        "input": None, "shape": None, "error_ulp": None, "stability_ratio": None, "reasons": [],
        "case_path": str(result.case_path) if result.case_path else None, "case_name": result.case_name,
        "case_new": result.case_new, "worst_found": None, "shrink": None, "environment": result.environment,
        "intermittent": None if result.intermittent is None else
        {"failed": result.intermittent[0], "judged": result.intermittent[1]},
    }
    if result.worst is not None:
        w = result.worst
        out["worst_found"] = {"shape": list(w.trial.shape), "classes": list(w.classes),
                              "stability_ratio": json_number(w.record.metrics.max_ratio if w.record.metrics else None),
                              "origin": w.trial.origin, "mutations": list(w.trial.moves)}
    m = result.failing  # the shrunk input, or (interrupted) the failing input found so far
    if m is not None:
        metrics = m.record.metrics
        out.update(input=_input_json(m), shape=list(m.trial.shape), reasons=list(m.record.reasons),
                   error_ulp=json_number(metrics.max_ulp if metrics else None),
                   stability_ratio=json_number(metrics.max_ratio if metrics else None), record=record_dict(m.record))
        if m.trial.target is not None:
            out["loss"] = {"target": list(m.trial.target), "label_smoothing": m.trial.label_smoothing,
                           "ignore_index": m.trial.ignore_index, "reduction": m.trial.reduction,
                           "weight": None if m.trial.weight is None else [json_number(v) for v in m.trial.weight]}
    if result.shrink_stats is not None:
        s = result.shrink_stats
        out["shrink"] = {"tried": s.tried, "kept": s.kept, "seconds": s.seconds, "complete": s.complete}
    return out


def search_json(result: SearchResult) -> str:
    return json.dumps(search_dict(result), indent=2, allow_nan=False) + "\n"
