"""The Python API for test suites: ``softaudit.audit(my_softmax, op="softmax").assert_ok()``.

``audit`` takes callables (or a module) straight from the caller's process, turns them into
candidates with the same detection the CLI uses, and runs the same audit in-process: no worker,
so a kernel that segfaults takes the test process down (``softaudit run`` isolates). The
``AuditReport`` it returns answers pytest's questions: did it pass, and if not, what broke.
This module imports the audit machinery only when ``audit`` is called, so ``import softaudit``
stays light.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softaudit.candidates.decorator import FUNCTION_NAMES, marks_of
from softaudit.errors import BadInput
from softaudit.ops import OPS

if TYPE_CHECKING:
    from softaudit.candidates.model import Candidate
    from softaudit.formats import Format
    from softaudit.results.diagnoses import Diagnosis
    from softaudit.results.records import Record, SpeedRecord
    from softaudit.runner.loop import AuditResult

MAX_LISTED_FINDINGS = 10
"""How many findings ``assert_ok``'s message spells out (FAILs first, then WARNs)."""

Impl = Callable[..., Any] | Mapping[str, Callable[..., Any]] | types.ModuleType
"""What ``audit`` accepts: one function, contract names mapped to functions, or a module."""


def audit(
    impl: Impl,
    op: str | None = None,
    *,
    ops: str | Iterable[str] | None = None,
    directions: str | Iterable[str] | None = None,
    dtypes: str | Format | Iterable[Any] | None = None,
    cases: str | Iterable[str] | None = None,
    cases_dirs: str | Path | Iterable[str | Path] = (),
    corpus: str | Path | None = None,
    name: str | None = None,
    seed: int = 0,
    ratio_limit: float | None = None,
    undefined_policy: str | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    rowwise: bool = False,
    bench: bool = False,
    shapes: Iterable[str | tuple[int, int]] = (),
    device: str = "auto",
    diagnose: bool = True,
) -> AuditReport:
    """Audit ``impl`` in this process and return its report (call ``.assert_ok()`` in a test).

    ``impl`` is a callable (its role is ``op``, else its ``__name__`` when that is a contract
    name such as ``softmax`` or ``softmax_backward``), a mapping of contract names to callables,
    or a module defining them (or holding ``@candidate`` functions). ``ops``, ``directions``,
    ``dtypes`` and ``cases`` narrow the audit (default: everything ``impl`` defines, both
    directions, all four formats, the whole case library); ``strict`` judges as
    ``softaudit run --strict`` does (a WARN is recorded as a FAIL, its reasons prefixed "strict:").
    ``bench=True`` also times every op x direction x format at ``shapes`` ("ROWSxN" strings or
    (rows, n) pairs; default speed.DEFAULT_SHAPES) as ``softaudit run --bench`` does; the figures
    are in ``report.speed``. ``corpus`` adds a directory of cases ``softaudit search`` found
    (docs/search.md) when it holds any, as ``softaudit run`` adds the project's. ``device``
    ("auto", "cpu", "cuda", "cuda:N") places torch callables that do not name a device with ``@candidate``: inputs are created there and outputs
    brought back for judging. ``diagnose`` (default True): ``report.diagnoses`` names the likely cause
    of each op x direction with a FAIL or WARN (docs/diagnosis.md), computed when first asked for (or
    by ``to_json``), its small experiments run in this process on ``impl``; False: no diagnosis.
    Bad arguments raise ValueError or TypeError with a one-line message.
    """
    from softaudit.candidates.collection import candidates_from_functions, candidates_from_module
    from softaudit.candidates.errors import CandidateError
    from softaudit.judging.verdicts import Gate
    from softaudit.options import AuditOptions, CacheOptions, WorkerOptions, checked_audit_options, overridden
    from softaudit.runner.environment import check_device
    from softaudit.runner.isolation import InProcessExecutor
    from softaudit.runner.loop import run_audit
    from softaudit.runner.planning import plan

    if not isinstance(strict, bool) or not isinstance(rowwise, bool):
        raise TypeError("strict and rowwise must be True or False")
    if not isinstance(device, str):
        raise TypeError(f"device must be a string (auto, cpu, cuda or cuda:N), got {type(device).__name__}")
    if not isinstance(bench, bool):
        raise TypeError("bench must be True or False")
    if not isinstance(diagnose, bool):
        raise TypeError("diagnose must be True or False")
    shape_list = _shapes(shapes)
    if shape_list and not bench:
        raise BadInput("shapes= sets what bench=True times; pass bench=True as well")
    if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
        raise BadInput(f"name must be a non-empty string without '/' (it starts every record id), got {name!r}")

    options = checked_audit_options(AuditOptions(
        ops=_strings(ops, "ops"), directions=_strings(directions, "directions"),
        formats=[_format(d) for d in _listed(dtypes)], case_patterns=_strings(cases, "cases"),
        cases_dirs=[Path(p) for p in _listed(cases_dirs)], corpus_dir=Path(corpus) if corpus is not None else None,
        seed=seed,
        gate=overridden(Gate(strict=strict), ratio_limit=ratio_limit, undefined_policy=undefined_policy),
        worker=WorkerOptions(isolated=False, rowwise=rowwise, device=device),
        cache=CacheOptions(directory=Path(cache_dir).expanduser() if cache_dir is not None else None),
        bench=bench, shapes=shape_list,
        jobs=1,  # in one process: --jobs' spawned workers would re-import a caller's unguarded script
    ))
    check_device(device)  # usable here: a DeviceError (bad input, a ValueError) if not
    plan(options)  # unknown case patterns and malformed case files raise here, before any call

    source, default_name = _functions_of(impl, op)
    candidate_name = name or default_name
    target = f"python:{candidate_name}"
    try:
        if isinstance(source, types.ModuleType):
            candidates = candidates_from_module(source, target, candidate_name, rowwise=rowwise, device=options.worker.explicit_device)
        else:
            candidates = candidates_from_functions(source, target, candidate_name, rowwise=rowwise, device=options.worker.explicit_device)
    except CandidateError as exc:
        raise BadInput(str(exc)) from None
    if name is not None and len(candidates) == 1:
        candidates = [_renamed(candidates[0], name)]

    executor = InProcessExecutor(rowwise=rowwise, device=options.worker.explicit_device)
    executor.add(target, candidates)
    try:
        result = run_audit([target], options, executor=executor)
    except CandidateError as exc:
        raise BadInput(str(exc)) from None
    if not result.complete:
        raise KeyboardInterrupt  # run_audit keeps partial results for the CLI; a test run must stop
    report = AuditReport(result, candidate_name, strict=strict)
    if diagnose:
        report._diagnosis_source = (impl, dict(op=op, name=name, rowwise=rowwise, device=device, cache_dir=cache_dir))
    return report


