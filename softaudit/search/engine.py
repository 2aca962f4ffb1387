"""``softaudit search``: hunt for the input on which one candidate's op fails, then make it small.

The search starts from the case library (every case that applies to the op, direction and format,
smallest first) and from random inputs, and explores by mutating the worst inputs found so far
(mutations.py): a small population, each child judged like any audited case and kept when it is
worse than the best ones. "Worse" is the reference engine's verdict, never float arithmetic: a
hard failure (wrong class, crash, input modified, an undefined row's policy broken) beats any
ratio, and otherwise the stability ratio (error over the envelope) is climbed.

When something fails, the worst input is shrunk (shrink.py) while it still fails the same way,
written into the corpus as a case file (cases/corpus.py), judged once more from that file (so the saved
case is known to reproduce it), and turned into a ``softaudit repro`` script.

Numbers that steer the search live here and in mutations.py / shrink.py, each with its reason.
docs/search.md documents the command.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from softaudit.candidates.loading import check_target
from softaudit.cases.corpus import FAMILY, content_digest, default_corpus_dir, save_case, with_corpus_dir
from softaudit.cases.inputs import NotApplicable, generate, loss_inputs
from softaudit.cases.model import Case, CaseError
from softaudit.cases.reader import case_from_table, load_cases
from softaudit.errors import BadInput
from softaudit.formats import FORMATS, Format
from softaudit.judging.unit import AuditUnit
from softaudit.judging.verdicts import FAIL, SKIP, Gate, fmt_num, rejected_undefined
from softaudit.options import CacheOptions, Naming, WorkerOptions, checked_search_options
from softaudit.reference import ReferenceCache, default_cache_dir
from softaudit.results.records import Record
from softaudit.runner.environment import check_device, environment
from softaudit.runner.isolation import CandidateInfo, Executor, make_executor
from softaudit.runner.loop import audit_record
from softaudit.runner.planning import expand_targets, load_targets
from softaudit.search.mutations import Trial, mutate, random_trial
from softaudit.search.shrink import ShrinkStats, shrink

DEFAULT_BUDGET = 60.0
"""Seconds of exploring by default: enough for a few hundred to a few thousand inputs on a CPU."""

MAX_ELEMENTS = 1 << 16
"""Random starts and mutants stay within this many elements, so each costs milliseconds to judge.
Library cases larger than this are still used as starting points (not mutated into larger ones)."""

POPULATION = 8
"""Inputs kept as parents: the worst found so far (by score)."""

PATIENCE = 300
"""After a failure is found, exploring stops when this many inputs in a row made the worst found
no worse by at least IMPROVEMENT (it is unlikely to climb further within the budget)."""

IMPROVEMENT = 1.1
"""A new worst must beat the old one's stability ratio by this factor to count as progress."""

LIBRARY_SHARE = 0.3
RANDOM_SHARE = 0.2
"""Of each step, the chance of judging the next library case and of a random start (while the
library lasts); the rest mutate a parent."""

RATIO_CLASS = "ratio"
MAX_ULP_CLASS = "max-ulp"
SOFT_CLASSES = (RATIO_CLASS, MAX_ULP_CLASS)
"""Failure classes that are a size of error rather than a wrong kind of answer."""

ProgressFn = Callable[[str, float, float, str], None]
"""progress(phase, elapsed seconds, budget seconds, best so far in words); phase is "explore"
or "shrink"."""


class SearchError(BadInput):
    """Bad input for a search (one line): an unknown op, a target that lacks it, a broken file."""


@dataclass
class SearchOptions:
    """Everything that shapes a search besides its target."""

    op: str
    direction: str = "forward"
    format: Format = FORMATS["float32"]
    budget: float = DEFAULT_BUDGET
    """Seconds of exploring; shrinking then takes at most as long again."""
    seed: int = 0
    gate: Gate = field(default_factory=Gate)
    candidate: str | None = None
    """Which candidate, when the target file defines several."""
    save_to: Path | None = None
    """The corpus directory; None: corpus.default_corpus_dir()."""
    cases_dirs: Sequence[Path] = ()
    """Extra case directories whose cases are starting points too (the corpus is always one)."""
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    max_elements: int = MAX_ELEMENTS
    patience: int = PATIENCE
    """Once an input fails on its ratio, exploring stops after this many inputs in a row that did
    not make the worst found worse by IMPROVEMENT (the budget still bounds it)."""


