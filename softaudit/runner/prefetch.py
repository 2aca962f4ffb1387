"""Reference computation in worker processes (``--jobs N``), overlapping the audit's main loop.

The audit's main loop (softaudit.runner.loop.run_audit) walks the (format, case) units in order: it
generates a unit's input, calls every candidate on it (each in its isolated worker) and
judges the outputs against the references. Before the loop starts, every unit whose
references the cache lacks is submitted to a pool of N - 1 processes, last unit first,
while the main loop works from the first: when it reaches a unit a worker has finished
or is computing, it takes (or waits for) the result; a unit no worker has started it
withdraws and computes itself. So with N jobs, N processes compute references and the
main loop calls candidates and judges in between: on a cold cache the references are
most of an audit's time.

Workers compute exactly what the main loop would (the same judging.unit.AuditUnit methods, the
same cache keys), store it in the disk cache when there is one, and hand it back; the
main loop finds it in ReferenceCache.memory. With one job nothing is submitted and the
main loop computes as before.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from softaudit.cases.model import Case
from softaudit.cases.reader import load_cases
from softaudit.formats import Format, get_format
from softaudit.judging.unit import AuditUnit
from softaudit.reference import ReferenceCache


def default_jobs() -> int:
    """The machine's cores (those this process may use, where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


MIN_UNITS = 8
"""Fewer units to compute than this and no worker starts: a spawned worker takes about a second
to import numpy, mpmath and softaudit, more than a few units' references cost."""

CLOSE_GRACE = 2.0
"""Seconds a worker has to end after SIGTERM before it is killed."""


@dataclass(frozen=True)
class UnitNeeds:
    """What one unit's references are: the input's, and which ops need a gradient. The case
    travels by name (with the case directories the audit loaded): Case objects do not pickle."""

    case_name: str
    cases_dirs: tuple[str, ...]
    fmt_name: str
    seed: int
    backward_ops: tuple[str, ...]
    loss_forward: bool


@functools.lru_cache(maxsize=4)
def _library(cases_dirs: tuple[str, ...]) -> dict[str, Case]:
    return {c.name: c for c in load_cases([Path(d) for d in cases_dirs])}


class _RecordingCache(ReferenceCache):
    """A ReferenceCache that also remembers what it computed, to hand back to the main process."""

    def __init__(self, directory: Path | None) -> None:
        super().__init__(directory)
        self.computed: list[tuple[str, object]] = []

    def get_or_compute(self, x, fmt):
        misses = self.misses
        ref = super().get_or_compute(x, fmt)
        if self.misses > misses:
            self.computed.append((self.key(x, fmt), ref))
        return ref

    def get_or_compute_ops(self, kind, parts, fmt, compute):
        misses = self.misses
        value = super().get_or_compute_ops(kind, parts, fmt, compute)
        if self.misses > misses:
            self.computed.append((self.ops_key(kind, parts, fmt), value))
        return value


def unit_references(needs: UnitNeeds, cache_dir: str | None) -> tuple[list[tuple[str, object]], int]:
    """Compute (and store) every reference of one unit, as the main loop would ask for them; and
    how many cache entries it found damaged (recomputed)."""
    from softaudit.cases.inputs import generate, upstream

    fmt = get_format(needs.fmt_name)
    case = _library(needs.cases_dirs)[needs.case_name]
    cache = _RecordingCache(Path(cache_dir) if cache_dir else None)
    if case.linear:
        _linear_references(case, fmt, needs, cache)
        return cache.computed, cache.damaged
    x = generate(case, fmt, seed=needs.seed)
    unit = AuditUnit(case, fmt, x, cache.get_or_compute(x, fmt), cache, needs.seed)
    rows, n = x.shape
    if needs.loss_forward:
        unit.loss_reference()
    for op in needs.backward_ops:
        if op == "cross_entropy":
            loss = unit.loss()
            if loss.out_of_range:
                continue
            shape: tuple[int, ...] = (rows,) if loss.reduction == "none" else ()
            unit.gradient(op, upstream(case, fmt, shape, seed=needs.seed), loss)
        else:
            shape = (rows,) if op == "logsumexp" else (rows, n)
            unit.gradient(op, upstream(case, fmt, shape, seed=needs.seed), None)
    return cache.computed, cache.damaged


def _linear_references(case: Case, fmt: Format, needs: UnitNeeds, cache: ReferenceCache) -> None:
    """A linear_cross_entropy unit's loss and gradient references, as the audit asks for them of a
    candidate that takes the case's reduction (softaudit.runner.linear_loop)."""
    from softaudit.cases.inputs import upstream
    from softaudit.cases.linear_inputs import linear_inputs
    from softaudit.judging.linear_rules import LinearUnit

    inp = linear_inputs(case, fmt, seed=needs.seed)
    unit = LinearUnit(case, fmt, inp, cache, needs.seed)
    if needs.loss_forward:
        unit.loss_reference()
    if needs.backward_ops:
        shape: tuple[int, ...] = (inp.tokens,) if inp.reduction == "none" else ()
        unit.gradients(upstream(case, fmt, shape, seed=needs.seed), inp.reduction)


