"""The audit loop: cases -> inputs -> candidates -> reference -> metrics -> verdicts.

``run_audit`` is the Python API behind ``softaudit run``; tests and users call it
directly. It never stops at the first failure: every combination gets a record.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import softaudit
from softaudit.candidates.calling import CallRequest, CallResult
from softaudit.candidates.errors import CandidateError, NoOpsError
from softaudit.candidates.loading import check_target
from softaudit.cases.model import Case
from softaudit.cases.reader import load_cases, select_cases
from softaudit.ops import OPS
from softaudit.cases.corpus import with_corpus_dir
from softaudit.cuda_errors import DEVICE_ASSERT
from softaudit.errors import BadInput
from softaudit.envelope import (
    cross_entropy_backward_absolute,
    cross_entropy_reduced_absolute,
    cross_entropy_row_absolute,
    log_softmax_backward_absolute,
    logsumexp_backward_absolute,
    softmax_backward_absolute,
)
from softaudit.formats import FORMATS, Format, get_format, to_float64
from softaudit.cases.inputs import LossInputs, NotApplicable, generate, loss_inputs, upstream
from softaudit.isolation import CandidateInfo, Executor, LoadFailure, make_executor
from softaudit.metrics import judge_elements, summarize
from softaudit.ops import DIRECTIONS
from softaudit.options import AuditOptions, check_device_name
from softaudit.results.records import Record, SpeedRecord
from softaudit.prefetch import Prefetcher, UnitNeeds, default_jobs
from softaudit.reference import LossReference, OpReference, ReferenceCache, ReferenceSet, backward_reference, default_cache_dir, loss_coefficients, loss_gradient_reference, loss_reference, mean_denominator, upstream_scale
from softaudit.timing import DEFAULT_SHAPES
from softaudit.verdicts import FAIL, PASS, SKIP, Gate, apply_relative_rule, decide

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
    """Target -> the kernel compilations its calls made (softaudit.kernels.summary): the Triton
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


class DeviceError(BadInput):
    """The requested device is not usable here (one line); options.check_device_name checks its syntax."""


def check_device(device: str) -> str:
    """``device`` as given when it is usable here; OptionError when it is not a device, DeviceError
    when it is not usable here. "cuda" needs torch with a CUDA device (checked now: a run must not find out after loading every target)."""
    check_device_name(device)
    if device.startswith("cuda"):
        from softaudit.candidates.detection import cuda_available

        if not cuda_available():
            raise DeviceError(f"device {device!r}: no CUDA device is available here "
                              "(torch is not installed, is a CPU build, or sees no GPU)")
        import torch

        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def environment(seed: int, device: str = "auto") -> dict:
    """Versions and machine facts recorded with every result: with a GPU in use, its name, the
    driver, CUDA and Triton versions."""
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
    env["torch"] = _torch_version()
    env["triton"] = _version_of("triton")
    env.update(gpu_environment(device))
    return env


