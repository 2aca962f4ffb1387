"""Torch cross-entropy: nll plus eps times the mean of -log p, summed over the classes first (planted corpus)."""
import torch
import torch.nn.functional as F


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    x = logits.float() if logits.element_size() < 4 else logits
    logp = F.log_softmax(x, dim=-1)
    n = x.shape[-1]
    w = torch.ones(n, dtype=x.dtype) if weight is None else weight.to(x.dtype)
    smooth = (-(logp * w)).sum(-1) / n                 # the plain sum overflows over finfo.min logits
    if target.dim() == 2:
        q = target.to(x.dtype)
        hard = torch.where(q != 0, -q * w * logp, torch.zeros_like(logp)).sum(-1)
        kept = torch.ones(x.shape[0], dtype=torch.bool)
        denom = torch.tensor(float(x.shape[0]), dtype=x.dtype)
    else:
        t = target.long()
        kept = t != ignore_index
        if bool((kept & ((t < 0) | (t >= n))).any()):
            raise IndexError("target out of range")
        tc = torch.where(kept, t, torch.zeros_like(t))
        hard = -w[tc] * logp.gather(1, tc[:, None])[:, 0]
        denom = torch.where(kept, w[tc], torch.zeros_like(hard)).sum()
    loss = (1 - label_smoothing) * hard + (label_smoothing * smooth if label_smoothing else 0)
    loss = torch.where(kept, loss, torch.zeros_like(hard))
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum()
    return (total if reduction == "sum" else total / denom).to(logits.dtype)
