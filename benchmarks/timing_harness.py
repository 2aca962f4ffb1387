"""softaudit's timing harness against an independent measurement: torch.utils.benchmark.

For builtin:torch's softmax (forward and backward) and cross-entropy forward at a few
shapes, times the same call both ways, in this process:

* softaudit: ``SpeedMeter.measure`` (warm-up, repetitions to a stable median, arguments
  rotated through copies that exceed the last-level cache);
* torch: ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`` on the
  same prepared call (softaudit.runner.speed.prepare) with the same rotation of argument copies,
  its median taken over blocks of calls;

and prints both medians and their ratio (softaudit / torch): the comparison isolates the
harness (clock, warm-up, statistics). Each point is measured in ``--rounds`` interleaved rounds
(ours, then torch's); the medians over the rounds are printed, then each round's ratio. Usage:

    python benchmarks/timing_harness.py [--shapes 1024x32000 64x262144] [--format float32]
        [--min-run-time SECONDS] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as tb

from softaudit.candidates.loading import load_target
from softaudit.formats import FORMATS
from softaudit.runner import timing
from softaudit.runner.speed import SpeedMeter, bench_arrays, parse_shape, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4096x1024", "1024x32000", "64x262144"])
    parser.add_argument("--format", default="float32", choices=list(FORMATS))
    parser.add_argument("--min-run-time", type=float, default=1.0, help="torch Timer's blocked_autorange budget (s)")
    parser.add_argument("--rounds", type=int, default=3, help="ours-then-torch rounds per point; the ratio's median is shown")
    args = parser.parse_args()
    cand = load_target("builtin:torch")[0]
    print(f"last-level cache: {SpeedMeter().cache_bytes >> 20} MiB; format {args.format}; {args.rounds} rounds")
    print(f"{'op':<14} {'direction':<9} {'shape':<11} {'softaudit ms':>12} {'torch ms':>9} {'ratio':>6}  ratios")
    for text in args.shapes:
        rows, n = parse_shape(text)
        for op, direction in (("softmax", "forward"), ("softmax", "backward"), ("cross_entropy", "forward")):
            ours_ms, theirs_ms, ratios = [], [], []
            for _ in range(args.rounds):  # interleaved: a burst of other work hits one round, not one side
                ours = SpeedMeter().measure(cand, op, direction, args.format, rows, n)
                theirs = _torch_timer(cand, op, direction, args.format, rows, n, args.min_run_time)
                ours_ms.append(ours["median_s"] * 1e3)
                theirs_ms.append(theirs * 1e3)
                ratios.append(ours["median_s"] / theirs)
            spread = " ".join(f"{r:.2f}" for r in ratios)
            print(f"{op:<14} {direction:<9} {text:<11} {statistics.median(ours_ms):>12.3f} "
                  f"{statistics.median(theirs_ms):>9.3f} {statistics.median(ratios):>6.3f}  {spread}", flush=True)


def _torch_timer(cand, op: str, direction: str, fmt: str, rows: int, n: int, min_run_time: float) -> float:
    """torch.utils.benchmark's median of the same prepared call, with the same argument rotation."""
    meter = SpeedMeter()
    arrays = bench_arrays(op, direction, FORMATS[fmt], rows, n)
    copies = timing.rotation(sum(a.nbytes for a in arrays.values()), meter.cache_bytes)
    call, _ = prepare(cand, op, direction, arrays, copies)
    state = {"i": 0}

    def rotated() -> None:
        call(state["i"] % copies)
        state["i"] += 1

    # Timer runs single-threaded unless told otherwise; the harness uses torch's default pool.
    return tb.Timer(stmt="rotated()", globals={"rotated": rotated},
                    num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median


if __name__ == "__main__":
    main()