def gpu_environment(device: str) -> dict:
    """{"device": "cuda:0", "gpu": name, "gpu_driver": ..., "cuda": ...} when the audit used a GPU
    (device cuda, or auto with one available), else {}."""
    import shutil

    if device == "cpu" or not (Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi")):
        return {}  # no NVIDIA driver: not worth importing torch to ask
    from softaudit.candidates.detection import cuda_available

    if not cuda_available():
        return {}
    import torch

    index = int(device[5:]) if device.startswith("cuda:") else 0
    facts = {"device": f"cuda:{index}", "gpu": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
             "gpu_driver": _nvidia_driver()}
    capability = torch.cuda.get_device_capability(index)
    facts["gpu_capability"] = f"{capability[0]}.{capability[1]}"
    return facts


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when it is on PATH."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def _version_of(package: str) -> str | None:
    """An installed package's version, without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_version() -> str | None:
    """torch's version without importing it (seconds that a numpy-only audit need not pay)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def with_corpus(options: AuditOptions) -> AuditOptions:
    """``options`` with the corpus directory among its case directories when it holds cases (so the
    results, their rerun commands and --jobs' workers all see it)."""
    dirs = with_corpus_dir(options.cases_dirs, options.corpus_dir)
    return options if len(dirs) == len(options.cases_dirs) else dataclasses.replace(options, cases_dirs=dirs)


def plan(options: AuditOptions) -> tuple[list[Case], list[Format]]:
    """The cases and formats an audit will cover (raises CaseError / FormatError on bad options)."""
    cases = select_cases(load_cases(list(with_corpus(options).cases_dirs)), list(options.case_patterns))
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
              progress: ProgressFn | None = None, executor: Executor | None = None) -> AuditResult:
    """Audit every target's ops over the selected cases and formats (``_run_audit``), with the
    kernel compilations the candidates noted in the worker (softaudit.kernels) collected
    through a log file named in the environment the worker inherits."""
    import os
    import tempfile

    from softaudit import kernels

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
            baseline = _baseline(candidates, failures, options.relative_to)
        records.extend(_load_failure_record(f) for f in failures)
        units = [(fmt, case) for fmt in formats for case in cases]
        jobs = options.jobs if options.jobs is not None else default_jobs()
        prefetcher = Prefetcher(cache, jobs)
        if jobs > 1:
            prefetcher.start(_unit_needs(units, candidates, wanted_ops, options),
                             lambda case, needs: not _cached(cache, case, needs))
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
            jobs = [(c, op) for c in candidates for op in wanted_ops
                    if op in c.ops and op in case.ops and case.applies_to_format(fmt.name)] if directions else []
            if not jobs:
                continue
            try:
                x = generate(case, fmt, seed=options.seed)
            except NotApplicable as exc:
                records.extend(_skip(c, op, d, fmt, case, exc.reason) for c, op in jobs for d in directions)
                continue
            prefetcher.wait(fmt, case)
            refs = cache.get_or_compute(x, fmt)
            uncertified += refs.uncertified
            unit = AuditUnit(case, fmt, x, refs, cache, options.seed)
            for c, op in jobs:
                for direction in directions:
                    records.append(audit_record(executor, c, op, direction, unit, options.gate.for_record(op, fmt.name)))
            uncertified += unit.uncertified
        if progress:
            progress(len(units), len(units), "done")
        if options.bench:
            _bench(executor, candidates, wanted_ops, formats, options, speed, progress)
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


def _bench(executor: Executor, candidates: list[CandidateInfo], wanted_ops: list[str], formats: list[Format],
           options: AuditOptions, out: list[SpeedRecord], progress: ProgressFn | None) -> None:
    """Time every candidate x op x direction x format x shape in the executor (the audit's own
    worker), adding to ``out`` what was measured, also when interrupted."""
    shapes = list(options.shapes) or list(DEFAULT_SHAPES)
    directions = [d for d in DIRECTIONS if not options.directions or d in options.directions]
    # Measured with format and shape outermost (the worker draws one set of logits per format x
    # shape and times every op and direction on it); listed in ``out`` candidate, op, direction,
    # format, shape, as the reports read them.
    todo = [(c, op, d, fmt, shape) for fmt in formats for shape in shapes for c in candidates
            for op in wanted_ops if op in c.ops for d in directions]  # one draw per format x shape
    listed = {(id(c), op, d, fmt.name, shape): i for i, (c, op, d, fmt, shape) in enumerate(
        (c, op, d, fmt, shape) for c in candidates for op in wanted_ops if op in c.ops
        for d in directions for fmt in formats for shape in shapes)}
    measured: list[tuple[int, SpeedRecord]] = []
    try:
        for done, (c, op, d, fmt, (rows, n)) in enumerate(todo):
            label = op if d == "forward" else f"{op} bwd"
            if progress:
                progress(done, len(todo), f"speed · {c.name} {label} {fmt.name} {rows}x{n}")
            if d == "backward" and op not in c.backward:
                figures, reason = None, c.backward_missing.get(op, f"{op}'s backward pass cannot be timed")
            else:
                kind, payload = executor.bench(c, op, d, fmt.name, rows, n, options.seed)
                figures, reason = (dict(payload), None) if kind == "speed" else (None, str(payload))  # type: ignore[call-overload]
            measured.append((listed[(id(c), op, d, fmt.name, (rows, n))],
                             SpeedRecord(c.name, c.target, op, d, fmt.name, (rows, n), figures, reason)))
    finally:  # an interrupt keeps what was measured
        out.extend(sp for _, sp in sorted(measured, key=lambda pair: pair[0]))
    if progress and todo:
        progress(len(todo), len(todo), "done")


