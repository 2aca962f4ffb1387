"""The fused linear cross-entropy's built-ins (torch eager, the chunked textbook, Liger) and the
planted example (examples/bf16_weight_grad_linear_ce.py) against the op's formulas in float64."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from softaudit.builtins import torch_chunked_linear_ce as chunked
from softaudit.builtins import torch_linear_ce as eager

ROOT = Path(__file__).resolve().parent.parent

KEYWORDS = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 4.0},
    {"label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 3.0},
]


def _inputs(dtype: torch.dtype, tokens: int = 21, hidden: int = 16, vocab: int = 50, seed: int = 0,
            scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden, weight, target (two ignored tokens), bias: logits of std ``scale``, several chunks."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * (scale / hidden ** 0.5)
    b = torch.randn(vocab, generator=g, dtype=torch.float64)
    t = torch.randint(0, vocab, (tokens,), generator=g)
    t[3] = t[17] = -100
    return h.to(dtype), w.to(dtype), t, b.to(dtype)


def formula_loss(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, b: torch.Tensor | None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, reduction: str = "mean", z_loss: float = 0.0,
                 softcap: float | None = None) -> torch.Tensor:
    """The op's definition (docs/envelope.md#fused-linear-cross-entropy), written out plainly."""
    z = h @ w.T + (b if b is not None else 0)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=-1)
    kept = t != ignore_index
    safe = torch.where(kept, t, torch.zeros_like(t))
    eps, v = label_smoothing, z.shape[1]
    per = ((1 - eps) * (lse - z.gather(1, safe[:, None])[:, 0]) + eps / v * (lse[:, None] - z).sum(1)
           + z_loss * lse ** 2)
    per = torch.where(kept, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / kept.sum()


def _reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, b: torch.Tensor | None, dy: torch.Tensor,
               kw: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss and gradients in float64 through autograd of ``formula_loss``."""
    leaves = [x.detach().double().requires_grad_() for x in (h, w)]
    bl = b.detach().double().requires_grad_() if b is not None else None
    loss = formula_loss(leaves[0], leaves[1], t, bl, **kw)
    loss.backward(dy.double().reshape(loss.shape))
    return loss.detach(), leaves[0].grad, leaves[1].grad, bl.grad if bl is not None else None


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """|got - want| <= rel * max|want| elementwise (the tolerance a wrong formula breaks)."""
    scale = float(want.abs().max()) or 1.0
    err = float((got.double() - want).abs().max())
    assert err <= rel * scale, f"max error {err:.3g} > {rel:.1e} * {scale:.3g}"


def _dy(reduction: str, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    shape = (tokens,) if reduction == "none" else ()
    return (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}
"""Relative to the largest element: float64 work agrees to rounding; float32 to a few ulps of the
largest terms. A wrong formula (smoothing over V - 1 classes, a mean counting ignored tokens, a
missing softcap derivative or z-loss factor) is off by 1e-3 or more of it on these inputs."""


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("kw", KEYWORDS, ids=["plain", "smoothing", "zloss", "softcap", "all"])
def test_chunked_textbook_matches_the_formulas(dtype: torch.dtype, reduction: str, with_bias: bool, kw: dict) -> None:
    h, w, t, b = _inputs(dtype)
    bias = b if with_bias else None
    kw = {**kw, "reduction": reduction}
    dy = _dy(reduction, h.shape[0], dtype)
    loss = chunked.linear_cross_entropy(h, w, t, bias, **kw)
    dh, dw, db = chunked.linear_cross_entropy_backward(h, w, t, bias, dy, **kw)
    ref = _reference(h, w, t, bias, dy, kw)
    assert loss.dtype == dtype and dh.dtype == dtype and dw.dtype == dtype
    assert loss.shape == ref[0].shape
    for got, want in zip((loss, dh, dw, db), ref):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            _close(got, want, TOLERANCE[dtype])
    assert torch.all(dh[t == -100] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kw", KEYWORDS, ids=["plain", "smoothing", "zloss", "softcap", "all"])
def test_torch_eager_matches_the_formulas(dtype: torch.dtype, reduction: str, kw: dict) -> None:
    h, w, t, b = _inputs(dtype)
    kw = {**kw, "reduction": reduction}
    for bias in (None, b):
        dy = _dy(reduction, h.shape[0], dtype)
        leaves = [x.clone().requires_grad_() for x in (h, w)]
        bl = bias.clone().requires_grad_() if bias is not None else None
        loss = eager.linear_cross_entropy(leaves[0], leaves[1], t, bl, **kw)
        loss.backward(dy.reshape(loss.shape))
        ref = _reference(h, w, t, bias, dy, kw)
        assert loss.dtype == dtype and loss.shape == ref[0].shape
        for got, want in zip((loss.detach(), leaves[0].grad, leaves[1].grad, bl.grad if bl is not None else None), ref):
            assert (got is None) == (want is None)
            if got is not None and want is not None:
                _close(got, want, TOLERANCE[dtype])


def test_chunked_textbook_uses_several_chunks_and_rejects_bad_targets() -> None:
    h, w, t, b = _inputs(torch.float32, tokens=40)
    assert -(-h.shape[0] // chunked.CHUNK_TOKENS) >= 5
    bad = t.clone()
    bad[5] = w.shape[0]
    with pytest.raises(IndexError):
        chunked.linear_cross_entropy(h, w, bad, b)


def test_chunked_mean_over_only_ignored_tokens_is_nan() -> None:
    h, w, t, b = _inputs(torch.float32)
    loss = chunked.linear_cross_entropy(h, w, torch.full_like(t, -100), b)
    assert torch.isnan(loss)


def _example() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bf16_weight_grad_linear_ce",
                                                  ROOT / "examples" / "bf16_weight_grad_linear_ce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module", ["chunked", "example"])
def test_the_textbooks_allocate_on_their_inputs_device(module: str) -> None:
    """Every tensor they make is on the inputs' device: with the default device set to "meta", one
    made without ``device=`` lands there and mixing it with the CPU inputs raises (on an H200 the
    backward's accumulators were made on the CPU: "found at least two devices, cuda:0 and cpu")."""
    mod = chunked if module == "chunked" else _example()
    h, w, t, b = _inputs(torch.bfloat16)
    dy = torch.ones((), dtype=torch.bfloat16)
    with torch.device("meta"):
        loss = mod.linear_cross_entropy(h, w, t, b)
        grads = mod.linear_cross_entropy_backward(h, w, t, b, dy)
    assert loss.device.type == "cpu" and all(g.device.type == "cpu" for g in grads if g is not None)


def _max_ulp_bf16(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want| in bfloat16 ulps of want (bfloat16: 8 significant bits)."""
    want_np = want.numpy()
    _, e2 = np.frexp(want_np)
    ulp = np.ldexp(1.0, np.maximum(e2 - 1, -126) - 7)
    return float(np.max(np.abs(got.double().numpy() - want_np) / ulp))


def test_planted_example_loses_the_weight_gradient_in_bfloat16() -> None:
    example = _example()
    h, w, t, b = _inputs(torch.bfloat16, tokens=64, hidden=32, vocab=512, seed=3)
    dy = torch.tensor(1.0, dtype=torch.bfloat16)
    ref = _reference(h, w, t, b, dy, {"reduction": "sum"})
    good = chunked.linear_cross_entropy_backward(h, w, t, b, dy, reduction="sum")
    bad = example.linear_cross_entropy_backward(h, w, t, b, dy, reduction="sum")
    assert bad[1].dtype == torch.bfloat16
    assert torch.equal(good[0], bad[0]) and torch.equal(good[2], bad[2])  # only d_weight differs
    textbook, planted = _max_ulp_bf16(good[1], ref[2]), _max_ulp_bf16(bad[1], ref[2])
    # The textbook's error is its final rounding, plus float32 residue on cancelled elements.
    assert textbook <= 2.0
    assert planted >= 8 * max(textbook, 1.0), (textbook, planted)
    # In float32 the accumulator is the working precision: the example is the textbook.
    h32, w32, b32 = h.float(), w.float(), b.float()
    dy32 = dy.float()
    assert all(torch.equal(x, y) for x, y in zip(
        chunked.linear_cross_entropy_backward(h32, w32, t, b32, dy32)[:2],
        example.linear_cross_entropy_backward(h32, w32, t, b32, dy32)[:2]))


LIGER_KEYWORDS = {"plain": {}, "smoothing": {"label_smoothing": 0.1}, "zloss": {"z_loss": 1e-3},
                  "smoothing-zloss": {"label_smoothing": 0.1, "z_loss": 1e-3}}
LIGER_REDUCTIONS = ("none", "mean")

_LIGER_SCRIPT = """
import importlib.util, inspect, os, sys
from softaudit.candidates.loading import correct_interpreter_bfloat16, interpret_triton_on_cpu

interpret_triton_on_cpu()  # before triton is first imported, as softaudit's worker does
interpreted = os.environ.get("TRITON_INTERPRET") == "1"
if interpreted:
    correct_interpreter_bfloat16()
import torch

spec = importlib.util.spec_from_file_location("_liger_linear_ce_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
runs = torch.load(sys.argv[2])
out = {"interpreted": interpreted,
       "accepts_softcap": "softcap" in inspect.signature(module.linear_cross_entropy).parameters}
for key, (h, w, t, b, dy, kw) in runs.items():
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    loss = module.linear_cross_entropy(leaves[0], leaves[1], t, leaves[2], **kw)
    loss.backward(dy.reshape(loss.shape))
    out[key] = (loss.detach(), *(x.grad for x in leaves))
torch.save(out, sys.argv[3])
"""


@pytest.fixture(scope="module")
def liger(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """builtin:liger-linear-ce's loss and gradients for every (keywords, reduction) of the tests,
    computed in a fresh Python process, its kernels under Triton's CPU interpreter (with softaudit's
    bfloat16 correction) unless a GPU is there, as softaudit's worker runs it.

    A fresh process because Triton decides at a function's decoration whether it runs interpreted:
    once an earlier test has imported triton compiled in this process, an interpreted Liger kernel
    calling triton.language's own jitted helpers (tl.max) raises "Cannot call @triton.jit'd outside
    of the scope of a kernel" (the 8 failures of the full suite, green when the file ran alone)."""
    import subprocess

    for package in ("triton", "liger_kernel"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'softaudit[liger]')")
    tmp = tmp_path_factory.mktemp("liger")
    h, w, t, b = _inputs(torch.float32)
    runs = {(name, reduction): (h, w, t, b, _dy(reduction, h.shape[0], torch.float32), {**kw, "reduction": reduction})
            for name, kw in LIGER_KEYWORDS.items() for reduction in LIGER_REDUCTIONS}
    torch.save(runs, tmp / "runs.pt")
    script = ROOT / "softaudit" / "builtins" / "liger_linear_ce.py"
    done = subprocess.run([sys.executable, "-c", _LIGER_SCRIPT, str(script), str(tmp / "runs.pt"), str(tmp / "out.pt")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert done.returncode == 0, done.stderr[-3000:]
    return {"runs": runs, **torch.load(tmp / "out.pt")}


@pytest.mark.parametrize("reduction", LIGER_REDUCTIONS)
@pytest.mark.parametrize("name", list(LIGER_KEYWORDS))
def test_liger_matches_the_formulas(liger: dict, name: str, reduction: str) -> None:
    h, w, t, b, dy, kw = liger["runs"][name, reduction]
    ref = _reference(h, w, t, b, dy, kw)
    got = liger[name, reduction]  # loss, d_hidden, d_weight, d_bias
    assert len(got) == len(ref) == 4
    for g, want in zip(got, ref):
        assert g is not None and want is not None
        _close(g, want, 1e-5)


def test_liger_accepts_softcap_only_where_compiled(liger: dict) -> None:
    assert liger["accepts_softcap"] == (not liger["interpreted"])
