"""Wall time of a full default audit of one candidate, cold (empty reference cache) and warm.

Runs ``softaudit run TARGET -q`` (every op, forward and backward, every format the options
leave in) twice with a fresh temporary cache directory: the first run computes every
reference, the second finds them all cached. Usage:

    python benchmarks/audit_wall_time.py [--target builtin:shifted] [--jobs N] [--dtype F ...]

Prints both wall times (one run each: a full cold audit takes minutes) and the exit codes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def _run(args: list[str], cache: str) -> tuple[float, int]:
    env = {**os.environ, "SOFTAUDIT_CACHE_DIR": cache}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "softaudit", "run", *args, "-q"], env=env)
    return time.perf_counter() - started, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="builtin:shifted")
    parser.add_argument("--jobs", type=int, default=None, help="passed to softaudit run (default: its own)")
    parser.add_argument("--dtype", nargs="+", default=[], help="formats (default: all four)")
    args = parser.parse_args()
    run_args = [args.target] + [a for d in args.dtype for a in ("--dtype", d)]
    if args.jobs is not None:
        run_args += ["--jobs", str(args.jobs)]
    with tempfile.TemporaryDirectory(prefix="softaudit-bench-") as cache:
        cold, rc_cold = _run(run_args, cache)
        warm, rc_warm = _run(run_args, cache)
    formats = ", ".join(args.dtype) or "all four formats"
    print(f"softaudit run {' '.join(run_args)} ({formats}; {os.cpu_count()} cores)")
    print(f"cold: {cold:7.1f} s  (exit {rc_cold})")
    print(f"warm: {warm:7.1f} s  (exit {rc_warm})")


if __name__ == "__main__":
    main()
