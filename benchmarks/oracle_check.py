"""Check softaudit's certified references against the independent oracle (tests/oracle).

Runs the oracle (Arb balls through python-flint, exact Fractions, its own round-to-nearest-even)
over every case of the shipped library, in every format, for the forward ops, the VJPs and
cross-entropy (per row, mean and sum; its gradient for every reduction), with inputs built by
softaudit's own builders exactly as the runner builds them; optionally also N tuned rows per
format and op that sit within a tiny fraction of an ulp of a rounding midpoint. Prints, per
format/op/direction, how many elements were compared and how many disagreed (the first few
disagreements with their inputs), and exits 1 on any disagreement (2 if the oracle left an
element undecided and nothing disagreed).

Usage (from the repository root, with the test extra installed: python-flint):

    python benchmarks/oracle_check.py                      # whole library, engine auto
    python benchmarks/oracle_check.py --engine mpmath      # softaudit's mpmath engine instead
    python benchmarks/oracle_check.py --tuned 2000         # and 2,000 tuned rows per format/op
    python benchmarks/oracle_check.py --no-library --tuned 500 --formats float16
    python benchmarks/oracle_check.py --cases offset-span-range,n3-rows --show 10

A checkout other than the installed one: PYTHONPATH=$PWD python benchmarks/oracle_check.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the oracle package

from oracle import generators, subject

FORMATS = ("float64", "float32", "float16", "bfloat16")


def _excerpt(x: np.ndarray, row: int, col: int, radius: int = 3) -> str:
    r = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)[row]
    lo, hi = max(0, col - radius), min(r.size, col + radius + 1)
    body = ", ".join(repr(float(v)) for v in r[lo:hi])
    amax = int(np.argmax(np.where(np.isnan(r), -np.inf, r))) if r.size else 0
    return f"x[{row}][{lo}:{hi}] = [{body}] (n={r.size}, max {float(r[amax])!r} at {amax})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="auto", choices=("auto", "mpmath"))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--no-library", action="store_true", help="skip the shipped library")
    ap.add_argument("--tuned", type=int, default=0, help="tuned rows per format and op (default 0)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the tuned rows")
    ap.add_argument("--show", type=int, default=3, help="disagreements listed per format/op/direction")
    ap.add_argument("--progress", action="store_true", help="one line per case on stderr")
    args = ap.parse_args(argv)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    names = None if args.cases is None else {c.strip() for c in args.cases.split(",")}

    compared: dict[str, int] = defaultdict(int)
    bad: dict[str, list] = defaultdict(list)
    undecided: dict[str, list] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()

    def record(results: dict, source: str, x, dy=None) -> None:
        for label, c in results.items():
            compared[label] += c.compared
            for d in c.disagreements:
                bad[label].append((source, d, x, dy))
            for u in c.undecided:
                undecided[label].append((source, u))

    if not args.no_library:
        for check in subject.library_checks(formats=formats, names=names):
            t = time.perf_counter()
            res = subject.run_check(check, args.engine)
            seconds[check.case] += time.perf_counter() - t
            if args.progress:
                n_bad = sum(len(c.disagreements) for c in res.values())
                print(f"{time.perf_counter() - t0:8.1f} s  {check.case} {check.fmt} {check.op} {check.direction}"
                      f" {time.perf_counter() - t:.1f} s, {n_bad} disagreements", file=sys.stderr, flush=True)
            record(res, f"case {check.case}", check.x, check.dy)
    for fmt in formats if args.tuned else ():
        for op in generators.OPS:
            for k, item in enumerate(generators.tuned_items(fmt, op, args.tuned, seed=args.seed)):
                res = subject.run_item(item, fmt, args.engine)
                record({f"{lab} (tuned)": c for lab, c in res.items()}, f"tuned #{k}", item.x, item.dy)

    total_bad = 0
    print(f"{'format/op/direction':56} {'compared':>10} {'disagree':>9} {'undecided':>9}")
    for label in sorted(compared):
        nb, nu = len(bad[label]), len(undecided[label])
        total_bad += nb
        print(f"{label:56} {compared[label]:>10} {nb:>9} {nu:>9}")
        for source, d, x, dy in bad[label][: args.show]:
            print(f"    {source} [{d.row}, {d.col}]: softaudit {d.got!r}, oracle {d.want!r} {d.note}")
            print(f"      {_excerpt(x, d.row, d.col)}")
            if dy is not None and np.ndim(dy):
                print(f"      dy: {_excerpt(np.asarray(dy).reshape(np.asarray(x).shape[0], -1), d.row, d.col)}")
            elif dy is not None:
                print(f"      dy: {float(np.asarray(dy))!r}")
        for source, u in undecided[label][: args.show]:
            print(f"    undecided: {source} {u}")
    n_und = sum(len(v) for v in undecided.values())
    print(f"\n{sum(compared.values())} elements compared, {total_bad} disagreements, {n_und} undecided, "
          f"{time.perf_counter() - t0:.1f} s (engine {args.engine})")
    if seconds:
        slow = sorted(seconds.items(), key=lambda kv: -kv[1])[:5]
        print("slowest cases: " + ", ".join(f"{k} {v:.1f} s" for k, v in slow))
    if total_bad:
        return 1
    return 2 if n_und else 0


if __name__ == "__main__":
    sys.exit(main())