class AuditReport:
    """The outcome of ``audit``: the records, and verdict helpers for tests."""

    def __init__(self, result: AuditResult, name: str, strict: bool = False) -> None:
        self.result = result
        """The runner's AuditResult (records, options, environment, timing, cache figures)."""
        self.name = name
        """The audited candidate's name (the first part of every record id)."""
        self.strict = strict
        """Whether WARN counts as failure for ``passed`` and ``assert_ok()``."""
        self._diagnosis_source: tuple[Any, dict[str, Any]] | None = None
        """(impl, the audit's keywords) the diagnosis re-runs experiments on; None: audit(diagnose=False)."""
        self._diagnoses: list[Diagnosis] | None = None

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """The likely causes of every op x direction with a FAIL or WARN (softaudit.diagnosis.Diagnosis:
        ``causes`` ranked, each with class_id, confidence, evidence, settled_by, explanation, fix),
        computed on first access with small experiments in this process; [] when nothing failed or
        the audit was called with ``diagnose=False``."""
        if self._diagnoses is None:
            self._diagnoses = []
            if self._diagnosis_source is not None:
                from softaudit.diagnosis.stage import ApiRunner, diagnose_records
                from softaudit.results.schema import record_dict

                impl, kw = self._diagnosis_source
                records = [record_dict(r) for r in self.records]
                self._diagnoses = diagnose_records(records, {}, ApiRunner(impl, kw))
        return self._diagnoses

    @property
    def records(self) -> list[Record]:
        """Every record: one per candidate x op x direction x format x case."""
        return self.result.records

    @property
    def failures(self) -> list[Record]:
        """FAIL records, worst first (the order every report lists findings in: results/ranking.py)."""
        from softaudit.results.ranking import worst_findings

        return [r for r in worst_findings(self.records) if r.verdict == "FAIL"]

    @property
    def warnings(self) -> list[Record]:
        """WARN records (above the envelope, within the ratio limit), worst first (results/ranking.py)."""
        from softaudit.results.ranking import worst_findings

        return [r for r in worst_findings(self.records) if r.verdict == "WARN"]

    @property
    def speed(self) -> list[SpeedRecord]:
        """With ``bench=True``: one SpeedRecord per op x direction x format x shape (``figures``
        holds median_s, gb_per_s, pct_copy_bandwidth and the rest; ``skipped`` says why not)."""
        return self.result.speed

    @property
    def passed(self) -> bool:
        """No FAIL (and, for a strict audit, no WARN): what ``assert_ok()`` checks."""
        return not self._failing(self.strict)

    def counts(self) -> dict[str, int]:
        """Records per verdict: {"PASS": n, "WARN": n, "FAIL": n, "SKIP": n}."""
        return self.result.counts()

    def assert_ok(self, strict: bool | None = None) -> AuditReport:
        """Raise AssertionError listing the counts and the worst findings unless the audit passed.

        ``strict=True`` fails on WARNs too; None uses the audit's ``strict``. Returns the report.
        """
        __tracebackhide__ = True  # pytest shows the caller's line, not this one
        strict = self.strict if strict is None else strict
        if self._failing(strict):
            raise AssertionError(self._failure_message(strict))
        return self

    def to_json(self, path: str | Path) -> Path:
        """Write the standard results JSON (docs/json-schema.md) to ``path``; returns the path.

        ``softaudit report`` and ``softaudit compare`` read it like one written by ``softaudit run``.
        """
        from softaudit.reports.json_report import write_json

        out = Path(path)
        write_json(out, self.result, self.diagnoses if self._diagnosis_source is not None else None)
        return out

    def __str__(self) -> str:
        from softaudit.reports.terminal import short_number, summary_rows

        rows = summary_rows(self.records)
        several = len({row.candidate for row in rows}) > 1
        lines = [self._headline()]
        skipped: dict[str, str] = {}
        for row in rows:
            label = row.op if row.direction == "forward" else f"{row.op} bwd"
            who = f"{_plain(row.candidate)}: " if several else ""
            if row.verdict == "SKIP":
                skipped.setdefault(f"{who}{label}", _skip_reason(self.records, row))
                continue
            worst = f"  worst case {_plain(row.worst_case)}" if row.worst_case != "-" else ""
            lines.append(f"  {who}{label:<17} {row.dtype:<8} {row.verdict:<4}  max ulp {short_number(row.max_ulp)}  "
                         f"ratio {short_number(row.max_ratio)}  P/W/F/S {row.tally}{worst}")
        lines += [f"  {label}: not audited ({_plain(reason)})" for label, reason in skipped.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<AuditReport {_plain(self.name)!r}: {c['PASS']} PASS, {c['WARN']} WARN, "
                f"{c['FAIL']} FAIL, {c['SKIP']} SKIP>")

    # -- helpers

    def _failing(self, strict: bool) -> list[Record]:
        """The records that make the audit fail: FAILs, and WARNs when strict."""
        bad = ("FAIL", "WARN") if strict else ("FAIL",)
        return [r for r in self.records if r.verdict in bad]

    def _headline(self) -> str:
        c = self.counts()
        outcome = "passed" if self.passed else "FAILED"
        if self.strict:
            outcome += " (strict: WARN fails)"
        return (f"softaudit audit of {_plain(self.name)}: {outcome}; {len(self.records)} records: "
                f"{c['PASS']} PASS, {c['WARN']} WARN, {c['FAIL']} FAIL, {c['SKIP']} SKIP "
                f"in {self.result.seconds:.1f} s")

    def _failure_message(self, strict: bool) -> str:
        c = self.counts()
        why = f"{c['FAIL']} FAIL" + (f" and {c['WARN']} WARN (strict)" if strict and c["WARN"] else "")
        lines = [f"softaudit audit of {_plain(self.name)} failed: {why}; "
                 f"{len(self.records)} records: {c['PASS']} PASS, {c['WARN']} WARN, {c['FAIL']} FAIL, "
                 f"{c['SKIP']} SKIP"]
        findings = self.failures + self.warnings
        for r in findings[:MAX_LISTED_FINDINGS]:
            lines.extend(_finding_lines(r))
        hidden = len(findings) - MAX_LISTED_FINDINGS
        if hidden > 0:
            lines.append(f"... and {hidden} more (report.failures, report.warnings; "
                         f"report.to_json(path) keeps every record)")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Turning impl into functions under their contract names


