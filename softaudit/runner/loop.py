"""The audit loop: cases -> inputs -> candidates -> reference -> judging -> records.

``run_audit`` is the Python API behind ``softaudit run``; tests and users call it
directly. It never stops at the first failure: every combination gets a record.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from softaudit.candidates.calling import CallRequest, CallResult
from softaudit.candidates.loading import check_target
from softaudit.cases.inputs import LossInputs, NotApplicable, generate, upstream
from softaudit.cases.model import Case
from softaudit.formats import Format, to_float64
from softaudit.judging.rules import Output, judge
from softaudit.judging.unit import AuditUnit
from softaudit.judging.verdicts import (
    FAIL,
    INTERPRETER_LIMITATION,
    PASS,
    SKIP,
    Gate,
    apply_relative_rule,
    interpreter_limitation,
)
from softaudit.ops import DIRECTIONS, OPS
from softaudit.options import AuditOptions
from softaudit.reference import ReferenceCache, default_cache_dir
from softaudit.results.records import Record, SpeedRecord
from softaudit.runner.bench import run_bench
from softaudit.runner.cuda_errors import DEVICE_ASSERT
from softaudit.runner.environment import environment
from softaudit.runner.isolation import CandidateInfo, Executor, make_executor
from softaudit.runner.linear_loop import linear_records
from softaudit.runner.planning import (
    NothingToAudit,
    baseline_name,
    expand_targets,
    is_cached,
    load_failure_record,
    load_targets,
    plan,
    unit_needs,
    with_corpus,
)
from softaudit.runner.prefetch import Prefetcher, default_jobs
from softaudit.runner.speed import DEFAULT_SHAPES

ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, what): called as each (format, case) unit starts and at the end."""


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
    cache_damaged: int = 0
    """Reference cache entries that did not match their input (damaged or altered): recomputed."""
    complete: bool = True
    """False when the audit was interrupted (Ctrl-C, SIGTERM): the records are those collected so far."""
    interrupted_by: int | None = None
    """The signal that interrupted it (set by the CLI, which catches it); SIGINT when not said."""
    worker_restarts: int = 0
    baseline: str | None = None
    """The relative rule's baseline candidate, whose own verdicts do not set the exit code."""
    prefetched_units: int = 0
    """(format, case) units whose references --jobs' worker processes computed."""
    speed: list[SpeedRecord] = field(default_factory=list)
    """With ``bench``: one per candidate x op x direction x format x shape."""
    kernels: dict = field(default_factory=dict)
    """Target -> the kernel compilations its calls made (softaudit.candidates.kernels.summary): the Triton
    built-ins note theirs; other candidates have none."""

    @property
    def exit_code(self) -> int:
        """0 when nothing FAILed (the baseline's records aside), 1 otherwise; an interrupted audit
        exits 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), whatever it collected."""
        if not self.complete:
            return 128 + (self.interrupted_by or 2)
        return 1 if any(r.verdict == FAIL and r.candidate != self.baseline for r in self.records) else 0

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "WARN": 0, "FAIL": 0, "SKIP": 0}
        for r in self.records:
            out[r.verdict] += 1
        return out


def run_audit(targets: Sequence[str], options: AuditOptions | None = None,
              progress: ProgressFn | None = None, executor: Executor | None = None) -> AuditResult:
    """Audit every target's ops over the selected cases and formats (``_run_audit``), with the
    kernel compilations the candidates noted in the worker (softaudit.candidates.kernels) collected
    through a log file named in the environment the worker inherits."""
    import os
    import tempfile

    from softaudit.candidates import kernels

    fd, log = tempfile.mkstemp(prefix="softaudit-kernels-", suffix=".jsonl")
    os.close(fd)
    previous = os.environ.get(kernels.LOG_ENV)
    os.environ[kernels.LOG_ENV] = log
    try:
        result = _run_audit(targets, options, progress, executor)
        result.kernels = kernels.summary(kernels.read_log(Path(log)))
        return result
    finally:
        if previous is None:
            os.environ.pop(kernels.LOG_ENV, None)
        else:
            os.environ[kernels.LOG_ENV] = previous
        Path(log).unlink(missing_ok=True)