def _unit_needs(units: list[tuple[Format, Case]], candidates: list[CandidateInfo], wanted_ops: list[str],
                options: AuditOptions) -> list[tuple[Format, Case, UnitNeeds]]:
    """For prefetching: each unit's references as the main loop will ask for them."""
    out = []
    for fmt, case in units:
        directions = [d for d in DIRECTIONS if d in case.directions
                      and (not options.directions or d in options.directions)]
        ops = [op for op in wanted_ops if op in case.ops and case.applies_to_format(fmt.name)
               and any(op in c.ops for c in candidates)]
        if not ops or not directions:
            continue
        backward = tuple(op for op in ops if "backward" in directions and any(op in c.backward for c in candidates))
        needs = UnitNeeds(case.name, tuple(str(d) for d in options.cases_dirs), fmt.name, options.seed, backward,
                          "cross_entropy" in ops and "forward" in directions)
        out.append((fmt, case, needs))
    return out


def _cached(cache: ReferenceCache, case: Case, needs: UnitNeeds) -> bool:
    """Whether the unit's forward references are stored (then so, almost always, is the rest)."""
    try:
        x = generate(case, get_format(needs.fmt_name), seed=needs.seed)
    except NotApplicable:
        return True  # nothing to compute
    return cache.stored(cache.key(x, get_format(needs.fmt_name)))


def _baseline(candidates: list[CandidateInfo], failures: list[LoadFailure], target: str) -> str:
    """The name of the relative rule's baseline candidate (bad input unless the target gives one)."""
    if any(f.target == target for f in failures):
        raise CandidateError(f"--relative-to {target}: the baseline failed to import, so nothing can be "
                             f"judged against it")
    names = [c.name for c in candidates if c.target == target]
    if len(names) != 1:
        raise CandidateError(f"--relative-to {target}: the baseline must be one candidate; "
                             f"it defines {len(names)} ({', '.join(names) or 'none'})")
    return names[0]


def load_targets(executor: Executor, targets: Sequence[str]) -> tuple[list[CandidateInfo], list[LoadFailure]]:
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
        raise CandidateError(f"no file among {', '.join(targets)} defines {', '.join(OPS[:-1])} or {OPS[-1]}")
    return _unique_names(candidates), failures


def _load_failure_record(f: LoadFailure) -> Record:
    name = Path(f.target).stem if not f.target.startswith("builtin:") else f.target
    if f.unavailable:
        return Record(candidate=name, target=f.target, op="import", dtype="-", case="-", family="-",
                      verdict=SKIP, reasons=[f.reason])
    return Record(candidate=name, target=f.target, op="import", dtype="-", case="-", family="-",
                  verdict=FAIL, reasons=[f.reason], error=f.reason)


class NothingToAudit(BadInput):
    """The targets, ops, formats and cases leave no combination to judge (bad input, exit 2)."""


def _unique_names(candidates: list[CandidateInfo]) -> list[CandidateInfo]:
    """Give candidates that share a name (two files called impl.py) distinct names: record ids stay unique."""
    seen: dict[str, int] = {}
    for c in candidates:
        seen[c.name] = seen.get(c.name, 0) + 1
    return [dataclasses.replace(c, name=f"{c.name}@{c.target}") if seen[c.name] > 1 else c for c in candidates]


