"""What an audit covers: its targets loaded into candidates (a directory's files expanded, bad
ones told before anything runs), its cases and formats, and each unit's references to prefetch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from softaudit.candidates.errors import CandidateError, NoOpsError
from softaudit.cases.corpus import with_corpus_dir
from softaudit.cases.inputs import NotApplicable, generate
from softaudit.cases.linear_inputs import linear_inputs
from softaudit.cases.model import Case
from softaudit.cases.reader import load_cases, select_cases
from softaudit.errors import BadInput
from softaudit.formats import FORMATS, Format, get_format
from softaudit.judging.linear_rules import LinearUnit
from softaudit.judging.verdicts import FAIL, SKIP
from softaudit.ops import DIRECTIONS, LINEAR_CROSS_ENTROPY, OPS
from softaudit.reference import ReferenceCache
from softaudit.results.records import Record
from softaudit.runner.isolation import CandidateInfo, Executor, LoadFailure
from softaudit.runner.prefetch import UnitNeeds

if TYPE_CHECKING:
    from softaudit.options import AuditOptions

LOSSES = ("cross_entropy", LINEAR_CROSS_ENTROPY)
"""The ops whose forward references are losses (prefetched apart from the row ops')."""


def with_corpus(options: AuditOptions) -> AuditOptions:
    """``options`` with the corpus directory among its case directories when it holds cases (so the
    results, their rerun commands and --jobs' workers all see it)."""
    dirs = with_corpus_dir(options.cases_dirs, options.corpus_dir)
    return options if len(dirs) == len(options.cases_dirs) else dataclasses.replace(options, cases_dirs=dirs)


def plan(options: AuditOptions) -> tuple[list[Case], list[Format]]:
    """The cases and formats an audit will cover (raises CaseError / FormatError on bad options)."""
    cases = select_cases(load_cases(list(with_corpus(options).cases_dirs)), list(options.case_patterns))
    if any(c.devices for c in cases):
        device = run_device(options)
        cases = [c for c in cases if c.runs_on(device)]
    formats = list(options.formats) or list(FORMATS.values())
    return cases, formats


def run_device(options: AuditOptions) -> str:
    """The device the audit's torch candidates run on: --device, or for "auto" CUDA when torch sees one."""
    if options.worker.device != "auto":
        return options.worker.device
    from softaudit.candidates.detection import cuda_available

    return "cuda" if cuda_available() else "cpu"


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


def unit_needs(units: list[tuple[Format, Case]], candidates: list[CandidateInfo], wanted_ops: list[str],
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
                          any(op in LOSSES for op in ops) and "forward" in directions)
        out.append((fmt, case, needs))
    return out


def is_cached(cache: ReferenceCache, case: Case, needs: UnitNeeds) -> bool:
    """Whether the unit's forward references are stored (then so, almost always, is the rest)."""
    fmt = get_format(needs.fmt_name)
    try:
        if case.linear:
            return LinearUnit(case, fmt, linear_inputs(case, fmt, seed=needs.seed), cache, needs.seed).loss_stored()
        x = generate(case, fmt, seed=needs.seed)
    except NotApplicable:
        return True  # nothing to compute
    return cache.stored(cache.key(x, fmt))


def baseline_name(candidates: list[CandidateInfo], failures: list[LoadFailure], target: str) -> str:
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
    return unique_names(candidates), failures


def load_failure_record(f: LoadFailure) -> Record:
    name = Path(f.target).stem if not f.target.startswith("builtin:") else f.target
    if f.unavailable:
        return Record(candidate=name, target=f.target, op="import", dtype="-", case="-", family="-",
                      verdict=SKIP, reasons=[f.reason])
    return Record(candidate=name, target=f.target, op="import", dtype="-", case="-", family="-",
                  verdict=FAIL, reasons=[f.reason], error=f.reason)


class NothingToAudit(BadInput):
    """The targets, ops, formats and cases leave no combination to judge (bad input, exit 2)."""


def unique_names(candidates: list[CandidateInfo]) -> list[CandidateInfo]:
    """Give candidates that share a name (two files called impl.py) distinct names: record ids stay unique."""
    seen: dict[str, int] = {}
    for c in candidates:
        seen[c.name] = seen.get(c.name, 0) + 1
    return [dataclasses.replace(c, name=f"{c.name}@{c.target}") if seen[c.name] > 1 else c for c in candidates]
