"""Torch cross-entropy, soft targets by hand (planted corpus)."""
import torch
import torch.nn.functional as F


def cross_entropy(logits, target):
    w = logits.double()
    logq = F.log_softmax(w, dim=1)
    if target.dim() == 1:
        out = -logq.gather(1, target.long()[:, None])[:, 0]
    else:
        out = torch.einsum("rc,rc->r", target.double(), -logq)
    return out.to(logits.dtype)
