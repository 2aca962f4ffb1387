"""softaudit's references against the independent oracle (Arb balls through python-flint, exact
Fractions, its own rounding: tests/independent_oracle.py), with counts.

    python benchmarks/oracle_check.py [--library] [--tuned N] [--max-elements M] [--engine auto|mpmath ...]

--library compares every shipped case in every format (forward ops, the VJPs for the case's
upstream gradients, cross-entropy per row / mean / sum and its gradient), as an audit builds
them; --tuned N adds N tuned inputs per format (rows on and next to rounding midpoints, tied
maxima, terms from e^-5 to e^-1e300 below the max). Prints, per format and output, how many
elements were compared and how many disagree (the first disagreements in full), and the time;
exits 1 on any disagreement. Needs the test extra (python-flint).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import oracle_check as oc  # noqa: E402

from softaudit.formats import FORMATS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", action="store_true", help="every shipped case, four formats")
    parser.add_argument("--tuned", type=int, default=0, metavar="N", help="N tuned inputs per format")
    parser.add_argument("--max-elements", type=int, default=None, help="skip library cases larger than this")
    parser.add_argument("--engine", nargs="+", default=["auto"], choices=["auto", "mpmath"])
    args = parser.parse_args()
    if not args.library and not args.tuned:
        parser.error("nothing to check: give --library and/or --tuned N")
    started = time.perf_counter()
    bad: list[str] = []
    if args.library:
        for case, fmt, x, dys, loss, loss_dy in oc.library_units(args.max_elements):
            bad += [f"{case.name} {fmt.name}: {m}" for m in oc.check_unit(x, fmt, dys, loss, loss_dy, args.engine)]
    for fmt in FORMATS.values() if args.tuned else ():
        for x, dys, loss, loss_dy in oc.tuned_units(fmt, args.tuned, seed=2):
            bad += [f"tuned {fmt.name}: {m}" for m in oc.check_unit(x, fmt, dys, loss, loss_dy, args.engine)]
    print(f"{'format':9} {'output':34} {'compared':>10}")
    for (fmt_name, what), count in sorted(oc.COMPARED.items()):
        print(f"{fmt_name:9} {what:34} {count:>10,}")
    total = sum(oc.COMPARED.values())
    print(f"{total:,} elements compared, {len(bad)} disagreements, in {time.perf_counter() - started:.0f} s "
          f"(engines: {', '.join(args.engine)})")
    for line in bad[:20]:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
