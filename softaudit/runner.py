"""The audit loop: cases -> inputs -> candidates -> reference -> metrics -> verdicts.

``run_audit`` is the Python API behind ``softaudit run``; tests and users call it
directly. It never stops at the first failure: every combination gets a record.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import softaudit
from softaudit.candidates import CandidateError, NoOpsError
from softaudit.cases import OPS, Case, load_cases, select_cases
from softaudit.formats import FORMATS, Format, to_float64
from softaudit.inputs import NotApplicable, generate
from softaudit.isolation import DEFAULT_TIMEOUT, CandidateInfo, Executor, LoadFailure, make_executor
from softaudit.metrics import judge_elements, summarize
from softaudit.records import Record
from softaudit.reference import ReferenceCache, default_cache_dir
from softaudit.verdicts import FAIL, PASS, SKIP, Gate, decide

ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, what): called as each (format, case) unit starts and at the end."""


@dataclass
class AuditOptions:
    """Everything that shapes an audit besides its targets."""

    ops: Sequence[str] = ()
    """Ops to audit; empty means every op each target defines."""
    formats: Sequence[Format] = ()
    """Formats; empty means all four."""
    case_patterns: Sequence[str] = ()
    """fnmatch patterns on case name or family; empty means the whole library."""
    cases_dirs: Sequence[Path] = ()
    """Extra case directories, added to the shipped library."""
    seed: int = 0
    gate: Gate = field(default_factory=Gate)
    cache_dir: Path | None = None
    """Reference cache directory; None uses the default location."""
    use_cache: bool = True
    rowwise: bool = False
    isolated: bool = True
    """Run candidates in a worker process (crashes and hangs become FAIL records)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one call may take before it is a FAIL ("timed out") and the worker is restarted."""
    memory_limit: int | None = None
    """Address-space limit of the worker, in bytes; None: half the machine's memory."""


@dataclass
class AuditResult:
    """What an audit produced: the records and the context needed to reproduce them."""

    records: list[Record]
    candidates: list[CandidateInfo]
    options: AuditOptions
    environment: dict
    seconds: float
    cache_hits: int
    cache_misses: int
    uncertified: int = 0
    """Reference elements whose rounding could not be certified at the precision cap (expected 0)."""
    complete: bool = True
    """False when the audit was interrupted (Ctrl-C, SIGTERM): the records are those collected so far."""
    worker_restarts: int = 0

    @property
    def exit_code(self) -> int:
        """0 when nothing FAILed, 1 otherwise."""
        return 1 if any(r.verdict == FAIL for r in self.records) else 0

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "WARN": 0, "FAIL": 0, "SKIP": 0}
        for r in self.records:
            out[r.verdict] += 1
        return out


