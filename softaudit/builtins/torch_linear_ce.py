"""Fused linear cross-entropy left unfused: torch's eager matmul, then F.cross_entropy, as a
training loop without a fused loss computes ``cross_entropy(hidden @ weight.T + bias, target)``.

What differs from builtin:torch-chunked-linear-ce: everything stays in the input's dtype. The
logits are ``hidden @ weight.T`` (+ bias) as torch returns them: torch's CPU matmul accumulates
16-bit products in float32, then rounds every logit to bfloat16 or float16 before the loss
sees it, and autograd rounds the logits' gradient to that format again before the two
matmuls of the backward. F.cross_entropy takes ignore_index, label_smoothing and reduction.
torch has no z-loss or softcap, so they are written out in torch, in the same dtype, as
Gemma's and PaLM's training code does: the logits become ``softcap * tanh(logits / softcap)``
before the loss, and ``z_loss * logsumexp(logits)**2`` is added to every non-ignored token's
loss (the mean divides by the number of non-ignored tokens, as F.cross_entropy's does).

No explicit backward: d_hidden, d_weight and d_bias come from torch autograd, as training
computes them.
"""

import torch
import torch.nn.functional as F


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, label_smoothing: float = 0.0,
                         reduction: str = "mean", z_loss: float = 0.0, softcap: float | None = None) -> torch.Tensor:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if z_loss == 0:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    per_token = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none",
                                label_smoothing=label_smoothing)
    kept = target != ignore_index
    lse = torch.logsumexp(logits, dim=-1)
    per_token = per_token + torch.where(kept, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    return total if reduction == "sum" else total / kept.sum()
