"""--jobs: references computed in worker processes give the same audit as one process."""

from __future__ import annotations

import subprocess
import sys

from softaudit.cases.reader import load_cases
from softaudit.formats import FORMATS
from softaudit.options import AuditOptions, CacheOptions, WorkerOptions
from softaudit.reference import ReferenceCache
from softaudit.runner.loop import run_audit
from softaudit.runner.prefetch import Prefetcher, UnitNeeds, default_jobs, unit_references

CASES = ["gap-*", "mask-all-but-one", "confident-0.9", "ce-ignore-padding-mean", "ce-prob-masked", "vocab-50257"]


def _summary(result):
    return sorted((r.candidate, r.op, r.direction, r.dtype, r.case, r.verdict,
                   None if r.metrics is None else r.metrics.max_ulp) for r in result.records)


SLOW_SOFTMAX = """import time
import numpy as np

def softmax(x):
    time.sleep(0.05)  # a slow kernel: the main loop lags, so a prefetching worker surely gets ahead
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""


def test_two_jobs_give_the_same_records_as_one(tmp_path):
    slow = tmp_path / "slow_softmax.py"
    slow.write_text(SLOW_SOFTMAX)
    targets = ["builtin:shifted", str(slow)]
    options = dict(formats=[FORMATS["float32"], FORMATS["bfloat16"]], case_patterns=CASES, worker=WorkerOptions(isolated=False))
    one = run_audit(targets, AuditOptions(jobs=1, cache=CacheOptions(directory=tmp_path / "one"), **options))
    two = run_audit(targets, AuditOptions(jobs=2, cache=CacheOptions(directory=tmp_path / "two"), **options))
    assert _summary(one) == _summary(two)
    assert len(one.records) > 50
    # Every reference was computed once in each run (by a worker or the main loop), none found cached.
    assert two.cache_hits == one.cache_hits == 0
    assert two.cache_misses == one.cache_misses
    assert one.prefetched_units == 0 and two.prefetched_units >= 1  # a worker did take part
    # The workers wrote the cache too: a third run finds everything.
    again = run_audit(targets, AuditOptions(jobs=2, cache=CacheOptions(directory=tmp_path / "two"), **options))
    assert again.cache_misses == 0 and _summary(again) == _summary(one)


def test_jobs_without_a_disk_cache_hand_references_over_in_memory(tmp_path):
    options = dict(formats=[FORMATS["float16"]], case_patterns=CASES, worker=WorkerOptions(isolated=False))
    one = run_audit(["builtin:shifted"], AuditOptions(jobs=1, cache=CacheOptions(enabled=False), **options))
    two = run_audit(["builtin:shifted"], AuditOptions(jobs=3, cache=CacheOptions(enabled=False), **options))
    assert _summary(one) == _summary(two)


def test_a_worker_computes_a_unit_as_the_main_loop_would(tmp_path):
    case = next(c for c in load_cases() if c.name == "confident-0.9")
    needs = UnitNeeds(case.name, (), "float32", 0, ("softmax", "cross_entropy"), True)
    computed, damaged = unit_references(needs, str(tmp_path))
    assert len(computed) == 4 and damaged == 0  # forward, loss, and two gradients
    cache = ReferenceCache(tmp_path)
    assert all(cache.stored(key) for key, _ in computed)


def test_the_main_loop_takes_units_no_worker_has_started():
    cache = ReferenceCache(None)
    prefetcher = Prefetcher(cache, jobs=1)
    assert prefetcher.start([], lambda case, needs: True) == 0  # one job: nothing in the background
    assert default_jobs() >= 1


def test_bad_jobs_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "softaudit", "run", "builtin:shifted", "--jobs", "0", "--no-config"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--jobs must be between 1 and 1024" in proc.stderr
    (tmp_path / "pyproject.toml").write_text("[tool.softaudit]\ntargets = ['builtin:shifted']\njobs = 'many'\n")
    proc = subprocess.run([sys.executable, "-m", "softaudit", "run"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "jobs" in proc.stderr and "Traceback" not in proc.stderr


def test_a_unit_whose_worker_died_is_computed_by_the_main_loop():
    """A worker killed with a unit in hand must not hang the audit: the main loop takes it back."""
    import time

    from softaudit.formats import FORMATS as F

    small = [c for c in load_cases() if c.name.startswith("gap-")][:7]
    big = next(c for c in load_cases() if c.name == "vocab-128256")  # float64: tens of seconds in mpmath
    cases = [*small, big]
    units = [(F["float64"], c, UnitNeeds(c.name, (), "float64", 0, (), False)) for c in cases]
    prefetcher = Prefetcher(ReferenceCache(None), jobs=2)
    assert prefetcher.start(units, lambda case, needs: True) == 8
    deadline = time.monotonic() + 60
    while prefetcher._back.value == 7 and time.monotonic() < deadline:  # until the worker takes the big unit
        time.sleep(0.05)
    assert prefetcher._back.value < 7
    for proc in prefetcher._procs:
        proc.kill()
        proc.join()
    started = time.monotonic()
    for fmt, case, _ in units:  # each returns: claimed by the main loop, or its worker found dead
        prefetcher.wait(fmt, case)
    assert time.monotonic() - started < 10
    assert prefetcher.units_from_workers == 0  # nothing came back from the killed worker
    prefetcher.close()


def test_a_prefetch_worker_computes_a_linear_units_loss_and_gradients(tmp_path):
    """linear_cross_entropy units are prefetched too: a worker stores the loss and the gradient
    references the audit will ask for, and the unit then reads as cached."""
    from pathlib import Path

    from softaudit.runner.planning import is_cached

    fixtures = str(Path(__file__).parent / "fixtures" / "linear_cases")
    (case,) = [c for c in load_cases([Path(fixtures)]) if c.name == "lce-diag-small"]
    needs = UnitNeeds("lce-diag-small", (fixtures,), "bfloat16", 0, ("linear_cross_entropy",), True)
    cache = ReferenceCache(tmp_path)
    assert not is_cached(cache, case, needs)
    computed, damaged = unit_references(needs, str(tmp_path))
    assert damaged == 0 and len(computed) == 2  # the loss's entry and the gradients' entry
    assert is_cached(cache, case, needs)
    again, _ = unit_references(needs, str(tmp_path))
    assert again == []  # read back, nothing recomputed