def environment(seed: int) -> dict:
    """Versions and machine facts recorded with every result."""
    import ml_dtypes
    import mpmath

    env = {
        "softaudit": softaudit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "mpmath": mpmath.__version__,
        "mpmath_backend": mpmath.libmp.BACKEND,
        "ml_dtypes": ml_dtypes.__version__,
        "device": "cpu",
        "seed": seed,
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def plan(options: AuditOptions) -> tuple[list[Case], list[Format]]:
    """The cases and formats an audit will cover (raises CaseError / FormatError on bad options)."""
    cases = select_cases(load_cases(list(options.cases_dirs)), list(options.case_patterns))
    formats = list(options.formats) or list(FORMATS.values())
    return cases, formats


def expand_targets(targets: Sequence[str]) -> list[tuple[str, bool]]:
    """Targets as (file or built-in, came from a directory); a directory gives its .py files, sorted.

    Files whose names start with "_" or "." in a directory are skipped (packages'
    __init__.py, private helpers); a target named twice is audited once.
    """
    out: dict[str, bool] = {}
    for t in targets:
        path = Path(t)
        if not t.startswith("builtin:") and path.is_dir():
            files = sorted(p for p in path.glob("*.py") if not p.name.startswith(("_", ".")))
            if not files:
                raise CandidateError(f"{t}: directory holds no .py file")
            for f in files:
                out.setdefault(str(f), True)
        else:
            out.setdefault(t, False)
    return list(out.items())


def run_audit(targets: Sequence[str], options: AuditOptions | None = None,
              progress: ProgressFn | None = None) -> AuditResult:
    """Audit every target's ops over the selected cases and formats.

    Bad targets raise CandidateError before anything runs. A candidate that
    fails at run time (exception, crash, hang, contract breach), or whose module
    raises while importing, becomes a FAIL record instead. Ctrl-C / SIGTERM
    (KeyboardInterrupt) end the audit early with ``complete=False``.
    """
    options = options or AuditOptions()
    started = time.perf_counter()
    cases, formats = plan(options)
    wanted_ops = [op for op in OPS if not options.ops or op in options.ops]
    executor = make_executor(options.isolated, options.rowwise, options.timeout, options.memory_limit)
    records: list[Record] = []
    candidates: list[CandidateInfo] = []
    uncertified = 0
    complete = True
    cache = ReferenceCache((options.cache_dir or default_cache_dir()) if options.use_cache else None)
    try:
        candidates, failures = _load_all(executor, targets)
        records.extend(_load_failure_record(f) for f in failures)
        units = [(fmt, case) for fmt in formats for case in cases]
        if not failures and not any(op in c.ops and case.applies_to(op, fmt.name)
                                    for fmt, case in units for c in candidates for op in wanted_ops):
            defined = sorted({op for c in candidates for op in c.ops})
            raise NothingToAudit(
                f"nothing to audit: the targets define {', '.join(defined) or 'no op'}, and no selected case "
                f"applies to {', '.join(wanted_ops)} in {', '.join(f.name for f in formats)}")
        for done, (fmt, case) in enumerate(units):
            if progress:
                progress(done, len(units), f"{fmt.name} · {case.name}")
            jobs = [(c, op) for c in candidates for op in wanted_ops
                    if op in c.ops and case.applies_to(op, fmt.name)]
            if not jobs:
                continue
            try:
                x = generate(case, fmt, seed=options.seed)
            except NotApplicable as exc:
                records.extend(_skip(c, op, fmt, case, exc.reason) for c, op in jobs)
                continue
            refs = cache.get_or_compute(x, fmt)
            uncertified += refs.uncertified
            for c, op in jobs:
                records.append(_judge(executor, c, op, fmt, case, x, refs, options.gate))
        if progress:
            progress(len(units), len(units), "done")
    except KeyboardInterrupt:
        complete = False
    finally:
        restarts = getattr(executor, "restarts", 0)
        executor.close()
    if complete and records and all(r.verdict == SKIP for r in records):
        raise NothingToAudit(f"nothing to audit: every selected case was skipped ({records[0].reasons[0]})")
    return AuditResult(
        records=records, candidates=candidates, options=options, environment=environment(options.seed),
        seconds=time.perf_counter() - started, cache_hits=cache.hits, cache_misses=cache.misses,
        uncertified=uncertified, complete=complete, worker_restarts=restarts,
    )


def _load_all(executor: Executor, targets: Sequence[str]) -> tuple[list[CandidateInfo], list[LoadFailure]]:
    """Load every target; files of a directory that define no op are skipped, not errors."""
    candidates: list[CandidateInfo] = []
    failures: list[LoadFailure] = []
    for target, from_directory in expand_targets(targets):
        try:
            loaded = executor.load(target)
        except NoOpsError:
            if from_directory:
                continue
            raise
        if isinstance(loaded, LoadFailure):
            failures.append(loaded)
        else:
            candidates.extend(loaded)
    if not candidates and not failures:
        raise CandidateError(f"no file among {', '.join(targets)} defines softmax, log_softmax or logsumexp")
    return _unique_names(candidates), failures


def _load_failure_record(f: LoadFailure) -> Record:
    name = Path(f.target).stem if not f.target.startswith("builtin:") else f.target
    return Record(candidate=name, target=f.target, op="import", dtype="-", case="-", family="-",
                  verdict=FAIL, reasons=[f.reason], error=f.reason)


class NothingToAudit(ValueError):
    """The targets, ops, formats and cases leave no combination to judge (bad input, exit 2)."""


def _unique_names(candidates: list[CandidateInfo]) -> list[CandidateInfo]:
    """Give candidates that share a name (two files called impl.py) distinct names: record ids stay unique."""
    seen: dict[str, int] = {}
    for c in candidates:
        seen[c.name] = seen.get(c.name, 0) + 1
    return [dataclasses.replace(c, name=f"{c.name}@{c.target}") if seen[c.name] > 1 else c for c in candidates]


def _skip(c: CandidateInfo, op: str, fmt: Format, case: Case, reason: str) -> Record:
    return Record(candidate=c.name, target=c.target, op=op, dtype=fmt.name, case=case.name,
                  family=case.family, verdict=SKIP, reasons=[reason], case_description=case.description)


def _judge(executor: Executor, c: CandidateInfo, op: str, fmt: Format, case: Case, x: np.ndarray, refs,
           gate: Gate) -> Record:
    rec = Record(candidate=c.name, target=c.target, op=op, dtype=fmt.name, case=case.name,
                 family=case.family, verdict=PASS, case_description=case.description)
    res = executor.call(c, op, x, fmt)
    rec.seconds = res.seconds
    rec.output_dtype = res.output_dtype
    rec.notes = list(c.notes.get(op, ())) + list(res.notes)
    rec.input_modified = res.input_modified
    if res.error is not None or res.output is None:
        rec.error = res.error or "returned no output"
        rec.verdict, rec.reasons = FAIL, [f"{op} {rec.error}"]
    else:
        y = to_float64(res.output)
        ref = refs.ops[op]
        j = judge_elements(op, x, y, ref, refs.stats, fmt)
        rec.metrics = summarize(op, x, y, ref, j, gate.ratio_limit)
        rec.verdict, rec.reasons = decide(rec.metrics, gate)
    if res.input_modified:
        rec.verdict = FAIL
        rec.reasons.insert(0, f"{op} modified its input")
    return rec