def _functions_of(impl: Impl, op: str | None) -> tuple[types.ModuleType | dict[str, Callable[..., Any]], str]:
    """(impl's module, or its functions keyed by their contract names; the default candidate name)."""
    if op is not None and (not isinstance(op, str) or op not in FUNCTION_NAMES):
        raise BadInput(f"unknown op {op!r} (known: {', '.join(FUNCTION_NAMES)})")
    if isinstance(impl, types.ModuleType):
        if op is not None:
            raise BadInput("op= names a single callable's role; a module's functions are found by their names")
        return impl, impl.__name__.rpartition(".")[2]
    if isinstance(impl, Mapping):
        if op is not None:
            raise BadInput("op= names a single callable's role; a mapping's keys name its functions")
        functions = dict(impl)
        if not functions:
            raise BadInput("nothing to audit: the mapping is empty")
        for key, fn in functions.items():
            if key not in FUNCTION_NAMES:
                raise BadInput(f"unknown function name {key!r} in the mapping (known: {', '.join(FUNCTION_NAMES)})")
            if not callable(fn):
                raise TypeError(f"{key} is a {type(fn).__name__}, not a callable")
        forward = next((functions[o] for o in OPS if o in functions), next(iter(functions.values())))
        return functions, _callable_name(forward)
    if not callable(impl):
        hint = " (to audit a file, import it and pass the module, or run `softaudit run FILE`)" \
            if isinstance(impl, (str, Path)) else ""
        raise TypeError(f"impl must be a callable, a mapping of function names to callables, or a module, "
                        f"not {type(impl).__name__}{hint}")
    role = op or _marked_op(impl) or getattr(impl, "__name__", None)
    if role not in FUNCTION_NAMES:
        raise BadInput(f"cannot tell which op {_callable_name(impl)!r} implements: pass op= "
                         f"(one of {', '.join(FUNCTION_NAMES)})")
    return {role: impl}, _callable_name(impl)