@dataclass
class Evaluation:
    """One judged input: its record, failure classes (most serious first) and score."""

    trial: Trial
    record: Record
    classes: tuple[str, ...]
    score: float
    """inf for a hard failure; else the stability ratio (0 when nothing could be measured)."""

    @property
    def failed(self) -> bool:
        return bool(self.classes)

    @property
    def hard(self) -> bool:
        return any(c not in SOFT_CLASSES for c in self.classes)

    def words(self) -> str:
        """How bad it is, in words: its hard failure, else its stability ratio."""
        return describe_class(self.classes[0]) if self.hard else f"stability ratio {fmt_num(self.score)}"


@dataclass
class SearchResult:
    """What a search found: the worst input, and when it failed its shrunk form and saved case."""

    target: str
    candidate: str
    options: SearchOptions
    evaluations: int
    explore_seconds: float
    library_starts: int
    random_starts: int
    worst: Evaluation | None
    """The worst input explored (before shrinking); None when nothing could be judged."""
    minimal: Evaluation | None = None
    """The shrunk failing input, judged from its saved case file; None when nothing failed."""
    failure: str | None = None
    """The failure class kept while shrinking (e.g. "finite->nan", "ratio")."""
    shrink_stats: ShrinkStats | None = None
    case_path: Path | None = None
    case_name: str | None = None
    case_new: bool = False
    """False when the corpus already held this case (found again)."""
    reproducer: str = ""
    """The ``softaudit repro`` script of the minimal input's record."""
    environment: dict = field(default_factory=dict)
    complete: bool = True
    """False when interrupted (Ctrl-C): what was found so far is reported, nothing is saved."""
    interrupted_by: int | None = None
    """The signal that interrupted it (set by the CLI, which catches it); SIGINT when not said."""
    intermittent: tuple[int, int] | None = None
    """(failed, tries) when the saved case did not fail every time it was judged again: the
    candidate fails only sometimes on the same input (a finding, not softaudit's error)."""

    @property
    def failing(self) -> Evaluation | None:
        """The failing input to report: the shrunk one, or, when interrupted before it was shrunk
        and saved, the worst failing input found so far."""
        if self.minimal is not None:
            return self.minimal
        if not self.complete and self.worst is not None and self.worst.failed:
            return self.worst
        return None

    @property
    def found(self) -> bool:
        return self.failing is not None

    @property
    def exit_code(self) -> int:
        """1 when a failing input was found, else 0; 128 + the signal's number when interrupted."""
        if not self.complete:
            return 128 + (self.interrupted_by or 2)
        return 1 if self.found else 0


# --------------------------------------------------------------------------
# Failure classes


