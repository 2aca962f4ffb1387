"""Throughput of the exact references: the certified fast path against pure mpmath.

The reference is softaudit's referee and, on a cold cache, most of an audit's time. This
prints, for rows of each length and format, the elements/s of the forward references
(softmax, log_softmax and logsumexp together, as the audit computes them: 2n + 1
elements) and of softmax's gradient (one VJP: n elements), through the default engine
(the format's certified fast path: long double for float32 and the 16-bit formats,
double-double for float64; mpmath for what it cannot prove) and through the pure mpmath
engine, and the ratio.
Each measurement is one input as the audit passes it: max(1, 32768 // n) rows of n (a
case's array; a single short row would time numpy's per-call overhead, not the engine).
No cache is involved. Usage:

    python benchmarks/reference_throughput.py [--sizes 1000 32768 262144]
        [--formats float64 float32 float16 bfloat16] [--repeats N] [--skip-mpmath-above N]

Figures are medians of N runs (default 3; 1 for the mpmath engine on rows of 100,000
elements and more, which take tens of seconds each). The pure mpmath column takes
about 7 minutes at the default sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from softaudit.formats import FORMATS, round_float64_array
from softaudit.reference import backward_reference, reference_rows


def _rows(n: int, fmt_name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """max(1, 32768 // n) logit rows of a plausible spread (N(0, 3)) and an upstream gradient, in the format."""
    fmt = FORMATS[fmt_name]
    rng = np.random.default_rng(seed)
    shape = (max(1, 32768 // n), n)
    x = round_float64_array(rng.normal(size=shape) * 3.0, fmt).astype(np.float64)
    dy = round_float64_array(rng.normal(size=shape), fmt).astype(np.float64)
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
    parser.add_argument("--formats", nargs="+", default=["float64", "float32", "float16", "bfloat16"],
                        choices=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-mpmath-above", type=int, default=None, metavar="N",
                        help="leave the pure mpmath engine out for rows longer than N (its column shows -)")
    args = parser.parse_args()

    print(f"{'format':<9} {'rows x n':<11} | {'forward el/s':>12} {'mpmath':>9} {'ratio':>6} | "
          f"{'softmax VJP el/s':>16} {'mpmath':>9} {'ratio':>6}")
    for fmt_name in args.formats:
        fmt = FORMATS[fmt_name]
        for n in args.sizes:
            x, dy = _rows(n, fmt_name, seed=n)
            rows = x.shape[0]
            fast_fwd = _median_seconds(lambda: reference_rows(x, fmt), args.repeats)
            fast_vjp = _median_seconds(lambda: backward_reference("softmax", x, dy, fmt), args.repeats)
            fwd_elements, vjp_elements = rows * (2 * n + 1), rows * n
            cells = [f"{fwd_elements / fast_fwd:>12.3g}"]
            if args.skip_mpmath_above is not None and n > args.skip_mpmath_above:
                cells += [f"{'-':>9}", f"{'-':>6}"]
                vjp_cells = [f"{'-':>9}", f"{'-':>6}"]
            else:
                repeats = 1 if n >= 100_000 else args.repeats
                mp_fwd = _median_seconds(lambda: reference_rows(x, fmt, engine="mpmath"), repeats)
                mp_vjp = _median_seconds(lambda: backward_reference("softmax", x, dy, fmt, engine="mpmath"), repeats)
                cells += [f"{fwd_elements / mp_fwd:>9.3g}", f"{mp_fwd / fast_fwd:>5.0f}x"]
                vjp_cells = [f"{vjp_elements / mp_vjp:>9.3g}", f"{mp_vjp / fast_vjp:>5.0f}x"]
            print(f"{fmt_name:<9} {rows:>3}x{n:<7} | {' '.join(cells)} | {vjp_elements / fast_vjp:>16.3g} {' '.join(vjp_cells)}",
                  flush=True)


if __name__ == "__main__":
    main()
