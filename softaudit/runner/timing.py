"""Timing a call the way kernel authors judge it: against the memory-bandwidth limit.

Softmax-family ops are memory-bound: a call cannot beat the time it takes to read its
inputs and write its outputs. :func:`measure` times a call (warm-up, then repetitions until
the median is stable, the interquartile range reported); :func:`bytes_moved` counts what one
call must read and write; :func:`copy_bandwidth` measures the device's own limit, a copy of
the same number of bytes, in the same process and run, so the percentage of it a candidate
reaches compares like with like.

Caches: a call whose arguments fit in the last-level cache would be timed from cache after
the first repetition. :func:`rotation` says how many independent copies of the arguments to
cycle through so that each repetition reads memory another copy evicted (their total at
least twice the cache); long rows already exceed it and get one copy.

Clocks: ``time.perf_counter`` around the call on a CPU; on a GPU, CUDA events recorded on the
stream around the call, then a synchronisation (:func:`cuda_clock`).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WARMUP_CALLS = 2
"""Untimed calls first (and one on every copy of the arguments): allocator, caches of the
library (torch's kernels, numpy's buffers), pages touched for the first time."""

MIN_REPEATS = 5
"""Timed calls at least (a median of fewer is one noisy sample)."""

MAX_REPEATS = 50
"""Timed calls at most."""

MIN_SECONDS = 1.0
"""Keep repeating (up to MAX_REPEATS) until the timed calls add up to this: short calls get
many repetitions, long ones MIN_REPEATS. At 0.3 s, a burst of other work on a shared 2-core
machine could cover every sample of a 100 ms call (benchmarks/timing_harness.py: ratios from
0.72 to 3.2 over three runs); a second of samples dilutes bursts in the median. Calls of
LONG_CALL_S or more stop at MIN_REPEATS_LONG regardless."""

STABLE_IQR = 0.1
"""Stop (after MIN_SECONDS) once the interquartile range is within this fraction of the
median; otherwise repeat to MAX_REPEATS or MAX_SECONDS_FACTOR x MIN_SECONDS, whichever comes first."""

MAX_SECONDS_FACTOR = 3.0
"""An unstable call is timed for at most this many times MIN_SECONDS (3 s)."""

LONG_CALL_S = 0.25
"""A call at least this long is its own warm-up after one untimed call, and needs only
MIN_REPEATS_LONG timed calls: a full-size CPU audit times hundreds of such calls."""

MIN_REPEATS_LONG = 3

DEFAULT_LLC_BYTES = 32 << 20
"""Last-level cache assumed where the OS does not say (a large desktop or server CPU's L3)."""


@dataclass
class Timing:
    """The figures of one measured call."""

    median_s: float
    q1_s: float
    q3_s: float
    repeats: int

    @property
    def iqr_s(self) -> float:
        """The interquartile range of the timed calls, in seconds."""
        return self.q3_s - self.q1_s


Clock = Callable[[Callable[[], Any]], float]
"""Runs a thunk once and returns its duration in seconds."""


def cpu_clock(thunk: Callable[[], Any]) -> float:
    """perf_counter around the call (CPU work is done when it returns)."""
    start = time.perf_counter()
    thunk()
    return time.perf_counter() - start


def cuda_clock(torch: Any) -> Clock:
    """A clock of CUDA events around the call on the current stream, read after synchronising
    (the call returns when its kernels are queued, not run)."""

    def clock(thunk: Callable[[], Any]) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        _keep_busy(torch)  # the GPU is still busy when the call's kernels are queued: no launch gap timed
        start.record()
        thunk()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    return clock


SPIN_CYCLES = 200_000
"""Before each CUDA-timed call the GPU spins this many cycles (about 0.1 ms at 2 GHz;
``torch.cuda._sleep``), so that the start event is recorded behind work still queued and the
call's kernels are queued before the GPU reaches it: the time between the start event and the
first kernel is then the GPU's, not the host's launch latency (Triton's Python launcher takes
tens of microseconds; a 0.3 ms kernel timed from an idle GPU would carry it)."""


def _keep_busy(torch: Any) -> None:
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        sleep(SPIN_CYCLES)


def measure(call: Callable[[int], Any], clock: Clock = cpu_clock, copies: int = 1,
            warmup: int = WARMUP_CALLS, min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS,
            min_seconds: float = MIN_SECONDS) -> Timing:
    """Time ``call(i)`` (i: which copy of the arguments to use, cycling through ``copies``): ``warmup``
    untimed calls (one for a long call), then timed ones until ``min_repeats`` of them add up to
    ``min_seconds`` and their IQR is within STABLE_IQR of the median, or MAX_SECONDS_FACTOR x
    min_seconds have passed, or ``max_repeats`` calls were made; a long call gets MIN_REPEATS_LONG."""
    i = 0
    while i < max(warmup, copies):  # every copy once at least: its pages touched, its caches warm
        t = clock(functools.partial(call, i % copies))
        i += 1
        if t >= LONG_CALL_S:
            break
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_repeats:
        t = clock(functools.partial(call, i % copies))
        samples.append(t)
        total += t
        i += 1
        if samples[0] >= LONG_CALL_S:  # a long call: a few samples, whatever they add up to
            if len(samples) >= min(min_repeats, MIN_REPEATS_LONG):
                break
            continue
        if len(samples) < min_repeats or total < min_seconds:
            continue
        q1, med, q3 = _quartiles(samples)
        if q3 - q1 <= STABLE_IQR * med or total >= MAX_SECONDS_FACTOR * min_seconds:
            break
    q1, med, q3 = _quartiles(samples)
    return Timing(med, q1, q3, len(samples))


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, med, q3


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest CPU cache the OS reports (Linux sysfs), else DEFAULT_LLC_BYTES."""
    best = 0
    for size_file in root.glob("index*/size"):
        try:
            text = size_file.read_text().strip().upper()
            factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * factor)
        except (OSError, ValueError):
            continue
    return best or DEFAULT_LLC_BYTES


def rotation(argument_bytes: int, cache_bytes: int) -> int:
    """How many copies of a call's arguments to cycle through so that none is still cached when
    its turn comes: enough for twice the cache, at least one, at most 64."""
    if argument_bytes <= 0:
        return 1
    return max(1, min(64, -(-2 * cache_bytes // argument_bytes)))


def bytes_moved(op: str, direction: str, rows: int, n: int, itemsize: int, reduced: bool = False) -> int:
    """The bytes one call must read and write at least (each array once), by op:

    ============================  ================================================
    softmax, log_softmax forward  read x, write y: 2 N s
    logsumexp forward             read x, write one value per row: (N + rows) s
    softmax, log_softmax backward read y and dy, write dx: 3 N s
    logsumexp backward            read x, y and dy (per row), write dx: (2 N + 2 rows) s
    cross_entropy forward         read logits and targets (int64), write the loss
                                  per row (or one value): N s + 8 rows + rows s (or s)
    cross_entropy backward        read logits, targets and the upstream gradient,
                                  write dlogits: 2 N s + 8 rows + rows s (or s)
    ============================  ================================================

    N = rows x n elements of s bytes. Index targets are assumed (probability targets add
    N s); what an implementation recomputes or stores besides (the forward's statistics for
    the backward) is its own cost, not the op's.
    """
    big = rows * n * itemsize
    per_row = itemsize if reduced else rows * itemsize
    if op in ("softmax", "log_softmax"):
        return 2 * big if direction == "forward" else 3 * big
    if op == "logsumexp":
        return big + rows * itemsize if direction == "forward" else 2 * big + 2 * rows * itemsize
    if op == "cross_entropy":
        return (big if direction == "forward" else 2 * big) + 8 * rows + per_row
    raise ValueError(f"unknown op {op!r}")