def failure_classes(rec: Record, gate: Gate) -> tuple[str, ...]:
    """Why a record FAILed, as classes (most serious first): "error", "input-modified", the class
    mismatches "expected->got" by count, "undefined->BEHAVIOUR", "ratio", "max-ulp"."""
    if rec.verdict != FAIL:
        return ()
    out: list[str] = []
    if rec.error is not None:
        out.append("timeout" if "timed out" in rec.error else "error")
    if rec.input_modified:
        out.append("input-modified")
    m = rec.metrics
    if m is not None:
        out += [k for k, _ in sorted(m.mismatch_kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
        out += sorted({f"undefined->{b}" for b, *_ in rejected_undefined(m, gate.undefined_policy)})
        if m.max_ratio is not None and m.max_ratio > gate.ratio_limit:
            out.append(RATIO_CLASS)
        if gate.max_ulp is not None and m.max_ulp is not None and m.max_ulp > gate.max_ulp:
            out.append(MAX_ULP_CLASS)
    return tuple(out) or ("fail",)


def describe_class(cls: str) -> str:
    """A failure class in words."""
    if "->" in cls and not cls.startswith("undefined"):
        expected, got = cls.split("->")
        return f"{got.replace('nan', 'NaN')} where the exact value is {expected}"
    if cls.startswith("undefined->"):
        return f"{cls.split('->')[1]} values on an undefined row, which the policy rejects"
    return {"error": "the call raised or crashed", "timeout": "the call timed out",
            "input-modified": "the input was modified", RATIO_CLASS: "error above the stability-ratio limit",
            MAX_ULP_CLASS: "error above the --max-ulp limit"}.get(cls, cls)


def _score(rec: Record, classes: tuple[str, ...]) -> float:
    if rec.verdict == SKIP:
        return -math.inf
    if any(c not in SOFT_CLASSES for c in classes):
        return math.inf
    m = rec.metrics
    return float(m.max_ratio) if m is not None and m.max_ratio is not None else 0.0


# --------------------------------------------------------------------------
# Trials as cases


def case_table(t: Trial, op: str, direction: str, fmt: Format, name: str, description: str,
               seen_in: str = "") -> dict:
    """The ``[[case]]`` table of a trial: explicit values, explicit targets, upstream of ones, a
    fixed seed; nothing random is left, so it judges the same under any ``--seed``."""
    table: dict = {"name": name, "family": FAMILY, "description": description}
    if seen_in:
        table["seen_in"] = seen_in
    table.update({"ops": [op], "directions": [direction], "formats": [fmt.name], "seed": 0,
                  "values": "explicit", "data": [[float(v) for v in row] for row in t.x]})
    if len(t.x) == 1:
        table["rows"] = 1
    if op == "cross_entropy":
        assert t.target is not None
        table["target"] = [int(v) for v in t.target]
        if t.label_smoothing:
            table["label_smoothing"] = float(t.label_smoothing)
        if t.ignore_index is not None:
            table["ignore_index"] = int(t.ignore_index)
        if t.weight is not None:
            table["weight"] = [float(v) for v in t.weight]
        if t.reduction != "none":
            table["reduction"] = t.reduction
    if direction == "backward":
        table["upstream"] = "ones"
    return table


def case_name(table: dict, op: str, direction: str, fmt: Format) -> str:
    """``found-OP[-bwd]-FORMAT-HASH``: the content hash makes one name per distinct input."""
    digest = content_digest(table)[:12]
    return f"found-{op.replace('_', '-')}{'-bwd' if direction == 'backward' else ''}-{fmt.name}-{digest}"


def trial_of_case(case: Case, fmt: Format, seed: int, op: str) -> Trial | None:
    """A library case's input (and loss inputs) as a trial; None when it does not apply or its
    loss inputs cannot be written as a case of explicit values (probability targets)."""
    try:
        x = generate(case, fmt, seed=seed)
    except NotApplicable:
        return None
    t = Trial(np.asarray(x, dtype=np.float64), origin=f"library case {case.name}")
    if op != "cross_entropy":
        return t
    try:
        loss = loss_inputs(case, fmt, x, seed=seed)
    except NotApplicable:
        return None
    if loss.target_kind != "index" or loss.out_of_range:
        return None
    weight = None if loss.weight is None else tuple(float(v) for v in np.asarray(loss.weight, dtype=np.float64))
    return replace(t, target=tuple(int(v) for v in loss.target), label_smoothing=float(loss.label_smoothing),
                   ignore_index=loss.ignore_index, reduction=loss.reduction, weight=weight)


# --------------------------------------------------------------------------
# Judging


class Judge:
    """Judges trials with the audit's own machinery: the candidate called in the executor (a worker
    process unless isolation is off), the exact reference, the envelope and the verdict rules.

    References of mutants are computed in memory (thousands of throwaway inputs would swamp the
    disk cache); library cases and the saved case use the reference cache like any run.
    """

    def __init__(self, executor: Executor, candidate: CandidateInfo, options: SearchOptions) -> None:
        self.executor = executor
        self.candidate = candidate
        self.options = options
        self.gate = options.gate.for_record(options.op, options.format.name)
        directory = (options.cache.directory or default_cache_dir()) if options.cache.enabled else None
        self.disk = ReferenceCache(directory)
        self.memory = ReferenceCache(None)
        self.seen: dict[str, tuple[tuple[str, ...], float]] = {}
        self.count = 0

    def key(self, t: Trial) -> str:
        h = hashlib.sha256(np.ascontiguousarray(t.x).tobytes() + repr(t.shape).encode())
        h.update(repr((t.target, t.label_smoothing, t.ignore_index, t.reduction, t.weight)).encode())
        return h.hexdigest()

    def case(self, t: Trial, name: str = "search-input") -> Case | None:
        """The case a trial's record is filed under, with its loss keywords checked as a case file's
        are. Its values are left out (a constant stands in): the input itself is ``t.x``, and
        reading thousands of values through the case reader for every mutant would cost more than
        judging them. The saved case is read back whole and judged again (_shrink_and_save)."""
        o = self.options
        table = case_table(t, o.op, o.direction, o.format, name, "an input the search judged")
        del table["data"]
        table.update(values="constant", rows=t.shape[0], n=t.shape[1])
        try:
            return case_from_table(table)
        except CaseError:  # a move produced loss inputs no case may hold: not an input to judge
            return None

    def judge_case(self, case: Case, t: Trial, persistent: bool, from_case: bool = False) -> Evaluation | None:
        """Judge ``t`` (filed as ``case``); ``from_case``: generate the input from the case instead,
        as a later run will (the saved case)."""
        o = self.options
        if from_case:
            try:
                x = generate(case, o.format, seed=0)
            except NotApplicable:
                return None
        else:
            x = np.ascontiguousarray(t.x.astype(o.format.np_dtype))
        refs = (self.disk if persistent else self.memory).get_or_compute(x, o.format)
        unit = AuditUnit(case, o.format, x, refs, self.disk if persistent else self.memory, 0)
        rec = audit_record(self.executor, self.candidate, o.op, o.direction, unit, self.gate)
        self.count += 1
        classes = failure_classes(rec, self.gate)
        score = _score(rec, classes)
        if score == -math.inf:
            return None
        return Evaluation(t, rec, classes, score)

    def __call__(self, t: Trial, persistent: bool = False) -> Evaluation | None:
        """The evaluation of ``t``; None when it cannot be judged (the candidate skips it) or was
        judged before (a move that led back to a known input teaches nothing new)."""
        key = self.key(t)
        if key in self.seen:
            return None
        case = self.case(t)
        ev = self.judge_case(case, t, persistent) if case is not None else None
        self.seen[key] = (ev.classes, ev.score) if ev is not None else ((), -math.inf)
        return ev

    def verdict(self, t: Trial) -> tuple[tuple[str, ...], float]:
        """(classes, score) of ``t``, from the memo when it was judged before."""
        k = self.key(t)
        if k not in self.seen:
            self(t)
        return self.seen[k]


# --------------------------------------------------------------------------
# The search


NAMES = Naming(budget="the budget", patience="the patience")
"""How search's own checks name the options (the command line names them by their flags)."""


def _pick_candidate(candidates: list[CandidateInfo], options: SearchOptions, target: str) -> CandidateInfo:
    if options.candidate is not None:
        chosen = [c for c in candidates if c.name == options.candidate]
        if not chosen:
            raise SearchError(f"{target} defines no candidate named {options.candidate!r} "
                              f"(it defines {', '.join(c.name for c in candidates)})")
        candidates = chosen
    with_op = [c for c in candidates if options.op in c.ops]
    if not with_op:
        defined = sorted({op for c in candidates for op in c.ops})
        raise SearchError(f"{target} defines no {options.op} (it defines {', '.join(defined) or 'no op'})")
    if len(with_op) > 1:
        raise SearchError(f"{target} defines {len(with_op)} candidates with {options.op} "
                          f"({', '.join(c.name for c in with_op)}): choose one with --candidate NAME")
    c = with_op[0]
    if options.direction == "backward" and options.op not in c.backward:
        raise SearchError(f"{c.name}: {c.backward_missing.get(options.op, 'no backward pass')}")
    return c


def library_trials(options: SearchOptions, corpus: Path | None) -> list[Case]:
    """The library's cases that apply (and the corpus's), smallest first."""
    cases = load_cases(with_corpus_dir(options.cases_dirs, corpus))
    out = [c for c in cases if c.applies_to(options.op, options.format.name, options.direction)]
    return sorted(out, key=lambda c: (c.elements, c.name))


def search(target: str, options: SearchOptions, progress: ProgressFn | None = None,
           executor: Executor | None = None) -> SearchResult:
    """Explore for ``options.budget`` seconds, shrink the worst failing input, save it to the corpus.

    Bad input (unknown op, a target without it, a broken file, several candidates and none chosen)
    raises BadInput (an OptionError, SearchError, CandidateError or CaseError) before anything is
    judged. Ctrl-C ends the search early: the result says so and nothing is saved.
    """
    options = checked_search_options(options, NAMES)
    if options.worker.device != "auto":
        check_device(options.worker.device)
    corpus = options.save_to or default_corpus_dir()
    if corpus.exists() and not corpus.is_dir():
        raise SearchError(f"the corpus {str(corpus)!r} is not a directory (--save-to, 'corpus' in "
                          "[tool.softaudit] or $SOFTAUDIT_CORPUS_DIR names where found cases are saved)")
    if executor is None:
        for file, _ in expand_targets([target]):  # an unknown built-in, a missing file: before the worker
            check_target(file)
        w = options.worker
        executor = make_executor(w.isolated, w.rowwise, w.timeout, w.memory_limit, w.explicit_device)
    try:
        candidates, failures = load_targets(executor, [target])
        if failures:
            f = failures[0]
            raise SearchError(f"{target}: {f.reason}")
        candidate = _pick_candidate(candidates, options, target)
        judge = Judge(executor, candidate, options)
        result = _explore(target, candidate, options, judge, corpus, progress)
        if result.worst is not None and result.worst.failed and result.complete:
            _shrink_and_save(result, judge, corpus, progress)
    finally:
        executor.close()
    result.environment = environment(options.seed, options.worker.device)
    return result


def _explore(target: str, candidate: CandidateInfo, options: SearchOptions, judge: Judge, corpus: Path,
             progress: ProgressFn | None) -> SearchResult:
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 9]))
    fmt, loss = options.format, options.op == "cross_entropy"
    library = library_trials(options, corpus)
    population: list[Evaluation] = []
    worst: Evaluation | None = None
    stale = 0
    starts = {"library": 0, "random": 0}
    started = time.monotonic()
    deadline = started + options.budget
    complete = True

    def consider(ev: Evaluation | None) -> None:
        nonlocal worst, stale
        if ev is None:
            return
        better = worst is None or ev.score > worst.score * (IMPROVEMENT if worst.failed else 1.0) \
            or (ev.score == worst.score == math.inf and ev.trial.x.size < worst.trial.x.size)
        if worst is None or ev.score > worst.score:
            worst = ev
        stale = 0 if better else stale + 1
        population.append(ev)
        population.sort(key=lambda e: -e.score)
        del population[POPULATION:]

    try:
        while time.monotonic() < deadline:
            if worst is not None and (worst.hard or (worst.failed and stale >= options.patience)):
                break
            roll = rng.random()
            if library and (roll < LIBRARY_SHARE or not population):
                case = library.pop(0)
                t = trial_of_case(case, fmt, options.seed, options.op)
                if t is not None:
                    starts["library"] += 1
                    consider(judge(t, persistent=True))
            elif roll < LIBRARY_SHARE + RANDOM_SHARE or not population:
                starts["random"] += 1
                consider(judge(random_trial(rng, fmt, options.max_elements, loss)))
            else:
                parent = population[min(int(rng.exponential(2.0)), len(population) - 1)]
                child = mutate(rng, parent.trial, fmt, max(options.max_elements, parent.trial.x.size), loss)
                if child is not None:
                    consider(judge(child))
            if progress:
                progress("explore", time.monotonic() - started, options.budget, _best_words(worst, judge.count))
    except KeyboardInterrupt:
        complete = False
    return SearchResult(target=target, candidate=candidate.name, options=options, evaluations=judge.count,
                        explore_seconds=time.monotonic() - started, library_starts=starts["library"],
                        random_starts=starts["random"], worst=worst, complete=complete)


