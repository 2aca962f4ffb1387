"""The textbook fused linear cross-entropy, chunked over tokens in the Liger style, with every
intermediate in the working precision: the implementation the op's envelope models
(docs/envelope.md#fused-linear-cross-entropy).

What differs from builtin:torch-linear-ce: the ``tokens x vocabulary`` logits never exist at
once. The tokens are taken CHUNK_TOKENS at a time; for each chunk the logits
``h @ W.T + b`` are computed in the working precision (float32 for bfloat16, float16 and
float32 inputs: a float32 matmul on the exactly widened operands, so float32 accumulation;
float64 for float64), never rounded to a 16-bit format. The loss and dL/dlogits follow in the
same precision from a max-shifted log_softmax (its sum a cascade, torch.sum), d_hidden of the chunk is one matmul, and
d_weight and d_bias are accumulated across chunks in the working precision. Only the results
are rounded into the input's format, once, at the end.

Per token i (target t, not ignored), with z' the (softcapped) logits, lse = logsumexp(z'),
l = z' - lse, smoothing e over V classes, z-loss scale zl:

    loss_i = -(1 - e) l_t - (e / V) sum_c l_c + zl lse**2
    dL/dz'_c = (1 + 2 zl lse) p_c - (1 - e) [c = t] - e / V,   p = exp(l)
    dL/dz_c = dL/dz'_c (1 - tanh(z_c / s)**2)                   (softcap s)

an ignored token's loss and gradients are 0, and the mean divides by the number of
non-ignored tokens. The backward is explicit (``linear_cross_entropy_backward``): it recomputes
each chunk's logits, as fused kernels do instead of keeping them.
examples/bf16_weight_grad_linear_ce.py reuses ``chunks`` with a 16-bit weight-gradient
accumulator: the bug it plants.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

CHUNK_TOKENS = 8
"""Tokens per chunk: small, so that the library's 16- to 64-token cases have several chunks and
the accumulation across chunks is exercised (Liger sizes chunks by memory, often 1 token on a
CPU-sized case)."""


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The working precision for inputs of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Chunk:
    """One chunk of tokens in the working precision: its per-token loss and dL/dlogits."""

    rows: slice
    """The chunk's tokens."""
    hidden: torch.Tensor
    """(chunk, D): the chunk's hidden states, widened exactly to the working precision."""
    loss: torch.Tensor
    """(chunk,): each token's loss; 0 for an ignored token."""
    kept: torch.Tensor
    """(chunk,) bool: the token is not ignored."""
    grad: torch.Tensor | None
    """(chunk, V): dL_i/dz_ic with the upstream gradient applied (0 rows for ignored tokens);
    None when the gradient was not asked for."""


def chunks(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
           ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
           upstream: torch.Tensor | None = None) -> Iterator[Chunk]:
    """The chunks in order; ``upstream`` (tokens,) in the working precision, the gradient's
    per-token scale g_i, asks for dL/dlogits too."""
    work = working_dtype(hidden.dtype)
    w = weight.to(work)
    b = bias.to(work) if bias is not None else None
    tokens, vocabulary = hidden.shape[0], weight.shape[0]
    eps = float(label_smoothing)
    for start in range(0, tokens, CHUNK_TOKENS):
        rows = slice(start, min(start + CHUNK_TOKENS, tokens))
        h = hidden[rows].to(work)
        z = h @ w.T
        if b is not None:
            z = z + b
        squash = None
        if softcap is not None:
            t = torch.tanh(z / softcap)
            squash = 1 - t * t
            z = softcap * t
        # The max-shifted log_softmax written out: torch.sum adds in a cascade (error ~ log n), where
        # torch.log_softmax's CPU kernel adds lane by lane (error ~ n / lanes: docs/calibration.md).
        a = z.max(dim=-1, keepdim=True).values
        shifted = z - a
        e = torch.exp(shifted)
        s = e.sum(dim=-1, keepdim=True)
        log_s = torch.log(s)
        logp = shifted - log_s
        lse = (a + log_s)[:, 0]
        tgt = target[rows]
        kept = tgt != ignore_index
        if bool(((tgt < 0) | (tgt >= vocabulary))[kept].any()):
            raise IndexError(f"target out of range [0, {vocabulary}) (and not ignore_index {ignore_index})")
        safe = torch.where(kept, tgt, torch.zeros_like(tgt))
        picked = torch.arange(tgt.shape[0], device=tgt.device)
        loss = -logp[picked, safe]
        if eps != 0:
            loss = (1 - eps) * loss - eps * logp.mean(dim=-1)
        if z_loss != 0:
            loss = loss + z_loss * lse * lse
        loss = torch.where(kept, loss, torch.zeros_like(loss))
        grad = None
        if upstream is not None:
            p = e / s
            if z_loss != 0:
                p = (1 + 2 * z_loss * lse)[:, None] * p
            if eps != 0:
                p = p - eps / vocabulary
            p[picked, safe] -= 1 - eps
            if squash is not None:
                p = p * squash
            g = torch.where(kept, upstream[rows], torch.zeros_like(upstream[rows]))
            grad = p * g[:, None]
        yield Chunk(rows, h, loss, kept, grad)


def upstream_scale(dy: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
                   work: torch.dtype) -> torch.Tensor:
    """g_i per token in the working precision: dy_i ("none"), dy ("sum"), dy / N ("mean")."""
    tokens = target.shape[0]
    d = dy.to(work)
    if reduction == "none":
        return d.reshape(tokens)
    g = d.reshape(())
    if reduction == "mean":
        g = g / (target != ignore_index).sum().to(work)
    return g.expand(tokens)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, label_smoothing: float = 0.0,
                         reduction: str = "mean", z_loss: float = 0.0, softcap: float | None = None) -> torch.Tensor:
    with torch.no_grad():
        losses = [c.loss for c in chunks(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap)]
        loss = torch.cat(losses)
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / (target != ignore_index).sum().to(loss.dtype)
        return loss.to(hidden.dtype)


def linear_cross_entropy_backward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                  bias: torch.Tensor | None, dy: torch.Tensor, ignore_index: int = -100,
                                  label_smoothing: float = 0.0, reduction: str = "mean", z_loss: float = 0.0,
                                  softcap: float | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        work = working_dtype(hidden.dtype)
        w = weight.to(work)
        g = upstream_scale(dy, target, ignore_index, reduction, work)
        d_hidden = torch.zeros(hidden.shape, dtype=work, device=hidden.device)
        d_weight = torch.zeros(weight.shape, dtype=work, device=weight.device)
        d_bias = torch.zeros(weight.shape[0], dtype=work, device=weight.device) if bias is not None else None
        for c in chunks(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, g):
            assert c.grad is not None
            d_hidden[c.rows] = c.grad @ w
            d_weight += c.grad.T @ c.hidden
            if d_bias is not None:
                d_bias += c.grad.sum(dim=0)
        return (d_hidden.to(hidden.dtype), d_weight.to(weight.dtype),
                d_bias.to(bias.dtype) if d_bias is not None and bias is not None else None)
