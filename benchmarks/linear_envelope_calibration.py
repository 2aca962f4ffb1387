"""Calibrate the fused linear cross-entropy's envelope (softaudit/judging/linear_envelope.py) on the
textbook chunked implementation, and measure torch eager and the planted bf16-accumulation example.

For each setup (tokens 16-64, hidden 64-4096, vocabularies 32,000 / 128,256 / 262,144, realistic
logit scales, confident tokens, smoothing, z-loss, softcap, ignored tokens, bias) and format, it
computes each implementation's loss and gradients, their errors in ulps of the exact values,
the envelope in ulps (linear_envelope + envelope.absolute_to_ulp), and prints the max stability
ratio (error / envelope) per (implementation, format, direction, quantity), with the setup
where it occurs. The textbook must stay <= 1.

The reference here is the calibration's own, not softaudit's certified one:

- bfloat16, float16, float32: float64 throughout (BLAS logits, max-shifted logsumexp). Each
  logit is within D u64 sum|h w| (D <= 4096: 4.5e-13 sum|h w|), the loss and gradients within a
  few hundred u64 relative to their terms' magnitudes: at most 1e-5 of the smallest envelope
  term (u32 (log2 D + 2) sum|h w|), so the measured ratios are exact to 5 digits.
- float64: np.longdouble (x87 80-bit, 64-bit significand) on small shapes (D <= 256): within
  about 2^-11 of float64's envelope terms, so ratios are exact to 3 digits.

    python benchmarks/linear_envelope_calibration.py              # every setup (a few minutes)
    python benchmarks/linear_envelope_calibration.py --quick      # the small setups only
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from softaudit.builtins import torch_chunked_linear_ce as chunked
from softaudit.builtins import torch_linear_ce as eager
from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.formats import FORMATS, Format, round_float64_array
from softaudit.judging.envelope import absolute_to_ulp
from softaudit.judging.linear_envelope import (
    linear_ce_backward_absolute,
    linear_ce_forward_absolute,
    linear_ce_reduced_absolute,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setup:
    """One calibration input: shapes, logit scale and the loss's options."""

    name: str
    tokens: int
    hidden: int
    vocab: int
    scale: float = 3.0
    """Standard deviation of the logits (LLM heads: 2 to 5)."""
    margin: float = 0.0
    """> 0: each token's target logit raised by about this much (confident tokens)."""
    smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    ignored: int = 0
    """Tokens whose target is ignore_index (padding at the end)."""
    bias: bool = False
    reduction: str = "mean"
    offset: float = 0.0
    """Added to every logit through the bias (a shifted head; needs bias)."""


SETUPS = [
    Setup("t16-d64-v32000", 16, 64, 32000, reduction="none"),
    Setup("t64-d64-v32000-mean", 64, 64, 32000),
    Setup("t32-d64-v32000-sum-bias", 32, 64, 32000, bias=True, reduction="sum"),
    Setup("t32-d256-v32000-confident", 32, 256, 32000, margin=25.0, reduction="none"),
    Setup("t32-d128-v32000-scale10", 32, 128, 32000, scale=10.0, reduction="none"),
    Setup("t32-d64-v32000-smoothing", 32, 64, 32000, smoothing=0.1, ignored=8, reduction="none"),
    Setup("t32-d64-v32000-zloss", 32, 64, 32000, z_loss=1e-4, reduction="none"),
    Setup("t32-d64-v32000-softcap", 32, 64, 32000, scale=20.0, softcap=30.0, reduction="none"),
    Setup("t32-d64-v32000-all", 32, 64, 32000, scale=8.0, margin=10.0, smoothing=0.1, z_loss=1e-4,
          softcap=30.0, ignored=5, bias=True),
    Setup("t16-d64-v32000-offset", 16, 64, 32000, bias=True, offset=40.0, reduction="none"),
    Setup("t16-d1024-v128256", 16, 1024, 128256, reduction="none"),
    Setup("t64-d256-v128256-mean-ignored", 64, 256, 128256, ignored=16),
    Setup("t16-d128-v262144", 16, 128, 262144, reduction="none"),
    Setup("t32-d64-v262144-confident", 32, 64, 262144, margin=30.0, reduction="sum"),
    Setup("t16-d4096-v32000", 16, 4096, 32000, reduction="none"),
    Setup("t64-d4096-v32000-mean", 64, 4096, 32000, bias=True),
]

