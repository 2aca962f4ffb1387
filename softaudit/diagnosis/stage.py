"""The diagnosis as a stage of an audit: run after ``softaudit run`` and ``softaudit.audit``.

``diagnose_records`` diagnoses every candidate with a FAIL or WARN among an audit's records,
running the experiments through a runner chosen by the caller:

- ``WorkerRunner`` (the CLI): each experiment is a small audit through ``runner.run_audit`` with
  the audit's isolation options, in one worker process kept for every experiment of the stage, so
  a candidate that crashes or hangs on an experiment costs that experiment's records (a crash is a
  FAIL record: evidence), never softaudit's process;
- ``ApiRunner`` (the Python API): in-process, through ``softaudit.audit`` on the caller's callables.

Both write the experiment's cases to a temporary directory (experiments.write_cases) and return
its records as the results document's plain dicts. Experiments are judged with the default gate
(the one the diagnosis was calibrated with) and seed 0, whatever the audit's options.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from softaudit.diagnosis.diagnose import diagnose
from softaudit.diagnosis.experiments import Experiment, ExperimentResult, Subject, case_names, write_cases
from softaudit.results.diagnoses import Diagnosis

StageProgress = Callable[[int, str], None]
"""progress(experiments started so far, what runs now)."""

_counter = itertools.count(1)


class _TemporaryCases:
    """Runs an experiment's audit on its cases written to a temporary directory; times it and
    turns an exception into ``error`` (an experiment that cannot run leaves the records to decide)."""

    def __init__(self, progress: StageProgress | None = None) -> None:
        self.progress = progress
        self.started = 0
        self.seconds = 0.0

    def _audit(self, subject: Subject, exp: Experiment, cases_dir: Path, names: list[str]) -> list[dict]:
        raise NotImplementedError

    def __call__(self, subject: Subject, exp: Experiment) -> ExperimentResult:
        self.started += 1
        if self.progress is not None:
            label = exp.op if exp.direction == "forward" else f"{exp.op} backward"
            self.progress(self.started, f"diagnosing {subject.name} {label}: {exp.id} ({exp.dtype})")
        t0 = time.perf_counter()
        result = ExperimentResult(exp)
        tag = f"x{os.getpid()}n{next(_counter)}"
        try:
            with tempfile.TemporaryDirectory(prefix="softaudit-diag-") as tmp:
                write_cases(exp, Path(tmp), tag)
                names = case_names(exp, tag)
                records = self._audit(subject, exp, Path(tmp), list(names))
            for r in records:
                suffix = names.get(str(r.get("case", "")))
                if suffix is not None and r.get("candidate") == subject.name:
                    result.records[suffix] = r
            if not result.records:
                result.error = "the experiment gave no records for this candidate"
        except Exception as exc:  # an experiment that cannot run is no evidence, not an error
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        result.seconds = time.perf_counter() - t0
        self.seconds += result.seconds
        return result


class _KeptExecutor:
    """An executor shared by every experiment's ``run_audit``: its ``close`` keeps the worker
    (``shutdown`` ends it), and a target is loaded once, under the names the audit gave it."""

    def __init__(self, inner: Any, audited: Mapping[str, Sequence[Any]]) -> None:
        self.inner = inner
        self.audited = audited
        self.loaded: dict[str, Any] = {}

    @property
    def restarts(self) -> int:
        return int(getattr(self.inner, "restarts", 0))

    def load(self, target: str) -> Any:
        if target not in self.loaded:
            got = self.inner.load(target)
            if isinstance(got, list):  # the audit's CandidateInfo (its names: name@target when two clash)
                mine = {c.loaded_name: c for c in self.audited.get(target, ())}
                got = [mine.get(c.loaded_name, c) for c in got]
            self.loaded[target] = got
        return self.loaded[target]

    def call(self, cand: Any, request: Any) -> Any:
        return self.inner.call(cand, request)

    def bench(self, *args: Any) -> Any:  # experiments never bench
        return self.inner.bench(*args)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        self.inner.close()


class WorkerRunner(_TemporaryCases):
    """Experiments in the candidates' worker: ``runner.run_audit`` with the audit's worker options
    (isolation, timeout, memory limit, device, rowwise) and reference cache, one worker for all."""

    def __init__(self, options: Any, candidates: Iterable[Any] = (), progress: StageProgress | None = None) -> None:
        super().__init__(progress)
        self.options = options
        by_target: dict[str, list[Any]] = {}
        for c in candidates:
            by_target.setdefault(c.target, []).append(c)
        self._by_target = by_target
        self._executor: _KeptExecutor | None = None

    def _audit(self, subject: Subject, exp: Experiment, cases_dir: Path, names: list[str]) -> list[dict]:
        from softaudit.formats import get_format
        from softaudit.options import AuditOptions
        from softaudit.results.schema import record_dict
        from softaudit.runner.isolation import make_executor
        from softaudit.runner.loop import run_audit

        if not subject.target:
            raise ValueError(f"{subject.name}: no target to run experiments on")
        w = self.options.worker
        if self._executor is None:
            self._executor = _KeptExecutor(
                make_executor(w.isolated, w.rowwise, w.timeout, w.memory_limit, w.explicit_device), self._by_target)
        opts = AuditOptions(ops=[exp.op], directions=[exp.direction], formats=[get_format(exp.dtype)],
                            case_patterns=names, cases_dirs=[cases_dir], seed=0, worker=w, cache=self.options.cache,
                            jobs=1)
        res = run_audit([subject.target], opts, executor=self._executor)
        if not res.complete:
            raise KeyboardInterrupt
        return [record_dict(r) for r in res.records]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


class ApiRunner(_TemporaryCases):
    """Experiments in this process through ``softaudit.audit`` on the same callables (``audit_kw``:
    what the audit was given that says which candidate it is: op, name, rowwise, device, cache_dir)."""

    def __init__(self, impl: Any, audit_kw: Mapping[str, Any], progress: StageProgress | None = None) -> None:
        super().__init__(progress)
        self.impl = impl
        self.audit_kw = dict(audit_kw)

    def _audit(self, subject: Subject, exp: Experiment, cases_dir: Path, names: list[str]) -> list[dict]:
        import softaudit
        from softaudit.results.schema import record_dict

        report = softaudit.audit(self.impl, ops=[exp.op], directions=[exp.direction], dtypes=[exp.dtype],
                                 cases=names, cases_dirs=[cases_dir], diagnose=False, **self.audit_kw)
        return [record_dict(r) for r in report.records]

    def close(self) -> None:
        pass


def failing_candidates(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The candidates with a FAIL or WARN on an op (import failures aside), in record order."""
    out: dict[str, None] = {}
    for r in records:
        if r.get("verdict") in ("FAIL", "WARN") and r.get("op") not in ("", "import", None):
            out.setdefault(str(r.get("candidate")), None)
    return list(out)


def diagnose_records(records: Sequence[Mapping[str, Any]], targets: Mapping[str, str | None],
                     runner: Callable[[Subject, Experiment], ExperimentResult] | None) -> list[Diagnosis]:
    """The diagnoses of every candidate with a FAIL or WARN in ``records`` (plain dicts);
    ``targets`` maps a candidate's name to its target (file or builtin:NAME), which the runner
    re-runs; ``runner`` None diagnoses from the records alone."""
    out: list[Diagnosis] = []
    for name in failing_candidates(records):
        mine = [r for r in records if r.get("candidate") == name]
        subject = Subject(name, target=targets.get(name))
        out.extend(diagnose(mine, subject, run_experiment=runner))
    return out
