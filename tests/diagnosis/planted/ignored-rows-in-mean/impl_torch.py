"""Torch cross-entropy: per-row losses, reduced by hand (planted corpus)."""
import torch
import torch.nn.functional as F


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    w = None if weight is None else weight.double()
    if target.dim() == 1:
        per_row = F.cross_entropy(logits.double(), target, weight=w, ignore_index=ignore_index,
                                  reduction="none", label_smoothing=label_smoothing)
    else:
        n = logits.shape[-1]
        coef = (1 - label_smoothing) * target.double() + label_smoothing / n
        if w is not None:
            coef = coef * w
        logp = F.log_softmax(logits.double(), dim=-1)
        per_row = torch.where(coef != 0, -coef * logp, torch.zeros_like(logp)).sum(-1)
    if reduction == "none":
        out = per_row
    elif reduction == "sum":
        out = per_row.sum()
    else:
        out = per_row.mean()
    return out.to(logits.dtype)