FLOAT64_MAX_HIDDEN = 256
"""float64 needs the long-double reference, which has no BLAS: small shapes only."""
FLOAT64_MAX_VOCAB = 32000


def make_inputs(s: Setup, fmt: Format, seed: int = 0) -> LinearLossInputs:
    """Hidden states N(0, 1), weight N(0, scale^2 / D) (logits of std ``scale``), every value
    rounded into ``fmt``; confident tokens lean their hidden state towards the target's row."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((s.tokens, s.hidden))
    w = rng.standard_normal((s.vocab, s.hidden)) * (s.scale / np.sqrt(s.hidden))
    target = rng.integers(0, s.vocab, s.tokens)
    if s.margin:
        row = w[target]
        h = h + s.margin * row / np.sum(row * row, axis=1, keepdims=True)
    bias = rng.standard_normal(s.vocab) * 0.5 + s.offset if s.bias else None
    target = target.astype(np.int64)
    if s.ignored:
        target[-s.ignored:] = -100

    def q(a: np.ndarray) -> np.ndarray:
        return round_float64_array(a, fmt)

    return LinearLossInputs(q(h), q(w), q(bias) if bias is not None else None, target, -100, s.smoothing,
                            s.reduction, s.z_loss, s.softcap)


@dataclass(frozen=True)
class Exact:
    """The calibration reference in ``dt`` (float64 or long double)."""

    loss: np.ndarray
    per_token: np.ndarray
    d_hidden: np.ndarray
    d_weight: np.ndarray
    d_bias: np.ndarray | None
    logits: np.ndarray
    p: np.ndarray
    lse: np.ndarray


def reference(inp: LinearLossInputs, dy: np.ndarray, dt: type) -> Exact:
    """Loss and gradients of the op's formulas in ``dt`` (docs/envelope.md#fused-linear-cross-entropy)."""
    h = inp.hidden.astype(np.float64).astype(dt)
    w = inp.weight.astype(np.float64).astype(dt)
    z = h @ w.T
    if inp.bias is not None:
        z = z + inp.bias.astype(np.float64).astype(dt)
    if inp.softcap is not None:
        s = dt(inp.softcap)
        t = np.tanh(z / s)
        x = s * t
    else:
        x = z
    a = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - a)
    ssum = np.sum(e, axis=1, keepdims=True)
    lse = a[:, 0] + np.log(ssum[:, 0])
    p = e / ssum
    kept = inp.target != inp.ignore_index
    safe = np.where(kept, inp.target, 0)
    eps, zl, v = dt(inp.label_smoothing), dt(inp.z_loss), inp.vocabulary
    per = (1 - eps) * (lse - x[np.arange(inp.tokens), safe]) + eps * (lse - np.mean(x, axis=1)) + zl * lse * lse
    per = np.where(kept, per, dt(0))
    n = int(kept.sum())
    loss = per if inp.reduction == "none" else np.array([per.sum() / (n if inp.reduction == "mean" else 1)])
    d = np.asarray(dy).astype(np.float64).astype(dt)
    g = d.reshape(inp.tokens) if inp.reduction == "none" else np.full(inp.tokens, d.reshape(-1)[0], dtype=dt)
    if inp.reduction == "mean":
        g = g / dt(n)
    g = np.where(kept, g, dt(0))
    coef = np.full(x.shape, eps / v, dtype=dt)
    coef[np.arange(inp.tokens), safe] += 1 - eps
    grad = g[:, None] * ((1 + 2 * zl * lse)[:, None] * p - coef)
    if inp.softcap is not None:
        grad = grad * (1 - t * t)
    d_bias = grad.sum(axis=0) if inp.bias is not None else None
    return Exact(loss, per, grad @ w, grad.T @ h, d_bias, z.astype(np.float64), p.astype(np.float64),
                 lse.astype(np.float64))