def _run_audit(targets: Sequence[str], options: AuditOptions | None = None,
               progress: ProgressFn | None = None, executor: Executor | None = None) -> AuditResult:
    """Audit every target's ops over the selected cases and formats.

    Bad targets raise CandidateError before anything runs. A candidate that
    fails at run time (exception, crash, hang, contract breach), or whose module
    raises while importing, becomes a FAIL record instead. Ctrl-C / SIGTERM
    (KeyboardInterrupt) end the audit early with ``complete=False``. ``executor`` replaces the one
    the options would make (the Python API passes an in-process one holding its callables).
    """
    options = with_corpus(options or AuditOptions())
    started = time.perf_counter()
    cases, formats = plan(options)
    wanted_ops = [op for op in OPS if not options.ops or op in options.ops]
    if executor is None:
        # Bad targets (an unknown built-in, a missing file, a syntax error) are bad input, told
        # before a worker process starts; what needs the file run is found by loading it.
        for target, _ in expand_targets([*targets, *([options.relative_to] if options.relative_to else [])]):
            check_target(target)
        w = options.worker
        executor = make_executor(w.isolated, w.rowwise, w.timeout, w.memory_limit, w.explicit_device)
    records: list[Record] = []
    speed: list[SpeedRecord] = []
    candidates: list[CandidateInfo] = []
    uncertified = 0
    complete = True
    cache = ReferenceCache((options.cache.directory or default_cache_dir()) if options.cache.enabled else None)
    prefetcher: Prefetcher | None = None
    baseline = None
    if options.relative_to is not None and options.relative_to not in targets:
        targets = [*targets, options.relative_to]
    try:
        candidates, failures = load_targets(executor, targets)
        if options.relative_to is not None:
            baseline = baseline_name(candidates, failures, options.relative_to)
        records.extend(load_failure_record(f) for f in failures)
        units = [(fmt, case) for fmt in formats for case in cases]
        jobs = options.jobs if options.jobs is not None else default_jobs()
        prefetcher = Prefetcher(cache, jobs)
        if jobs > 1:
            prefetcher.start(unit_needs(units, candidates, wanted_ops, options),
                             lambda case, needs: not is_cached(cache, case, needs))
        wanted_directions = [d for d in DIRECTIONS if not options.directions or d in options.directions]
        if not failures and not any(op in c.ops and any(case.applies_to(op, fmt.name, d) for d in wanted_directions)
                                    for fmt, case in units for c in candidates for op in wanted_ops):
            defined = sorted({op for c in candidates for op in c.ops})
            raise NothingToAudit(
                f"nothing to audit: the targets define {', '.join(defined) or 'no op'}, and no selected case "
                f"applies to {', '.join(wanted_ops)} in {', '.join(f.name for f in formats)}")
        for done, (fmt, case) in enumerate(units):
            if progress:
                progress(done, len(units), f"{fmt.name} · {case.name}")
            directions = [d for d in DIRECTIONS if d in case.directions
                          and (not options.directions or d in options.directions)]
            calls = [(c, op) for c in candidates for op in wanted_ops
                    if op in c.ops and op in case.ops and case.applies_to_format(fmt.name)] if directions else []
            if not calls:
                continue
            if case.linear:
                prefetcher.wait(fmt, case)
                linear, unc = linear_records(executor, [c for c, _ in calls], directions, fmt, case, options, cache)
                records.extend(linear)
                uncertified += unc
                continue
            try:
                x = generate(case, fmt, seed=options.seed)
            except NotApplicable as exc:
                records.extend(_skip(c, op, d, fmt, case, exc.reason) for c, op in calls for d in directions)
                continue
            prefetcher.wait(fmt, case)
            refs = cache.get_or_compute(x, fmt)
            uncertified += refs.uncertified
            unit = AuditUnit(case, fmt, x, refs, cache, options.seed)
            for c, op in calls:
                for direction in directions:
                    records.append(audit_record(executor, c, op, direction, unit, options.gate.for_record(op, fmt.name)))
            uncertified += unit.uncertified
        if progress:
            progress(len(units), len(units), "done")
        if options.bench:
            run_bench(executor, candidates, wanted_ops, wanted_directions, formats,
                      list(options.shapes) or list(DEFAULT_SHAPES), options.seed, speed, progress,
                      linear_shapes=list(options.shapes) or None)
    except KeyboardInterrupt:
        complete = False
    finally:
        restarts = getattr(executor, "restarts", 0)
        executor.close()
        if prefetcher is not None:
            prefetcher.close()
    if complete and records and all(r.verdict == SKIP for r in records):
        raise NothingToAudit(f"nothing to audit: every selected case was skipped ({records[0].reasons[0]})")
    if baseline is not None:
        apply_relative_rule(records, baseline, options.relative_factor, options.relative_slack)
    return AuditResult(
        records=records, candidates=candidates, options=options, environment=environment(options.seed, options.worker.device),
        seconds=time.perf_counter() - started, cache_hits=cache.hits, cache_misses=cache.misses,
        cache_damaged=cache.damaged, uncertified=uncertified, complete=complete, worker_restarts=restarts, baseline=baseline,
        prefetched_units=prefetcher.units_from_workers if prefetcher is not None else 0, speed=speed,
    )