def _skip(c: CandidateInfo, op: str, direction: str, fmt: Format, case: Case, reason: str) -> Record:
    return Record(candidate=c.name, target=c.target, op=op, dtype=fmt.name, case=case.name, direction=direction,
                  family=case.family, verdict=SKIP, reasons=[reason], case_description=case.description)


@dataclass
class AuditUnit:
    """One (format, case): its input, references computed so far, and what the candidates' forward
    calls taught (the reduction each cross_entropy applies when it takes no reduction keyword)."""

    case: Case
    fmt: Format
    x: np.ndarray
    refs: ReferenceSet
    cache: ReferenceCache
    seed: int
    uncertified: int = 0
    _loss: LossInputs | None = None
    _loss_ref: LossReference | None = None
    _grads: dict = field(default_factory=dict)
    _coefficients: tuple[np.ndarray, np.ndarray] | None = None
    _probabilities: np.ndarray | None = None
    reductions: dict = field(default_factory=dict)
    """candidate name -> reduction its cross_entropy applied (from the forward output's shape)."""
    _summary: dict | None = None

    def summary(self) -> dict:
        if self._summary is None:
            self._summary = input_summary(self.x)
        return dict(self._summary)

    def loss(self) -> LossInputs:
        if self._loss is None:
            self._loss = loss_inputs(self.case, self.fmt, self.x, seed=self.seed)
        return self._loss

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """coef_ic and A_i (reference.loss) as float64, zero on ignored and out-of-range rows,
        for the envelopes: the same for every candidate and reduction."""
        if self._coefficients is None:
            rows, n = self.x.shape
            lc = loss_coefficients(self.loss(), rows, n)  # vectorised, within 2^-60 (envelopes need less)
            coef = lc.coef.astype(np.float64)
            self._coefficients = coef, coef.sum(axis=-1)
        return self._coefficients

    def probabilities(self) -> np.ndarray:
        """softmax of every row as float64 (0 on undefined and NaN rows), for the gradient envelopes."""
        if self._probabilities is None:
            self._probabilities = np.nan_to_num(_approx(self.refs.ops["softmax"]), nan=0.0, posinf=0.0, neginf=0.0)
        return self._probabilities

    def loss_reference(self) -> LossReference:
        if self._loss_ref is None:
            loss = self.loss()
            ops, unc = self.cache.get_or_compute_ops(
                "loss", _loss_key(self.x, loss), self.fmt, lambda: _loss_ops(self.x, loss, self.fmt))
            self._loss_ref = LossReference(ops["none"], ops["mean"], ops["sum"], unc)
            self.uncertified += unc
        return self._loss_ref

    def gradient(self, op: str, dy: np.ndarray, loss: LossInputs | None) -> OpReference:
        key = (op, loss.reduction if loss else "", dy.shape)
        if key not in self._grads:
            parts = [self.x, dy] + (_loss_key(self.x, loss) if loss else [])

            def compute() -> tuple[dict[str, OpReference], int]:
                if loss is None:
                    ref, unc = backward_reference(op, self.x, dy, self.fmt)
                else:
                    ref, unc = loss_gradient_reference(self.x, loss, dy, self.fmt)
                return {"gradient": ref}, unc

            ops, unc = self.cache.get_or_compute_ops(f"vjp-{op}", parts, self.fmt, compute)
            self.uncertified += unc
            self._grads[key] = ops["gradient"]
        return self._grads[key]


def _loss_key(x: np.ndarray, loss: LossInputs) -> list:
    weight = loss.weight if loss.weight is not None else "no-weight"
    return [x, np.asarray(loss.target), weight,
            f"{loss.target_kind}/{float(loss.label_smoothing)!r}/{loss.ignore_index}/{loss.reduction}"]


def _loss_ops(x: np.ndarray, loss: LossInputs, fmt: Format) -> tuple[dict[str, OpReference], int]:
    ref = loss_reference(x, loss, fmt)
    return {"none": ref.none, "mean": ref.mean, "sum": ref.sum}, ref.uncertified


