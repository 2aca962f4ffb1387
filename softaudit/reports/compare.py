"""``softaudit compare BASE.json NEW.json``: what got worse and what got better between two results files.

Records are matched by candidate name, op, direction, format and case; each matched pair is
checked for a new FAIL, NaN/±inf appearing, error growth and a slowdown (regressions, exit 1)
and for the reverse (improvements). Rules, defaults and their reasons: docs/compare.md.
It sits with the reports: like them it reads finished results documents (two here) and renders
what it finds, for the terminal and as JSON.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

from softaudit.judging.envelope import DEFAULT_RATIO_LIMIT
from softaudit.judging.verdicts import DEFAULT_UNDEFINED_POLICY, FAIL, PASS, SEVERITY, SKIP, WARN
from softaudit.reports.terminal import short_number
from softaudit.results.document import ResultsDocument, ResultsError
from softaudit.results.records import Record, SpeedRecord
from softaudit.results.schema import json_number

COMPARISON_VERSION = 1
"""Version of the ``--json`` output of compare (docs/compare.md); bumped on incompatible changes."""

REGRESSION_ORDER = ("new-fail", "nan-appeared", "error-grown", "slower", "missing")
IMPROVEMENT_ORDER = ("fixed", "nan-gone", "error-shrunk", "faster")
LABELS = {"new-fail": "NEW FAIL", "nan-appeared": "NaN/Inf", "error-grown": "ERROR", "slower": "SLOWER",
          "missing": "MISSING", "fixed": "FIXED", "nan-gone": "NaN/Inf GONE", "error-shrunk": "ERROR",
          "faster": "FASTER", "verdict": "VERDICT", "ulp-grown": "ULP +", "ulp-shrunk": "ULP -",
          "undefined-rows": "UNDEFINED", "added": "ADDED", "not-timed": "NOT TIMED"}

Key = tuple[str, str, str, str, str]

JUDGING_OPTIONS: dict[str, Any] = {"ratio_limit": DEFAULT_RATIO_LIMIT, "undefined_policy": DEFAULT_UNDEFINED_POLICY,
                                   "max_ulp": None, "strict": False, "limits": {}, "relative_to": None,
                                   "rowwise": False}
"""Results-file options that change verdicts, with the value a file that lacks one was run with."""


@dataclass
class CompareOptions:
    """What counts as a change (docs/compare.md has the measurements behind the defaults).

    Error is judged on the stability ratio (error / envelope, element by element: the figure verdicts
    rest on): NEW's max ratio above ``factor`` x BASE's + ``slack_ratio`` is a regression. ``factor``
    2.0 is one bit (flash-attention's tolerance between two implementations); ``slack_ratio`` 0.5,
    half an envelope, keeps an exact baseline (ratio 0) from making correct rounding (0.5 ulp
    against the smallest envelope, 1 ulp) a growth. Max ulp growth past ``factor`` x BASE's +
    ``slack_ulp`` (1 ulp, so that 0 -> 0.5 ulp is not an infinite growth) is listed but counts only
    with ``ulp_growth_is_regression``: max ulp sits on the elements with the widest envelopes and
    differs by whole factors between two sound implementations. ``speed_factor`` 1.5: timings are
    noisy on shared machines, so only a 50% slowdown counts.
    """

    factor: float = 2.0
    slack_ulp: float = 1.0
    speed_factor: float = 1.5
    missing_is_regression: bool = False
    """A BASE record that NEW lacks is a regression (it is always listed as removed)."""
    slack_ratio: float = 0.5
    ulp_growth_is_regression: bool = False
    """Max ulp growth alone is a regression too (else it is listed as an informational change)."""

    def check(self) -> None:
        """ValueError, one line naming the option, for a value out of range."""
        checks = (("factor", "--factor", self.factor, 1.0), ("slack_ulp", "--slack", self.slack_ulp, 0.0),
                  ("speed_factor", "--speed-factor", self.speed_factor, 1.0),
                  ("slack_ratio", "--slack-ratio", self.slack_ratio, 0.0))
        for name, flag, value, least in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (math.isfinite(value) and value >= least):
                raise ValueError(f"{name} ({flag}) must be a finite number >= {least:g}, not {value!r}")


@dataclass
class Change:
    """One finding about one record: what changed, its value in BASE and in NEW, in one line."""

    id: str
    """The record's id with the candidate name it was matched by (see ``matching_names``)."""
    kind: str
    """Regressions: new-fail, nan-appeared, error-grown, slower (and missing, on request). Improvements:
    fixed, nan-gone, error-shrunk, faster. Informational: verdict, ulp-grown, ulp-shrunk, undefined-rows,
    not-timed. The added and removed lists: added, missing. slower, faster and not-timed are about
    speed records (``softaudit run --bench``), the rest about case records."""
    metric: str
    """What ``base`` and ``new`` measure: verdict, class_mismatches, max_ulp, max_ratio, median_s,
    undefined_rows."""
    base: Any
    new: Any
    message: str
    factor: float | None = None
    """new / base for error and speed changes (inf from 0); None otherwise."""
    base_id: str | None = None
    new_id: str | None = None
    also: list[Change] = field(default_factory=list)
    """Lesser regressions (or improvements) of the same record, e.g. the NaN behind a new FAIL."""


@dataclass
class Comparison:
    """Everything compare found; ``exit_code`` is what CI acts on."""

    regressions: list[Change]
    """One per record that got worse (its most serious change; the rest in ``also``), most serious first."""
    improvements: list[Change]
    changes: list[Change]
    """Informational: verdict changes that are neither a new FAIL nor a fix, max ulp changes that the
    stability ratio does not share, undefined-row behaviour."""
    added: list[Change]
    removed: list[Change]
    matched: int
    warnings: list[str]
    options: CompareOptions = field(default_factory=CompareOptions)
    base_source: str = ""
    new_source: str = ""

    @property
    def exit_code(self) -> int:
        """1 when anything regressed, else 0."""
        return 1 if self.regressions else 0


# ---------------------------------------------------------------------------- matching

def _name_and_path(record: Record) -> tuple[str, str]:
    """A candidate name split as the runner joined it (``impl@a/impl.py``), else (name, target)."""
    name, at, path = record.candidate.partition("@")
    return (name, path) if at and name else (record.candidate, record.target)


def matching_names(records: list[Record]) -> dict[str, str]:
    """Each candidate name of one document -> the name it is matched by in the other.

    A name unique in its document before any "@" matches by that part alone (``impl@a/impl.py``
    becomes ``impl``: two checkouts in different directories match). Names that share it keep
    the shortest trailing part of their paths that still tells them apart (``impl@/ci/1/a/impl.py``
    and ``impl@/ci/1/b/impl.py`` become ``impl@a/impl.py`` and ``impl@b/impl.py``).
    """
    paths: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for r in records:
        name, path = _name_and_path(r)
        paths[name][r.candidate] = [p for p in re.split(r"[\\/]+", path) if p not in ("", ".")]
    out: dict[str, str] = {}
    for name, group in paths.items():
        if len(group) == 1:
            out[next(iter(group))] = name
            continue
        for k in range(1, max(len(parts) for parts in group.values()) + 1):
            suffixes = {cand: "/".join(parts[-k:]) for cand, parts in group.items()}
            if len(set(suffixes.values())) == len(suffixes):
                out.update({cand: f"{name}@{suffix}" for cand, suffix in suffixes.items()})
                break
        else:
            out.update({cand: cand for cand in group})
    return out


def _index(document: ResultsDocument, which: str) -> dict[Key, tuple[str, Record]]:
    """Records by matching key, with their id under the matching name; ResultsError on a duplicate."""
    names = matching_names(document.records)
    out: dict[Key, tuple[str, Record]] = {}
    for r in document.records:
        name = names[r.candidate]
        key: Key = (name, "import", "", "", "") if r.op == "import" else (name, r.op, r.direction, r.dtype, r.case)
        if key in out:
            first = out[key][1].id
            what = f"two records have the id {first!r}" if first == r.id else \
                f"records {first!r} and {r.id!r} both match as {'/'.join(key).rstrip('/')!r}"
            raise ResultsError(f"{document.source or which}: {what}; a results file holds each record once")
        out[key] = (f"{name}/{r.op}/{r.direction}/{r.dtype}/{r.case}", r)
    return out


# ---------------------------------------------------------------------------- judging one pair

def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def printable(text: str) -> str:
    """Untrusted text for a terminal: one line, control characters (ESC...) shown as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in _one_line(text))


def _reason(r: Record) -> str:
    return _one_line(r.reasons[0] if r.reasons else (r.error or "no reason recorded"))


def _grew(before: float | None, after: float | None, factor: float, slack: float) -> bool:
    """after > factor x before + slack (False when either is missing or NaN)."""
    return before is not None and after is not None and after > factor * before + slack


def _factor(before: float, after: float) -> float:
    return after / before if before else (math.inf if after else 1.0)


def _by(before: float, after: float) -> str:
    """"×2.6e3" for growth, "÷40" for shrinkage, against 0 "from 0" / "to 0"."""
    if after >= before:
        return f"×{short_number(after / before)}" if before else "from 0"
    return f"÷{short_number(before / after)}" if after else "to 0"


def _seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _median_s(s: SpeedRecord) -> float | None:
    v = s.median_s
    if v is None or not math.isfinite(v) or v <= 0:
        return None
    return v


def _kinds_text(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def _error_growth(before: Record, after: Record, options: CompareOptions) -> str | None:
    """What grew from ``before`` to ``after`` past factor x before + slack: "max_ratio", else "max_ulp",
    else None."""
    if before.metrics is None or after.metrics is None:
        return None
    for metric, slack in (("max_ratio", options.slack_ratio), ("max_ulp", options.slack_ulp)):
        if _grew(getattr(before.metrics, metric), getattr(after.metrics, metric), options.factor, slack):
            return metric
    return None


def _error_change(kind: str, metric: str, b: Record, n: Record) -> Change:
    """An error change, its message giving both max ulp and max ratio from BASE to NEW."""
    assert b.metrics is not None and n.metrics is not None
    parts = []
    for name, label in (("max_ulp", "max ulp"), ("max_ratio", "max ratio")):
        before, after = getattr(b.metrics, name), getattr(n.metrics, name)
        if before is not None and after is not None:
            by = f" ({_by(before, after)})" if math.isfinite(before) and math.isfinite(after) else ""
            parts.append(f"{label} {short_number(before)} → {short_number(after)}{by}")
    before, after = getattr(b.metrics, metric), getattr(n.metrics, metric)
    return Change("", kind, metric, before, after, ", ".join(parts), factor=_factor(before, after))


def _judge(b: Record, n: Record, options: CompareOptions) -> tuple[list[Change], list[Change], list[Change]]:
    """(regressions, improvements, informational changes) of one matched pair, most serious first."""
    worse: list[Change] = []
    better: list[Change] = []
    info: list[Change] = []
    if n.verdict == FAIL and b.verdict != FAIL:
        worse.append(Change("", "new-fail", "verdict", b.verdict, n.verdict, f"{b.verdict} → FAIL: {_reason(n)}"))
    elif b.verdict == FAIL and n.verdict in (PASS, WARN):
        better.append(Change("", "fixed", "verdict", b.verdict, n.verdict, f"FAIL → {n.verdict} (was: {_reason(b)})"))
    bm, nm = b.metrics, n.metrics
    if bm is not None and nm is not None:
        if nm.class_mismatches and not bm.class_mismatches:
            worse.append(Change("", "nan-appeared", "class_mismatches", 0, nm.class_mismatches,
                                f"wrong-class elements (NaN/±inf) 0 → {nm.class_mismatches} "
                                f"({_kinds_text(nm.mismatch_kinds)})"))
        elif bm.class_mismatches and not nm.class_mismatches:
            better.append(Change("", "nan-gone", "class_mismatches", bm.class_mismatches, 0,
                                 f"wrong-class elements (NaN/±inf) {bm.class_mismatches} → 0"))
        grown, shrunk = _error_growth(b, n, options), _error_growth(n, b, options)
        if grown == "max_ratio" or grown == "max_ulp" and options.ulp_growth_is_regression:
            worse.append(_error_change("error-grown", grown, b, n))
        elif grown == "max_ulp":
            info.append(_error_change("ulp-grown", grown, b, n))
        if shrunk == "max_ratio" or shrunk == "max_ulp" and options.ulp_growth_is_regression:
            better.append(_error_change("error-shrunk", shrunk, b, n))
        elif shrunk == "max_ulp":
            info.append(_error_change("ulp-shrunk", shrunk, b, n))
        before = {k: v for k, v in bm.undefined_rows.items() if v}
        after = {k: v for k, v in nm.undefined_rows.items() if v}
        if before != after:
            info.append(Change("", "undefined-rows", "undefined_rows", before, after,
                               f"undefined rows (fully masked or +inf) returned {_rows_text(before)} → "
                               f"{_rows_text(after)}"))
    said = worse and worse[0].kind == "new-fail" or better and better[0].kind == "fixed"
    if b.verdict != n.verdict and not said:
        # PASS -> WARN is said on the line of the error change that came with it; alone, on a line of its own
        graver = SEVERITY[n.verdict] > SEVERITY[b.verdict]
        ulp_kind = "ulp-grown" if graver else "ulp-shrunk"
        along = (worse if graver else better) or [i for i in info if i.kind == ulp_kind]
        if along and SKIP not in (b.verdict, n.verdict):
            along[0].message = f"{b.verdict} → {n.verdict}: {along[0].message}"
        else:
            info.insert(0, Change("", "verdict", "verdict", b.verdict, n.verdict, f"{b.verdict} → {n.verdict}"))
    return worse, better, info


def _rows_text(rows: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(rows.items())) or "nothing"


def _merged(found: list[Change], change_id: str, b: Record | None, n: Record | None) -> Change:
    """The record's most serious change, carrying the others in ``also``; ids filled in."""
    for c in found:
        c.id, c.base_id, c.new_id = change_id, b.id if b else None, n.id if n else None
    head, *rest = found
    head.also = rest
    return head


def _severity(c: Change) -> tuple:
    order = REGRESSION_ORDER if c.kind in REGRESSION_ORDER else IMPROVEMENT_ORDER
    size = c.factor if c.factor is not None else 0.0
    if c.kind in ("error-shrunk", "faster"):
        size = 1.0 / size if size else math.inf
    return (order.index(c.kind), -size, c.id)


# ---------------------------------------------------------------------------- the comparison

def _seed(d: ResultsDocument) -> Any:
    return d.environment.get("seed", d.options.get("seed"))


def _machine(d: ResultsDocument) -> str:
    return f"{d.environment.get('machine')} {d.environment.get('platform')}"


def _warnings(base: ResultsDocument, new: ResultsDocument, c: Comparison, speed_compared: bool) -> list[str]:
    out = []
    if _seed(base) != _seed(new):
        out.append(f"the seeds differ (BASE {_seed(base)}, NEW {_seed(new)}): the cases' inputs differ, so error "
                   f"and NaN changes may come from the inputs, not the code")
    gate = [f"{k} {base.options.get(k, v)!r} → {new.options.get(k, v)!r}" for k, v in JUDGING_OPTIONS.items()
            if base.options.get(k, v) != new.options.get(k, v)]
    if gate:
        out.append(f"the audits were judged differently ({'; '.join(gate)}): verdict changes may come from that")
    if base.softaudit_version != new.softaudit_version:
        out.append(f"written by different softaudit versions (BASE {base.softaudit_version}, NEW "
                   f"{new.softaudit_version}): references, envelopes and checks may have changed")
    for label, d in (("BASE", base), ("NEW", new)):
        if not d.complete:
            lacking = "removed" if label == "NEW" else "added"
            out.append(f"{label} is incomplete (the audit was interrupted): records it lacks are listed as {lacking}")
    if speed_compared and _machine(base) != _machine(new):
        out.append(f"speed is compared across machines ({_machine(base)} vs {_machine(new)}): timing changes "
                   f"may come from the machine")
    if base.records and new.records and not c.matched:
        out.append("no record matched: are these audits of the same candidates, ops, formats and cases?")
    return out


def compare(base: ResultsDocument, new: ResultsDocument, options: CompareOptions | None = None) -> Comparison:
    """Regressions, improvements and other changes from ``base`` to ``new`` (ValueError on bad options,
    ResultsError when a document has two records with one id)."""
    options = options or CompareOptions()
    options.check()
    base_index, new_index = _index(base, "BASE"), _index(new, "NEW")
    c = Comparison([], [], [], [], [], 0, [], options, base.source, new.source)
    for key, (change_id, b) in base_index.items():
        if key not in new_index:
            c.removed.append(Change(change_id, "missing", "verdict", b.verdict, None,
                                    f"in BASE ({b.verdict}), not in NEW", base_id=b.id))
            continue
        n = new_index[key][1]
        c.matched += 1
        worse, better, info = _judge(b, n, options)
        if worse:
            c.regressions.append(_merged(worse, change_id, b, n))
        if better:
            c.improvements.append(_merged(better, change_id, b, n))
        c.changes.extend(_merged([i], change_id, b, n) for i in info)
    for key, (change_id, n) in new_index.items():
        if key in base_index:
            continue
        c.added.append(Change(change_id, "added", "verdict", None, n.verdict, f"only in NEW ({n.verdict})",
                              new_id=n.id))
        if n.verdict == FAIL:
            c.regressions.append(Change(change_id, "new-fail", "verdict", None, FAIL,
                                        f"added as FAIL: {_reason(n)}", new_id=n.id))
    speed_compared = _compare_speed(base, new, options, c)
    if options.missing_is_regression:
        c.regressions.extend(c.removed)
    c.regressions.sort(key=_severity)
    c.improvements.sort(key=_severity)
    c.warnings = _warnings(base, new, c, speed_compared)
    return c


def _compare_speed(base: ResultsDocument, new: ResultsDocument, options: CompareOptions, c: Comparison) -> bool:
    """Speed records matched by candidate (as records are), op, direction, format and shape: NEW's
    median time above speed_factor x BASE's is a regression ("slower"), below 1/speed_factor an
    improvement ("faster"); a shape timed in BASE that NEW could not time is an informational change.
    Returns whether any pair was compared."""
    def index(document: ResultsDocument) -> dict[tuple, tuple[str, SpeedRecord]]:
        names = matching_names([*document.records, *document.speed])  # type: ignore[list-item]
        out = {}
        for sp in document.speed:
            name = names[sp.candidate]
            shape = f"{sp.shape[0]}x{sp.shape[1]}"
            out[(name, sp.op, sp.direction, sp.dtype, shape)] = (f"{name}/{sp.op}/{sp.direction}/{sp.dtype}/{shape}", sp)
        return out

    base_index, new_index = index(base), index(new)
    compared = False
    for key, (change_id, b) in base_index.items():
        if key not in new_index:
            continue
        n = new_index[key][1]
        bs, ns = _median_s(b), _median_s(n)
        if bs is not None and ns is None and n.skipped:
            c.changes.append(Change(change_id, "not-timed", "median_s", bs, None,
                                    f"timed in BASE ({_seconds(bs)}), not in NEW: {_one_line(n.skipped)}",
                                    base_id=b.id, new_id=n.id))
        if bs is None or ns is None:
            continue
        compared = True
        message = f"median time {_seconds(bs)} → {_seconds(ns)} ({_by(bs, ns)})"
        if ns > options.speed_factor * bs:
            c.regressions.append(Change(change_id, "slower", "median_s", bs, ns, message, factor=ns / bs,
                                        base_id=b.id, new_id=n.id))
        elif bs > options.speed_factor * ns:
            c.improvements.append(Change(change_id, "faster", "median_s", bs, ns, message, factor=ns / bs,
                                         base_id=b.id, new_id=n.id))
    return compared


# ---------------------------------------------------------------------------- output

def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def headline(c: Comparison) -> str:
    """"3 regressions, 5 improvements across 1,254 matched records (2 added, 0 removed)"."""
    return (f"{_plural(len(c.regressions), 'regression')}, {_plural(len(c.improvements), 'improvement')} "
            f"across {_plural(c.matched, 'matched record')} ({len(c.added):,} added, {len(c.removed):,} removed)")


def _section(console: Console, title: str, changes: list[Change], style: str, limit: int) -> None:
    if not changes:
        return
    console.print()
    console.print(Text(f"{title} ({len(changes):,})", style="bold"), highlight=False)
    for ch in changes[:limit]:
        line = Text("  ")
        line.append(f"{LABELS[ch.kind]:<12} ", style=style)
        line.append(printable(ch.id), style="bold")
        line.append(f": {printable(ch.message)}")
        if ch.also:
            line.append(f"  (also {', '.join(LABELS[a.kind] for a in ch.also)})", style="dim")
        console.print(line, highlight=False)
    if len(changes) > limit:
        console.print(Text(f"  ... and {len(changes) - limit:,} more (all are in --json)"), highlight=False)


def render_comparison(c: Comparison, console: Console, limit: int = 50) -> None:
    """Print the warnings, the headline, then regressions (most serious first), improvements,
    other changes, added and removed records, each list cut at ``limit`` lines, and the result.

    Every document-derived string goes in as plain rich Text, never as markup.
    """
    if c.base_source or c.new_source:
        console.print(Text(printable(f"softaudit compare: {c.base_source or 'BASE'} → {c.new_source or 'NEW'}")),
                      highlight=False)
    for w in c.warnings:
        console.print(Text(printable(f"Warning: {w}"), style="bold yellow"), highlight=False)
    console.print(Text(headline(c), style="bold"), highlight=False)
    _section(console, "Regressions", c.regressions, "bold red", limit)
    _section(console, "Improvements", c.improvements, "green", limit)
    _section(console, "Other changes (informational)", c.changes, "yellow", limit)
    _section(console, "Added", c.added, "cyan", limit)
    _section(console, "Removed" + (" (counted as regressions)" if c.options.missing_is_regression else ""),
             c.removed, "magenta", limit)
    console.print()
    if c.regressions:
        console.print(Text(f"Result: {_plural(len(c.regressions), 'regression')} (exit 1)", style="bold red"),
                      highlight=False)
    else:
        console.print(Text("Result: no regression (exit 0)", style="green"), highlight=False)


def _value(v: Any) -> Any:
    if isinstance(v, float):
        return json_number(v)
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return v


def change_dict(ch: Change) -> dict:
    """One change as a JSON object (docs/compare.md)."""
    return {"id": ch.id, "kind": ch.kind, "metric": ch.metric, "base": _value(ch.base), "new": _value(ch.new),
            "factor": _value(ch.factor), "message": ch.message, "base_id": ch.base_id, "new_id": ch.new_id,
            "also": [change_dict(a) for a in ch.also]}


def comparison_dict(c: Comparison) -> dict:
    """The whole comparison as a JSON object (``compare --json``; docs/compare.md). Non-finite
    numbers are the strings "nan", "inf", "-inf", as in the results files."""
    o = c.options
    return {
        "comparison_version": COMPARISON_VERSION,
        "base": c.base_source, "new": c.new_source,
        "options": {"factor": o.factor, "slack_ulp": o.slack_ulp, "slack_ratio": o.slack_ratio,
                    "speed_factor": o.speed_factor, "missing_is_regression": o.missing_is_regression,
                    "ulp_growth_is_regression": o.ulp_growth_is_regression},
        "summary": {"matched": c.matched, "regressions": len(c.regressions), "improvements": len(c.improvements),
                    "changes": len(c.changes), "added": len(c.added), "removed": len(c.removed),
                    "exit_code": c.exit_code},
        "warnings": list(c.warnings),
        **{name: [change_dict(ch) for ch in getattr(c, name)]
           for name in ("regressions", "improvements", "changes", "added", "removed")},
    }