def _skip(c: CandidateInfo, op: str, direction: str, fmt: Format, case: Case, reason: str) -> Record:
    return Record(candidate=c.name, target=c.target, op=op, dtype=fmt.name, case=case.name, direction=direction,
                  family=case.family, verdict=SKIP, reasons=[reason], case_description=case.description)


def _record(c: CandidateInfo, op: str, direction: str, unit: AuditUnit) -> Record:
    params = unit.loss().parameters() if op == "cross_entropy" else {}
    return Record(candidate=c.name, target=c.target, op=op, dtype=unit.fmt.name, case=unit.case.name,
                  family=unit.case.family, verdict=PASS, direction=direction,
                  case_description=unit.case.description, parameters=params, input_summary=unit.summary())


def _skip_reason(c: CandidateInfo, op: str, direction: str, unit: AuditUnit) -> str | None:
    """Why this candidate cannot be audited on this case in this direction, or None."""
    if direction == "backward" and op not in c.backward:
        return c.backward_missing.get(op, f"no backward pass for {op}")
    if op != "cross_entropy":
        return None
    loss = unit.loss()
    if direction == "backward" and loss.out_of_range:
        return "out-of-range targets have no gradient: audited forward only"
    fn = _loss_function(c, direction)
    accepted = set(c.keywords.get(fn, ()))
    needed = [k for k in loss.keywords() if k != "reduction"]
    if loss.reduction == "sum":
        needed.append("reduction")
    missing = [k for k in needed if k not in accepted]
    if missing:
        return f"{fn} takes no {', '.join(missing)} keyword, which this case needs"
    if loss.target_kind == "probability" and not c.probability_targets.get(fn, True):
        return f"{fn} accepts class-index targets only"
    return None


def audit_record(executor: Executor, c: CandidateInfo, op: str, direction: str, unit: AuditUnit, gate: Gate) -> Record:
    """One record: the call, the reference it is judged against, the verdict."""
    try:
        rec = _record(c, op, direction, unit)
    except NotApplicable as exc:
        return _skip(c, op, direction, unit.fmt, unit.case, exc.reason)
    reason = _skip_reason(c, op, direction, unit)
    if reason is not None:
        rec.verdict, rec.reasons = SKIP, [reason]
        return rec
    loss = unit.loss() if op == "cross_entropy" else None
    if loss is not None and direction == "backward":
        loss = dataclasses.replace(loss, reduction=_effective_reduction(c, unit, loss))
    request = call_request(op, direction, unit, loss)
    res = executor.call(c, request)
    rec.seconds = res.seconds
    rec.output_dtype = res.output_dtype
    key = op if direction == "forward" else f"{op}_backward"
    rec.notes = list(c.notes.get(key, ())) + list(res.notes)
    rec.input_modified = res.input_modified
    if res.unsupported:
        rec.verdict, rec.reasons = SKIP, [res.unsupported]
        return rec
    label = op if direction == "forward" else f"{op} backward"
    if loss is not None and loss.out_of_range and direction == "forward" and _clear_error(res):
        rec.notes.insert(0, f"raised on an out-of-range target, as it should: {res.error}")
    elif res.raised and interpreter_limitation(res.error) and not res.input_modified:
        rec.error = res.error
        rec.verdict, rec.reasons = SKIP, [f"{INTERPRETER_LIMITATION}: {label} {res.error} "
                                          "(Triton's CPU interpreter cannot run this; not a finding: audit on a GPU)"]
    elif res.error is not None or res.output is None:
        rec.error = res.error or "returned no output"
        rec.verdict, rec.reasons = FAIL, [f"{label} {rec.error}"]
    else:
        _judge_output(rec, op, direction, unit, loss, request.dy, np.asarray(res.output), c, gate)
    if res.input_modified:
        rec.verdict = FAIL
        rec.reasons.insert(0, f"{label} modified its input")
    return rec