def ulp_errors(y: np.ndarray, exact: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """|y - exact| in ulps of the exact value in ``fmt``, and k (ulp = 2^k)."""
    ex64 = exact.astype(np.float64)
    _, e2 = np.frexp(ex64)
    k = np.where(ex64 == 0, fmt.emin - fmt.p + 1, np.maximum(e2 - 1, fmt.emin) - fmt.p + 1).astype(np.int64)
    diff = np.abs(np.asarray(y, dtype=np.float64).astype(exact.dtype) - exact)
    return np.ldexp(diff, -k).astype(np.float64), k


Impl = Callable[[LinearLossInputs, np.ndarray, Format], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]


def _tensors(inp: LinearLossInputs, fmt: Format) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float64)).to(fmt.torch_dtype)

    return t(inp.hidden), t(inp.weight), torch.from_numpy(inp.target), t(inp.bias) if inp.bias is not None else None


def _numpy(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().to(torch.float64).numpy()


def run_explicit(module: object) -> Impl:
    """An implementation with an explicit backward (the textbook, the planted example)."""
    def impl(inp: LinearLossInputs, dy: np.ndarray, fmt: Format):  # type: ignore[no-untyped-def]
        h, w, target, b = _tensors(inp, fmt)
        kw = inp.keywords()
        loss = module.linear_cross_entropy(h, w, target, b, **kw)  # type: ignore[attr-defined]
        dyt = torch.from_numpy(np.asarray(dy, dtype=np.float64)).to(fmt.torch_dtype)
        dh, dw, db = module.linear_cross_entropy_backward(h, w, target, b, dyt, **kw)  # type: ignore[attr-defined]
        return _numpy(loss), _numpy(dh), _numpy(dw), _numpy(db)
    return impl


def run_autograd(module: object) -> Impl:
    """An implementation differentiated by torch autograd (torch eager)."""
    def impl(inp: LinearLossInputs, dy: np.ndarray, fmt: Format):  # type: ignore[no-untyped-def]
        h, w, target, b = _tensors(inp, fmt)
        leaves = [x.requires_grad_() for x in (h, w, b) if x is not None]
        loss = module.linear_cross_entropy(h, w, target, b, **inp.keywords())  # type: ignore[attr-defined]
        dyt = torch.from_numpy(np.asarray(dy, dtype=np.float64)).to(fmt.torch_dtype).reshape(loss.shape)
        loss.backward(dyt)
        return (_numpy(loss), _numpy(leaves[0].grad), _numpy(leaves[1].grad),
                _numpy(leaves[2].grad) if b is not None else None)
    return impl


def _example() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bf16_weight_grad_linear_ce",
                                                  ROOT / "examples" / "bf16_weight_grad_linear_ce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _liger() -> object:
    """builtin:liger-linear-ce's module, interpreted on a CPU as softaudit's loader runs it."""
    import importlib.util

    from softaudit.candidates.loading import correct_interpreter_bfloat16, interpret_triton_on_cpu

    interpret_triton_on_cpu()
    if os.environ.get("TRITON_INTERPRET") == "1":
        correct_interpreter_bfloat16()
    spec = importlib.util.spec_from_file_location("liger_linear_ce", ROOT / "softaudit" / "builtins" / "liger_linear_ce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(s: Setup, fmt: Format, impls: dict[str, Impl], seed: int = 0) -> dict[tuple[str, str], tuple[float, str]]:
    """(implementation, quantity) -> (max stability ratio, where) on one setup and format."""
    inp = make_inputs(s, fmt, seed)
    rng = np.random.default_rng(seed + 1)
    dy_shape = (inp.tokens,) if inp.reduction == "none" else ()
    dy = round_float64_array(rng.standard_normal(dy_shape) + 0.5, fmt).astype(np.float64)
    dt = np.longdouble if fmt.name == "float64" else np.float64
    ex = reference(inp, dy, dt)
    per_abs = linear_ce_forward_absolute(inp, ex.logits, ex.p, ex.lse, fmt)
    if inp.reduction == "none":
        loss_abs = per_abs
    else:
        kept = int(np.sum(inp.target != inp.ignore_index))
        denom = float(kept) if inp.reduction == "mean" else 1.0
        loss_abs = np.array([linear_ce_reduced_absolute(per_abs, ex.per_token.astype(np.float64), denom, fmt)])
    envs = dict(zip(("loss", "d_hidden", "d_weight", "d_bias"),
                    (loss_abs, *linear_ce_backward_absolute(inp, dy, ex.logits, ex.p, ex.lse, fmt))))
    exacts = {"loss": ex.loss, "d_hidden": ex.d_hidden, "d_weight": ex.d_weight, "d_bias": ex.d_bias}
    out: dict[tuple[str, str], tuple[float, str]] = {}
    for name, impl in impls.items():
        got = dict(zip(("loss", "d_hidden", "d_weight", "d_bias"), impl(inp, dy, fmt)))
        for q, exact in exacts.items():
            y, env_abs = got[q], envs[q]
            if exact is None or y is None or env_abs is None:
                continue
            err, k = ulp_errors(np.asarray(y).reshape(exact.shape), exact, fmt)
            ratio = np.where(np.isfinite(err), err, np.inf) / absolute_to_ulp(np.asarray(env_abs), k)
            i = int(np.argmax(ratio))
            where = np.unravel_index(i, ratio.shape)
            out[(name, q)] = (float(ratio.flat[i]), f"{s.name} {where} err {err.flat[i]:.3g} ulp")
    return out


def main() -> None:
    """Run every setup in every format and print the max ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only setups with hidden <= 256 and vocab 32000")
    parser.add_argument("--formats", default="bfloat16,float16,float32,float64")
    parser.add_argument("--only", default="", help="comma-separated setup names")
    parser.add_argument("--liger", action="store_true", help="also builtin:liger-linear-ce (interpreted: slow)")
    parser.add_argument("--no-eager", action="store_true",
                        help="skip torch eager (its 16-bit CPU matmuls take minutes at vocabulary 128,256)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    impls: dict[str, Impl] = {"textbook (builtin:torch-chunked-linear-ce)": run_explicit(chunked),
                              "torch eager (builtin:torch-linear-ce)": run_autograd(eager),
                              "planted (examples/bf16_weight_grad_linear_ce.py)": run_explicit(_example())}
    if args.no_eager:
        del impls["torch eager (builtin:torch-linear-ce)"]
    if args.liger:
        impls["liger (builtin:liger-linear-ce)"] = run_autograd(_liger())
    worst: dict[tuple[str, str, str, str], tuple[float, str]] = {}
    started = time.perf_counter()
    for s in SETUPS:
        if args.only and s.name not in args.only.split(","):
            continue
        if args.quick and (s.hidden > 256 or s.vocab > 32000):
            continue
        for fname in args.formats.split(","):
            fmt = FORMATS[fname]
            setup = s
            if args.liger and s.softcap is not None and os.environ.get("TRITON_INTERPRET") == "1":
                setup = replace(s, softcap=None)  # Liger's softcap does not run interpreted
            if fmt.name == "float64":
                if s.vocab > FLOAT64_MAX_VOCAB or s.hidden > FLOAT64_MAX_HIDDEN:
                    continue
                setup = replace(s, tokens=min(s.tokens, 16), ignored=min(s.ignored, 4))
            t0 = time.perf_counter()
            for (impl, q), (ratio, where) in measure(setup, fmt, impls).items():
                print(f"  {impl.split()[0]:9s} {q:9s} {ratio:10.3g}", flush=True)
                direction = "forward" if q == "loss" else "backward"
                key = (impl, fmt.name, direction, q)
                if key not in worst or ratio > worst[key][0]:
                    worst[key] = (ratio, where)
            print(f"# {s.name} {fmt.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"\nmax stability ratio per (implementation, format, direction, quantity); "
          f"{time.perf_counter() - started:.0f} s in all\n")
    for (impl, fname, direction, q), (ratio, where) in sorted(worst.items()):
        print(f"{impl:52s} {fname:9s} {direction:8s} {q:9s} {ratio:10.3g}   {where}")


if __name__ == "__main__":
    main()
