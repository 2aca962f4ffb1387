"""Planted: a float32 loss over logits rounded to the input's 16-bit dtype first (bf16 matmul output)."""

import torch
import torch.nn.functional as F


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, label_smoothing: float = 0.0,
                         reduction: str = "mean") -> torch.Tensor:
    work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden.to(work) @ weight.to(work).T
    if bias is not None:
        logits = logits + bias.to(work)
    logits = logits.to(hidden.dtype).to(work)   # the bug: every logit rounded to bfloat16/float16
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    return loss.to(hidden.dtype)