def call_request(op: str, direction: str, unit: AuditUnit, loss: LossInputs | None) -> CallRequest:
    """The call the audit makes of (op, direction) on the unit's input: with cross_entropy's inputs
    (``loss``, under the reduction asked for), and backward with the upstream gradient and the
    correctly rounded exact forward output (explicit backward functions take it)."""
    x, fmt = unit.x, unit.fmt
    rows, n = x.shape
    dy = y = None
    if direction == "backward":
        if loss is not None:
            shape: tuple[int, ...] = (rows,) if loss.reduction == "none" else ()
        else:
            shape = (rows,) if op == "logsumexp" else (rows, n)
            y = unit.refs.ops[op].rounded.astype(fmt.np_dtype)
        dy = upstream(unit.case, fmt, shape, seed=unit.seed)
    return CallRequest(op=op, direction=direction, x=x, fmt_name=fmt.name, loss=loss, dy=dy, y=y)


def _clear_error(res: CallResult) -> bool:
    """Whether a call on a case whose target is out of range failed as the case asks: it raised
    (torch's CPU code: IndexError), or a kernel's device-side assert fired (torch's CUDA kernels:
    the worker is replaced, cuda_errors). Any other error that leaves the CUDA context unusable (an
    illegal memory access: the kernel read out of bounds) is what the case is there to catch."""
    if res.error is None:
        return False
    if res.cuda_error is not None:
        return res.cuda_error == DEVICE_ASSERT
    return res.raised


def _loss_function(c: CandidateInfo, direction: str) -> str:
    """The function that receives the loss keywords: cross_entropy itself, forward and through
    autograd or jax.vjp, or the explicit cross_entropy_backward."""
    if direction == "forward" or c.backward.get("cross_entropy") in ("autograd", "vjp"):
        return "cross_entropy"
    return "cross_entropy_backward"


def _effective_reduction(c: CandidateInfo, unit: AuditUnit, loss: LossInputs) -> str:
    """The reduction a cross_entropy applies: the case's when it takes the keyword, else what its
    forward output showed (a scalar is the mean, docs/candidates.md#cross-entropy)."""
    if "reduction" in c.keywords.get(_loss_function(c, "backward"), ()):
        return loss.reduction
    return unit.reductions.get(c.name, "none")


def _judge_output(rec: Record, op: str, direction: str, unit: AuditUnit, loss: LossInputs | None,
                  dy: np.ndarray | None, out: np.ndarray, c: CandidateInfo, gate: Gate) -> None:
    """Judge the output by the judging table (softaudit.judging.rules) into the record."""
    y = to_float64(out)
    if op == "cross_entropy" and direction == "forward":
        assert loss is not None
        loss = dataclasses.replace(loss, reduction=_forward_reduction(rec, c, unit, loss, y))
    judged = judge(Output(op, direction, unit, y, loss, dy), gate)
    rec.metrics, rec.verdict, rec.reasons, rec.excerpt = judged.metrics, judged.verdict, judged.reasons, judged.excerpt
    if op == "cross_entropy" and direction == "backward":
        assert loss is not None
        rec.parameters = {**rec.parameters, "reduction": loss.reduction}


def _forward_reduction(rec: Record, c: CandidateInfo, unit: AuditUnit, loss: LossInputs, y: np.ndarray) -> str:
    """The reduction a cross_entropy output is judged under, noted in the record and the unit: a
    scalar is the case's reduction when the candidate takes the keyword, else the mean (docs/candidates.md#cross-entropy);
    per-row losses are judged per row."""
    takes_reduction = "reduction" in c.keywords.get("cross_entropy", ())
    if y.ndim == 0:
        reduction = loss.reduction if takes_reduction else "mean"
        unit.reductions[c.name] = reduction
        rec.parameters = {**rec.parameters, "reduction": reduction}
        return reduction
    unit.reductions.setdefault(c.name, "none")
    if loss.reduction != "none" and not takes_reduction:
        rec.parameters = {**rec.parameters, "reduction": "none"}
        rec.notes.append("returned per-row losses (it takes no reduction keyword): judged per row")
    return "none"