def _stop_quietly(signum: int, frame) -> None:
    """SIGTERM in a prefetch worker: delete the cache file being written (so no tmp file is left)
    and exit at once, without a traceback. Raising into the interrupted code instead could land
    inside zipfile, whose half-open archive then fails to close and prints a traceback."""
    from softaudit.reference.cache import remove_unfinished_writes

    remove_unfinished_writes()
    os._exit(0)


def worker_signals() -> None:
    """A prefetch worker's signal handling: Ctrl-C ignored (the main process stops the workers),
    SIGTERM unwinds quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_quietly)


def _worker(todo: list[UnitNeeds], cache_dir: str | None, lock, front, back, results) -> None:
    """Take units from the back of ``todo`` until it meets the main loop's front; send each
    unit's (index, computed entries), or (index, None) when it raised. Ctrl-C is the main
    process's to handle (it stops the workers); SIGTERM unwinds quietly."""
    worker_signals()
    while True:
        with lock:
            j = back.value
            if j < front.value:
                return
            back.value = j - 1
        try:
            results.put((j, unit_references(todo[j], cache_dir)))
        except Exception:
            results.put((j, None))


class Prefetcher:
    """Computes the references of the units the cache lacks in worker processes, from the last
    unit backward, while the main loop works forward; ``wait(unit)`` settles who computes a unit."""

    def __init__(self, cache: ReferenceCache, jobs: int) -> None:
        self.cache = cache
        self.jobs = jobs
        self._index: dict[tuple[str, str], int] = {}
        self._done: dict[int, tuple[list, int] | None] = {}
        self._procs: list = []
        self.units_from_workers = 0
        """Units whose references a worker computed and handed over."""

    def start(self, units: Sequence[tuple[Format, Case, UnitNeeds]],
              missing: Callable[[Case, UnitNeeds], bool]) -> int:
        """Start jobs - 1 workers on the units (format, case, needs), in the main loop's
        order, whose references ``missing`` says the cache lacks. Returns how many units that is."""
        todo = [(fmt, case, needs) for fmt, case, needs in units if missing(case, needs)]
        if self.jobs <= 1 or len(todo) < MIN_UNITS:
            return 0
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        self._lock = ctx.Lock()
        self._front = ctx.Value("i", 0, lock=False)
        self._back = ctx.Value("i", len(todo) - 1, lock=False)
        self._results = ctx.Queue()
        self._index = {(fmt.name, case.name): i for i, (fmt, case, _) in enumerate(todo)}
        cache_dir = str(self.cache.directory) if self.cache.directory is not None else None
        needs = [n for _, _, n in todo]
        for _ in range(min(self.jobs - 1, len(todo))):
            proc = ctx.Process(target=_worker, args=(needs, cache_dir, self._lock, self._front, self._back,
                                                     self._results), daemon=True)
            proc.start()
            self._procs.append(proc)
        return len(todo)

    def wait(self, fmt: Format, case: Case) -> None:
        """Before the main loop computes a unit: claim it when no worker has, else wait for the
        worker's result and hand it to the cache. A worker's failure is not fatal: the main loop
        then computes the unit itself (and reports any error there)."""
        i = self._index.get((fmt.name, case.name))
        if i is None:
            return
        with self._lock:
            if i <= self._back.value:
                self._front.value = max(self._front.value, i + 1)
                return  # the main loop's
        while i not in self._done:
            try:
                j, items = self._results.get(timeout=0.5)
            except queue.Empty:
                if any(proc.is_alive() for proc in self._procs):
                    continue
                self._drain()
                if i not in self._done:
                    return  # the worker that took it died (killed, out of memory): computed here
                continue
            self._done[j] = items
        done = self._done.pop(i)
        if done is None:
            return
        items, damaged = done
        self.units_from_workers += 1
        self.cache.damaged += damaged
        for key, value in items:
            self.cache.memory[key] = value

    def _drain(self) -> None:
        """Read what exited workers left in the queue."""
        while True:
            try:
                j, items = self._results.get(timeout=0.2)
            except queue.Empty:
                return
            self._done[j] = items

    def close(self) -> None:
        """End the workers: SIGTERM, then SIGKILL for one still there after a moment (a worker
        blocked flushing its result queue, which nobody reads any more, never ends by itself)."""
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(CLOSE_GRACE)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs = []
