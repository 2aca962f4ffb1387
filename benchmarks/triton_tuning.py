"""Where the shipped Triton kernels stand against the copy bandwidth, and which launch settings
would move them: a sweep over num_warps (triton_math.ELEMENTS_PER_THREAD) and the tiled kernels'
tile, at the shapes `--bench` reports (4096x32768 and 1024x128256, float32 and bfloat16).

Each configuration is timed with CUDA events (median of --reps launches after 3 warm-up calls) and
printed as a share of the device's copy bandwidth (read + write of the same bytes, torch's
``copy_``), beside torch's own softmax. Bytes counted are the least the op must move: the input
read once and the output written once (cross-entropy: the logits read, the loss written; with its
backward, the logits read twice and dx written). Used to choose triton_math's settings; run it
on a GPU (about a minute: each configuration is one compilation). ``--device cpu`` is a dry run of
the script itself under the interpreter at a tiny shape.

Usage: python benchmarks/triton_tuning.py [--device cuda|cpu] [--budget SECONDS] [--reps N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--budget", type=float, default=75.0, help="stop starting new configurations after this many seconds")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from softaudit.builtins import triton_ce, triton_online, triton_softmax
    from softaudit.builtins import triton_math as tm

    if args.device == "cuda" and not torch.cuda.is_available():
        print("triton_tuning: no CUDA device", file=sys.stderr)
        return 2
    dev = args.device
    shapes = [(4096, 32768), (1024, 128256)] if dev == "cuda" else [(8, 300)]
    reps = args.reps if dev == "cuda" else 2
    start = time.perf_counter()

    def timed(fn: Callable[[], object]) -> float:
        """Median seconds of one call."""
        for _ in range(3):
            fn()
        if dev == "cpu":
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        return statistics.median(times)

    @contextlib.contextmanager
    def per_thread(value: int) -> Iterator[None]:
        old = tm.ELEMENTS_PER_THREAD
        tm.ELEMENTS_PER_THREAD = value
        try:
            yield
        finally:
            tm.ELEMENTS_PER_THREAD = old

    print(f"device {torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu (interpreted)'}; torch {torch.__version__}")
    print(f"{'kernel':46s} {'shape':>12s} {'dtype':>9s} {'time':>10s} {'GB/s':>7s} {'of copy':>8s}")
    for rows, n in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, n, device=dev).mul_(3).to(dtype)
            out = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()
            copy = timed(lambda: out.copy_(x))
            copy_bw = nbytes / copy

            def show(name: str, seconds: float, moved: int = nbytes) -> None:
                bw = moved / seconds
                print(f"{name:46s} {f'{rows}x{n}':>12s} {str(dtype)[6:]:>9s} {seconds * 1e6:8.0f}us "
                      f"{bw / 1e9:7.0f} {100 * bw / copy_bw:7.1f}%", flush=True)

            show("copy_", copy)
            show("torch.softmax", timed(lambda: torch.softmax(x, -1)))
            configs: list[tuple[str, Callable[[], object], int]] = []
            if triton_softmax.tm.block_for(n, x) is not None:
                for pt in (16, 32, 64):
                    configs.append((f"triton-softmax rows, {pt}/thread", lambda pt=pt: _with(per_thread(pt), lambda: triton_softmax.forward(x, tm.SOFTMAX)), pt))
            for tile in (4096, 8192, 16384):
                if tile >= n:
                    continue
                for pt in (8, 16):
                    configs.append((f"triton-online tile {tile}, {pt}/thread", lambda tile=tile, pt=pt: _with(per_thread(pt), lambda: triton_online.forward(x, tm.SOFTMAX, tile=tile)), pt))
            t = torch.randint(0, n, (rows,), device=dev)
            g = torch.ones(rows, device=dev, dtype=dtype)
            for pt in (8, 16):
                configs.append((f"triton-ce fwd+bwd, {pt}/thread", lambda pt=pt: _with(per_thread(pt), lambda: (
                    triton_ce.cross_entropy(x, t), triton_ce.cross_entropy_backward(x, t, g))), pt))
            for name, fn, _ in configs:
                if time.perf_counter() - start > args.budget:
                    print(f"(budget of {args.budget:.0f} s spent: the remaining configurations were not run)")
                    return 0
                try:
                    seconds = timed(fn)
                except Exception as exc:  # a configuration Triton cannot compile (registers, shared memory)
                    print(f"{name:46s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                    continue
                moved = 3 * x.numel() * x.element_size() if name.startswith("triton-ce") else nbytes
                show(name, seconds, moved)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _with(ctx: contextlib.AbstractContextManager, fn: Callable[[], object]) -> object:
    with ctx:
        return fn()


if __name__ == "__main__":
    raise SystemExit(main())
