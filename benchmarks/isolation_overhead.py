"""Cost of running candidates in a worker process, on the full default audit.

Runs `softaudit run TARGET` through the Python API with a warm reference cache,
alternating isolated (worker process) and in-process runs, and prints the median
wall time of each and their ratio. Usage:

    python benchmarks/isolation_overhead.py [TARGET] [--repeats N]

The reference cache is warmed first, so the figures measure calls, checks and
metrics, not mpmath.
"""

from __future__ import annotations

import argparse
import statistics
import time

from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.loop import run_audit


def timed(target: str, isolated: bool) -> tuple[float, int]:
    started = time.perf_counter()
    result = run_audit([target], AuditOptions(worker=WorkerOptions(isolated=isolated)))
    return time.perf_counter() - started, len(result.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="examples/seed_numpy.py")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    _, records = timed(args.target, isolated=False)  # warms the reference cache
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for isolated in (True, False):
            runs[isolated].append(timed(args.target, isolated)[0])
    iso, inproc = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"target: {args.target}, {records} records, {args.repeats} runs each (warm reference cache)")
    print(f"in-process (--no-isolation): median {inproc:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in runs[False])})")
    print(f"worker process (default):    median {iso:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in runs[True])})")
    print(f"isolation overhead: {iso - inproc:+.2f} s, ratio {iso / inproc:.2f}x")


if __name__ == "__main__":
    main()
