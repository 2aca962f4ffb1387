"""The timing harness's arithmetic: repetitions, quartiles, cache rotation and byte counts.

What a measurement is worth on a real device is checked against torch.utils.benchmark by
benchmarks/timing_harness.py (a benchmark, not a test: this machine is shared and noisy).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from softaudit.runner import timing


def _clock_of(durations: list[float]):
    """A clock that runs the thunk and reports the next scripted duration."""
    it = iter(durations)

    def clock(thunk):
        thunk()
        return next(it)

    return clock


def test_measure_warms_up_then_reports_median_and_quartiles_of_the_timed_calls():
    calls: list[int] = []
    durations = [0.2, 0.2, 0.2] + [0.1, 0.2, 0.3, 0.4, 0.5] + [0.3] * 100
    t = timing.measure(calls.append, clock=_clock_of(durations), copies=3, min_seconds=0.0, min_repeats=5)
    assert calls[:3] == [0, 1, 2]  # the warm-up calls, untimed: one on each copy
    assert t.repeats == 5
    assert t.median_s == pytest.approx(0.3)
    assert (t.q1_s, t.q3_s) == (pytest.approx(0.2), pytest.approx(0.4))
    assert calls == [0, 1, 2, 0, 1, 2, 0, 1]  # the argument copies taken in turn


def test_measure_repeats_until_the_time_adds_up_and_stops_at_the_cap():
    t = timing.measure(lambda i: None, clock=_clock_of([0.001] * 1000), min_seconds=0.02, max_repeats=50)
    assert t.repeats == 20  # 20 x 1 ms reach 0.02 s, and equal samples are stable
    noisy = [0.001, 0.003] * 500
    t = timing.measure(lambda i: None, clock=_clock_of(noisy), min_seconds=0.004, max_repeats=50)
    assert t.repeats == 6  # unstable (IQR 2 ms on a 2 ms median): on until 3 x min_seconds (0.012 s)
    t = timing.measure(lambda i: None, clock=_clock_of(noisy), min_seconds=10.0, max_repeats=50)
    assert t.repeats == 50


def test_rotation_spans_twice_the_cache_with_small_arguments_and_one_copy_of_big_ones():
    mb = 1 << 20
    assert timing.rotation(16 * mb, 32 * mb) == 4
    assert timing.rotation(100 * mb, 32 * mb) == 1
    assert timing.rotation(1024, 32 * mb) == 64  # capped
    assert timing.rotation(0, 32 * mb) == 1


def test_last_level_cache_is_read_from_sysfs(tmp_path: Path):
    for index, size in ((0, "32K"), (2, "512K"), (3, "32768K")):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert timing.last_level_cache_bytes(tmp_path) == 32 << 20
    assert timing.last_level_cache_bytes(tmp_path / "missing") == timing.DEFAULT_LLC_BYTES


@pytest.mark.parametrize("op, direction, expected", [
    ("softmax", "forward", 2 * 4 * 1000),
    ("log_softmax", "backward", 3 * 4 * 1000),
    ("logsumexp", "forward", 4 * 1000 + 4 * 10),
    ("logsumexp", "backward", 2 * 4 * 1000 + 2 * 4 * 10),
    ("cross_entropy", "forward", 4 * 1000 + 8 * 10 + 4 * 10),
    ("cross_entropy", "backward", 2 * 4 * 1000 + 8 * 10 + 4 * 10),
])
def test_bytes_moved_counts_each_array_once(op: str, direction: str, expected: int):
    assert timing.bytes_moved(op, direction, rows=10, n=100, itemsize=4) == expected


def test_long_calls_get_one_warm_up_and_three_timed_calls():
    calls: list[int] = []
    t = timing.measure(calls.append, clock=_clock_of([2.0, 1.0, 1.1, 0.9] + [1.0] * 10))
    assert len(calls) == 4  # one warm-up (2 s is warm-up enough), three timed
    assert t.repeats == 3 and t.median_s == pytest.approx(1.0)
    t = timing.measure(lambda i: None, clock=_clock_of([2.0, 0.5, 3.0, 1.0] + [1.0] * 10))
    assert t.repeats == 3  # however unstable: a long call is not repeated to a stable median
