"""``--bench`` for linear_cross_entropy: a fused loss is matmul-bound, so beside the copy of the
bytes it must move, each call is set against the matmul it cannot avoid (2 T V D flops forward,
twice that backward), timed in torch in the same dtype on the same device.

A shape ROWSxN is tokens x vocabulary; the hidden size is BENCH_HIDDEN. Inputs: N(0, 1) hidden
states, an N(0, 9 / D) weight (logits of std 3), uniform targets, reduction "mean", dy = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softaudit.candidates.arguments import Arguments
from softaudit.candidates.calling import backward_mode
from softaudit.candidates.model import Candidate, OpFunction
from softaudit.errors import SoftauditError
from softaudit.formats import Format
from softaudit.ops import LINEAR_CROSS_ENTROPY
from softaudit.runner import timing

BENCH_HIDDEN = 1024
"""The hidden size D of every timed linear_cross_entropy shape (a 1B-parameter model's)."""

LINEAR_SHAPES: tuple[tuple[int, int], ...] = ((512, 32000), (128, 128256))
"""tokens x vocabulary timed by default: a step of Llama 2's and of Llama 3's vocabulary."""


class LinearSpeedError(SoftauditError):
    """The call cannot be timed (the reason in one line)."""


def linear_flops(direction: str, tokens: int, vocab: int, hidden: int) -> int:
    """The matmul's flops: 2 T V D forward (the logits), twice that backward (d_hidden and d_weight)."""
    return 2 * tokens * vocab * hidden * (2 if direction == "backward" else 1)


def linear_bytes(direction: str, tokens: int, vocab: int, hidden: int, itemsize: int) -> int:
    """The bytes one call must move at least: read hidden, weight and the targets (int64), write the
    loss; backward also read dy and write d_hidden and d_weight."""
    inputs = (tokens + vocab) * hidden * itemsize + 8 * tokens
    if direction == "forward":
        return inputs + itemsize
    return 2 * inputs - 8 * tokens + itemsize


def linear_arrays(fmt: Format, tokens: int, vocab: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    """hidden, weight and target of one timed shape (drawn in float32, cast: timing needs no exactness)."""
    work = np.float64 if fmt.np_dtype == np.float64 else np.float32
    rng = np.random.default_rng(np.random.SeedSequence([seed, tokens, vocab, hidden]))
    h = rng.standard_normal((tokens, hidden), dtype=work).astype(fmt.np_dtype)
    w = (rng.standard_normal((vocab, hidden), dtype=work) * (3.0 / np.sqrt(hidden))).astype(fmt.np_dtype)
    return {"hidden": h, "weight": w, "target": rng.integers(0, vocab, tokens).astype(np.int64)}


def _prepare(cand: Candidate, direction: str, arrays: dict[str, np.ndarray], copies: int
             ) -> tuple[Callable[[int], Any], OpFunction]:
    """``call(i)`` on copy i of the arguments, and the function called."""
    opfn = cand.ops.get(LINEAR_CROSS_ENTROPY)
    if opfn is None:
        raise LinearSpeedError(f"{LINEAR_CROSS_ENTROPY} is not defined")
    kwargs: dict[str, Any] = {"reduction": "mean"} if "reduction" in opfn.keywords else {}
    if direction == "forward":
        sets = []
        for _ in range(copies):
            args = Arguments(opfn)
            sets.append((args.add("hidden", arrays["hidden"]), args.add("weight", arrays["weight"]),
                         args.add("target", arrays["target"])))
        return (lambda i: opfn.fn(*sets[i], **kwargs)), opfn
    mode, reason = backward_mode(cand, LINEAR_CROSS_ENTROPY)
    if mode is None:
        raise LinearSpeedError(reason)
    if mode == "function":
        back = cand.backward[LINEAR_CROSS_ENTROPY]
        kw = {"reduction": "mean"} if "reduction" in back.keywords else {}
        back_sets: list[tuple[Any, ...]] = []
        for _ in range(copies):
            args = Arguments(back)
            dy = args.add("dy", np.ones((), dtype=arrays["hidden"].dtype))
            back_sets.append((args.add("hidden", arrays["hidden"]), args.add("weight", arrays["weight"]),
                              args.add("target", arrays["target"]), None, dy))
        return (lambda i: back.fn(*back_sets[i], **kw)), back
    import torch

    graphs = []
    with torch.enable_grad():
        for _ in range(copies):
            args = Arguments(opfn)
            h, w = args.add("hidden", arrays["hidden"], leaf=True), args.add("weight", arrays["weight"], leaf=True)
            out = opfn.fn(h, w, args.add("target", arrays["target"]), **kwargs)
            if not isinstance(out, torch.Tensor) or out.grad_fn is None:
                raise LinearSpeedError("the output is not differentiable by autograd (no grad_fn)")
            graphs.append((out, (h, w), torch.ones_like(out)))

    def call(i: int) -> None:
        out, leaves, dy = graphs[i]
        torch.autograd.grad(out, leaves, dy, retain_graph=True)

    return call, opfn


def _matmul_timing(arrays: dict[str, np.ndarray], fmt: Format, device: str, direction: str,
                   clock: timing.Clock) -> timing.Timing | None:
    """torch's own matmuls of the call (h W^T; backward also G W and G^T h) in the format on the device."""
    try:
        import torch
    except ImportError:
        return None
    h = torch.from_numpy(arrays["hidden"].astype(np.float32)).to(device=device, dtype=fmt.torch_dtype)
    w = torch.from_numpy(arrays["weight"].astype(np.float32)).to(device=device, dtype=fmt.torch_dtype)
    g = h @ w.T

    def call(i: int) -> None:
        z = h @ w.T
        if direction == "backward":
            _ = g @ w
            _ = g.T @ h
        del z

    return timing.measure(call, clock=clock, copies=1)


def measure_linear(cand: Candidate, direction: str, fmt: Format, tokens: int, vocab: int, seed: int,
                   clock_for: Callable[[OpFunction], timing.Clock],
                   copy_timing: Callable[[str, int], timing.Timing]) -> dict:
    """The speed figures of one linear_cross_entropy call: as the other ops' (elements are the
    logits, T x V), plus ``flops``, ``tflops``, ``matmul_median_s`` and ``pct_matmul_bound``."""
    hidden = BENCH_HIDDEN
    arrays = linear_arrays(fmt, tokens, vocab, hidden, seed)
    try:
        call, opfn = _prepare(cand, direction, arrays, 1)
        clock = clock_for(opfn)
        t = timing.measure(call, clock=clock, copies=1)
    except LinearSpeedError:
        raise
    except Exception as exc:
        raise LinearSpeedError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")) from None
    device = opfn.device if opfn.backend == "torch" else "cpu"
    moved = linear_bytes(direction, tokens, vocab, hidden, np.dtype(fmt.np_dtype).itemsize)
    copy = copy_timing(device, moved)
    matmul = _matmul_timing(arrays, fmt, device, direction, clock)
    flops = linear_flops(direction, tokens, vocab, hidden)
    median = t.median_s
    return {
        "shape": [tokens, vocab], "hidden_size": hidden, "device": device, "median_s": median, "iqr_s": t.iqr_s,
        "repeats": t.repeats, "copies": 1,
        "elements_per_s": tokens * vocab / median if median > 0 else None,
        "bytes": moved, "gb_per_s": moved / median / 1e9 if median > 0 else None,
        "copy_median_s": copy.median_s, "copy_gb_per_s": moved / copy.median_s / 1e9 if copy.median_s > 0 else None,
        "pct_copy_bandwidth": 100.0 * copy.median_s / median if median > 0 else None,
        "flops": flops, "tflops": flops / median / 1e12 if median > 0 else None,
        "matmul_median_s": None if matmul is None else matmul.median_s,
        "pct_matmul_bound": None if matmul is None or median <= 0 else 100.0 * matmul.median_s / median,
    }