def _best_words(worst: Evaluation | None, count: int) -> str:
    if worst is None:
        return f"{count} inputs judged"
    return f"{count} inputs · worst: {worst.words()}"


def _shrink_and_save(result: SearchResult, judge: Judge, corpus: Path, progress: ProgressFn | None) -> None:
    """Shrink the worst input keeping its first failure class, save it, judge the saved file, and
    write the reproducer."""
    assert result.worst is not None
    o = result.options
    primary = result.worst.classes[0]
    result.failure = primary

    def still_fails(t: Trial) -> bool:
        classes, _ = judge.verdict(t)
        if progress:
            progress("shrink", time.monotonic() - shrink_started, o.budget, f"{t.shape[0]}x{t.shape[1]}")
        return primary in classes

    shrink_started = time.monotonic()
    try:
        small, stats = shrink(result.worst.trial, still_fails, o.format, o.budget)
    except KeyboardInterrupt:
        result.complete = False
        return
    result.shrink_stats = stats
    description = f"found by softaudit search: {o.op}{' backward' if o.direction == 'backward' else ''} " \
                  f"in {o.format.name} gives {describe_class(primary)}"
    table = case_table(small, o.op, o.direction, o.format, "x", description,
                       seen_in=f"softaudit search {result.target} (seed {o.seed})")
    table["name"] = case_name(table, o.op, o.direction, o.format)
    comment = (f"Found by softaudit search {result.target} --op {o.op} --direction {o.direction} "
               f"--dtype {o.format.name} --seed {o.seed}\nfrom {result.worst.trial.origin}; shrunk from "
               f"{result.worst.trial.shape[0]}x{result.worst.trial.shape[1]} to {small.shape[0]}x{small.shape[1]}.")
    path, new = save_case(table, corpus, comment)
    saved = load_cases([path], include_default=False)[0]
    regenerated = generate(saved, o.format, seed=0).astype(np.float64)
    if not np.array_equal(regenerated, small.x, equal_nan=True):
        raise SearchError(f"{path}: the saved case does not regenerate the failing input bit for bit; "
                          "please report this as a softaudit bug")
    ev = judge.judge_case(saved, small, persistent=True, from_case=True)
    if ev is None or primary not in ev.classes:
        # The same input judged again passed: the candidate fails only sometimes. That is a finding
        # (kept, with the rate seen), not a fault of the saved case, which is the same input.
        again = [judge.judge_case(saved, small, persistent=True, from_case=True) for _ in range(INTERMITTENT_TRIES)]
        failing = [e for e in again if e is not None and primary in e.classes]
        result.intermittent = (len(failing), INTERMITTENT_TRIES + 1)
        ev = failing[0] if failing else (ev or next((e for e in again if e is not None), None))
        if ev is None:
            raise SearchError(f"{path}: the saved case could not be judged again (the candidate skips it now)")
    result.minimal, result.case_path, result.case_name, result.case_new = ev, path, saved.name, new
    result.reproducer = _reproducer(result, ev.record, corpus)


INTERMITTENT_TRIES = 9
"""How many more times a saved case that passed when judged again is judged, to measure how often
the candidate fails on it (10 judgings in all)."""


def _reproducer(result: SearchResult, record: Record, corpus: Path) -> str:
    """The ``softaudit repro`` script of the saved case's record."""
    from softaudit.options import AuditOptions
    from softaudit.repro import repro_script
    from softaudit.results.schema import document_of
    from softaudit.runner.loop import AuditResult

    o = result.options
    options = AuditOptions(ops=[o.op], directions=[o.direction], formats=[o.format], cases_dirs=[corpus],
                           seed=0, gate=o.gate, worker=WorkerOptions(rowwise=o.worker.rowwise, device=o.worker.device))
    audit = AuditResult(records=[record], candidates=[], options=options, environment=environment(0, o.worker.device),
                        seconds=0.0, cache_hits=0, cache_misses=0)
    return repro_script(document_of(audit), record.id)


__all__ = ["SearchError", "SearchOptions", "SearchResult", "Evaluation", "search", "failure_classes",
           "describe_class"]