def _marked_op(fn: object) -> str | None:
    """The op a @candidate decorator gave ``fn``, when all its marks agree on one."""
    ops = {m.op for m in marks_of(fn)}
    return ops.pop() if len(ops) == 1 else None


def _callable_name(fn: object) -> str:
    """A readable name for a callable: a Python function's qualified name without "<locals>"
    (test_x.softmax), a built-in's name (torch.softmax: softmax), else its type's name."""
    inner = fn.__func__ if isinstance(fn, types.MethodType) else fn
    name = getattr(inner, "__qualname__", None) if isinstance(inner, types.FunctionType) else None
    name = name or getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.strip():
        name = type(fn).__name__
    return name.replace(".<locals>", "").replace("/", "_")


def _renamed(c: Candidate, name: str) -> Candidate:
    """``c`` under the name the caller chose (a decorator's name would otherwise win)."""
    return dataclasses.replace(c, name=name)


# --------------------------------------------------------------------------
# Arguments


def _listed(value: Any) -> list[Any]:
    """A single value (a string, a path, a format) or an iterable of them, as a list."""
    from softaudit.formats import Format

    if value is None:
        return []
    if isinstance(value, (str, Path, Format)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _shapes(value: Any) -> list[tuple[int, int]]:
    """Timing shapes: "ROWSxN" strings or (rows, n) pairs, one or several."""
    from softaudit.runner.speed import parse_shape

    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = [value]
    out = []
    for item in _listed(value):
        if isinstance(item, str):
            out.append(parse_shape(item))
        elif (isinstance(item, (tuple, list)) and len(item) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)):
            out.append((int(item[0]), int(item[1])))
        else:
            raise BadInput(f"shapes must be 'ROWSxN' strings or (rows, n) pairs of positive ints, got {item!r}")
    return out


def _strings(value: Any, what: str) -> list[str]:
    items = _listed(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must be strings, got {type(item).__name__} {item!r}")
    return items


def _format(value: Any) -> Format:
    """A format from its name ("bf16"), a Format, or a numpy / torch / ml_dtypes dtype."""
    from softaudit.formats import Format, format_of_dtype, get_format

    if isinstance(value, Format):
        return value
    if isinstance(value, str):
        return get_format(value)
    fmt = format_of_dtype(value)
    if fmt is None:
        try:
            import numpy as np

            fmt = format_of_dtype(np.dtype(value))
        except (TypeError, ValueError):
            fmt = None
    if fmt is None:
        raise BadInput(f"unknown dtype {value!r} (give a format name: float64, float32, float16, bfloat16)")
    return fmt


# --------------------------------------------------------------------------
# Findings as text


def _finding_lines(r: Record) -> list[str]:
    """A finding for an assertion message: id and first reason, then the exact and computed
    values at the worst element (when the reason does not already say them), then the case."""
    from softaudit.judging.verdicts import where

    reason = r.reasons[0] if r.reasons else (r.error or "")
    lines = [f"{r.verdict} {_plain(r.id)}: {_plain(reason)}"]
    loc = (r.metrics.worst or r.metrics.first_mismatch) if r.metrics else None
    if loc is not None and where(loc) not in reason:
        lines.append(f"    at {where(loc)}")
    if r.case_description:
        lines.append(f"    the case: {_plain(r.case_description)}")
    return lines


def _skip_reason(records: list[Record], row: Any) -> str:
    """Why a summary row (candidate/op/direction/format) was skipped: its first record's reason."""
    for r in records:
        if (r.candidate, r.op, r.direction, r.dtype) == (row.candidate, row.op, row.direction, row.dtype):
            return r.reasons[0] if r.reasons else "skipped"
    return "skipped"


def _plain(text: str) -> str:
    """Untrusted text (names, reasons from candidates' exceptions) safe for a terminal: control
    characters, ANSI escapes included, are shown escaped instead of acting."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


__all__ = ["audit", "AuditReport", "MAX_LISTED_FINDINGS"]
