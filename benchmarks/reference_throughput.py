"""Throughput of the exact reference engine: certified elements per second, per format and row length.

The reference is softaudit's referee and its bottleneck (every element of every op is certified
correctly rounded in mpmath). This prints, for one row of each length and format, the wall time and
elements/s of the forward references (softmax, log_softmax and logsumexp together, as the audit
computes them) and of softmax's gradient (one VJP). No cache is involved. Usage:

    python benchmarks/reference_throughput.py [--sizes 1000 32768 262144] [--formats float32 ...] [--repeats N]

Figures are medians of N runs (default 3; 1 for rows of 100,000 elements and more, which take
seconds each).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from softaudit.formats import FORMATS, round_float64_array
from softaudit.reference import reference_rows
from softaudit.reference_backward import backward_reference


def _row(n: int, fmt_name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A logit row of a plausible spread (N(0, 3)) and an upstream gradient, in the format."""
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(seed)
    x = round_float64_array(rng.normal(size=(1, n)) * 3.0, fmt).astype(np.float64)
    dy = round_float64_array(rng.normal(size=(1, n)), fmt).astype(np.float64)
    return x, dy


def _median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 32768, 262144])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"{'format':<9} {'n':>8}  {'forward (3 ops)':>16} {'elements/s':>11}  {'softmax VJP':>12} {'elements/s':>11}")
    for fmt_name in args.formats:
        fmt = FORMATS[fmt_name]
        for n in args.sizes:
            x, dy = _row(n, fmt_name, seed=n)
            repeats = 1 if n >= 100_000 else args.repeats
            forward = _median_seconds(lambda: reference_rows(x, fmt), repeats)
            vjp = _median_seconds(lambda: backward_reference("softmax", x, dy, fmt), repeats)
            print(f"{fmt_name:<9} {n:>8}  {forward:>14.3f} s {3 * n / forward:>11.3g}  {vjp:>10.3f} s {n / vjp:>11.3g}",
                  flush=True)


if __name__ == "__main__":
    main()