def _record(c: CandidateInfo, op: str, direction: str, unit: AuditUnit) -> Record:
    params = unit.loss().parameters() if op == "cross_entropy" else {}
    return Record(candidate=c.name, target=c.target, op=op, dtype=unit.fmt.name, case=unit.case.name,
                  family=unit.case.family, verdict=PASS, direction=direction,
                  case_description=unit.case.description, parameters=params, input_summary=unit.summary())


def input_summary(x: np.ndarray) -> dict:
    """What reports plot error against: the input's offset and dynamic range (finite values only)."""
    x64 = np.asarray(x, dtype=np.float64)
    finite = x64[np.isfinite(x64)]
    out = {"rows": int(x64.shape[0]), "n": int(x64.shape[-1]), "neg_inf": int(np.count_nonzero(x64 == -np.inf)),
           "nan": int(np.count_nonzero(np.isnan(x64)))}
    if finite.size:
        hi, lo = float(finite.max()), float(finite.min())
        out.update(max=hi, min=lo, offset=float(np.abs(finite).max()), range=hi - lo)
    else:
        out.update(max=None, min=None, offset=None, range=None)
    return out


EXCERPT_RADIUS = 3
"""Neighbours shown on each side of the column a finding points at."""


def input_excerpt(x: np.ndarray, row: int, col: int | None) -> dict:
    """The input row around ``col`` (or its first entries for a per-row result) and its largest entry."""
    xr = np.asarray(x, dtype=np.float64)[row]
    n = xr.size
    centre = col if col is not None else 0
    cols = set(range(max(0, centre - EXCERPT_RADIUS), min(n, centre + EXCERPT_RADIUS + 1)))
    if not np.isnan(xr).all():
        cols.add(int(np.nanargmax(xr)))
    return {"row": int(row), "n": int(n), "values": [[c, float(xr[c])] for c in sorted(cols)]}


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
    x, fmt = unit.x, unit.fmt
    rows, n = x.shape
    loss = unit.loss() if op == "cross_entropy" else None
    dy = y = None
    if direction == "backward":
        if loss is not None:
            loss = dataclasses.replace(loss, reduction=_effective_reduction(c, unit, loss))
            shape: tuple[int, ...] = (rows,) if loss.reduction == "none" else ()
        else:
            shape = (rows,) if op == "logsumexp" else (rows, n)
            y = unit.refs.ops[op].rounded.astype(fmt.np_dtype)
        dy = upstream(unit.case, fmt, shape, seed=unit.seed)
    request = CallRequest(op=op, direction=direction, x=x, fmt_name=fmt.name, loss=loss, dy=dy, y=y)
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
    elif res.error is not None or res.output is None:
        rec.error = res.error or "returned no output"
        rec.verdict, rec.reasons = FAIL, [f"{label} {rec.error}"]
    else:
        _judge_output(rec, op, direction, unit, loss, dy, np.asarray(res.output), c, gate)
    if res.input_modified:
        rec.verdict = FAIL
        rec.reasons.insert(0, f"{label} modified its input")
    return rec


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
    autograd, or the explicit cross_entropy_backward."""
    if direction == "forward" or c.backward.get("cross_entropy") == "autograd":
        return "cross_entropy"
    return "cross_entropy_backward"


def _effective_reduction(c: CandidateInfo, unit: AuditUnit, loss: LossInputs) -> str:
    """The reduction a cross_entropy applies: the case's when it takes the keyword, else what its
    forward output showed (a scalar is the mean, DESIGN §7)."""
    if "reduction" in c.keywords.get(_loss_function(c, "backward"), ()):
        return loss.reduction
    return unit.reductions.get(c.name, "none")


def _judge_output(rec: Record, op: str, direction: str, unit: AuditUnit, loss: LossInputs | None,
                  dy: np.ndarray | None, out: np.ndarray, c: CandidateInfo, gate: Gate) -> None:
    # Envelopes on rows with infinities are infinite or NaN by design (those elements are
    # judged by class, not by ulps): no warnings for them.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _judge_output_quietly(rec, op, direction, unit, loss, dy, out, c, gate)


def _judge_output_quietly(rec: Record, op: str, direction: str, unit: AuditUnit, loss: LossInputs | None,
                          dy: np.ndarray | None, out: np.ndarray, c: CandidateInfo, gate: Gate) -> None:
    x, fmt, refs = unit.x, unit.fmt, unit.refs
    x64 = x.astype(np.float64)
    y = to_float64(out)
    absolute = None
    located_x = x
    if direction == "forward" and op != "cross_entropy":
        ref = refs.ops[op]
    elif direction == "forward":
        assert loss is not None
        lref = unit.loss_reference()
        coef, _total = unit.coefficients()
        row_loss = _approx(lref.none)
        row_abs = cross_entropy_row_absolute(x64, coef, row_loss, refs.stats.amax, refs.stats.log_s, fmt)
        if y.ndim == 0:
            reduction = loss.reduction if "reduction" in c.keywords.get("cross_entropy", ()) else "mean"
            unit.reductions[c.name] = reduction
            ref = lref.mean if reduction == "mean" else lref.sum
            denom = float(mean_denominator(loss, x.shape[0])) if reduction == "mean" else 1.0
            absolute = np.array([cross_entropy_reduced_absolute(row_abs, row_loss, denom, fmt)])
            y = y.reshape(1)
            located_x = np.nanmax(np.where(np.isnan(x64), -np.inf, x64), keepdims=True).reshape(1, 1)
            rec.parameters = {**rec.parameters, "reduction": reduction}
        else:
            unit.reductions.setdefault(c.name, "none")
            ref, absolute = lref.none, row_abs
            if loss.reduction != "none" and "reduction" not in c.keywords.get("cross_entropy", ()):
                rec.parameters = {**rec.parameters, "reduction": "none"}
                rec.notes.append("returned per-row losses (it takes no reduction keyword): judged per row")
    else:
        assert dy is not None
        dy64 = dy.astype(np.float64)
        p = unit.probabilities()
        if op == "cross_entropy":
            assert loss is not None
            ref = unit.gradient(op, dy, loss)
            coef, total = unit.coefficients()
            g = np.array([float(v) for v in upstream_scale(loss, dy, x.shape[0])])
            absolute = cross_entropy_backward_absolute(x64, coef, total, g, p, refs.stats.amax, refs.stats.log_s,
                                                       fmt)
            rec.parameters = {**rec.parameters, "reduction": loss.reduction}
        else:
            ref = unit.gradient(op, dy, None)
            stats = refs.stats
            if op == "softmax":
                absolute = softmax_backward_absolute(x64, dy64, p, stats.amax, fmt)
            elif op == "log_softmax":
                absolute = log_softmax_backward_absolute(x64, dy64, p, stats.amax, stats.log_s, fmt)
            else:
                absolute = logsumexp_backward_absolute(x64, dy64, p, stats.amax, stats.log_s, fmt)
    j = judge_elements(op, located_x, y, ref, refs.stats, fmt, absolute_envelope=absolute)
    rec.metrics = summarize(op, located_x, y, ref, j, gate.ratio_limit)
    rec.verdict, rec.reasons = decide(rec.metrics, gate)
    at = rec.metrics.first_mismatch or rec.metrics.worst  # a wrong class is what the verdict is about first
    if at is not None:
        if located_x is x:
            rec.excerpt = input_excerpt(x, at.row, at.col)
        else:  # a reduced loss: point at the row holding the largest logit
            flat = np.where(np.isnan(x64), -np.inf, x64)
            rec.excerpt = input_excerpt(x, int(np.unravel_index(np.argmax(flat), flat.shape)[0]), None)


def _approx(ref: OpReference) -> np.ndarray:
    """A reference's exact values as float64 (for envelopes: rounding does not matter there)."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.ldexp(ref.hi, ref.k) + np.ldexp(ref.lo, ref.k)
    return np.where(np.isfinite(v), v, np.where(np.isinf(ref.rounded), ref.rounded, np.nan))
