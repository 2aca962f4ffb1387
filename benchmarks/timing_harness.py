"""softaudit's timing harness against an independent measurement: torch.utils.benchmark.

For builtin:torch's softmax (forward and backward) and cross-entropy forward at a few
shapes, times the same call both ways, in this process:

* softaudit: ``SpeedMeter.measure`` (warm-up, repetitions to a stable median, arguments
  rotated through copies that exceed the last-level cache);
* torch: ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`` on the
  same prepared call (softaudit.speed.prepare) with the same rotation of argument copies,
  its median taken over blocks of calls;

and prints both medians and their ratio (softaudit / torch): the comparison isolates the
harness (clock, warm-up, statistics). Usage:

    python benchmarks/timing_harness.py [--shapes 1024x32000 64x262144] [--format float32]
        [--min-run-time SECONDS]
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as tb

from softaudit import timing
from softaudit.candidates import load_target
from softaudit.formats import FORMATS
from softaudit.speed import SpeedMeter, bench_arrays, prepare
from softaudit.timing import parse_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4096x1024", "1024x32000", "64x262144"])
    parser.add_argument("--format", default="float32", choices=list(FORMATS))
    parser.add_argument("--min-run-time", type=float, default=1.0, help="torch Timer's blocked_autorange budget (s)")
    args = parser.parse_args()
    cand = load_target("builtin:torch")[0]
    meter = SpeedMeter()
    print(f"last-level cache: {meter.cache_bytes >> 20} MiB; format {args.format}")
    print(f"{'op':<14} {'direction':<9} {'shape':<11} {'softaudit ms':>12} {'torch ms':>9} {'ratio':>6}")
    for text in args.shapes:
        rows, n = parse_shape(text)
        for op, direction in (("softmax", "forward"), ("softmax", "backward"), ("cross_entropy", "forward")):
            ours = meter.measure(cand, op, direction, args.format, rows, n)
            arrays = bench_arrays(op, direction, FORMATS[args.format], rows, n)
            copies = timing.rotation(sum(a.nbytes for a in arrays.values()), meter.cache_bytes)
            call, _ = prepare(cand, op, direction, arrays, copies)
            state = {"i": 0}

            def rotated() -> None:
                call(state["i"] % copies)
                state["i"] += 1

            # Timer runs single-threaded unless told otherwise; the harness uses torch's default pool.
            theirs = tb.Timer(stmt="rotated()", globals={"rotated": rotated},
                              num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=args.min_run_time)
            ratio = ours["median_s"] / theirs.median
            print(f"{op:<14} {direction:<9} {text:<11} {ours['median_s'] * 1e3:>12.3f} {theirs.median * 1e3:>9.3f} "
                  f"{ratio:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
