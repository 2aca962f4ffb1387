"""Torch log-probabilities with a small floor (planted corpus)."""
import torch


def log_softmax(x, dim=-1):
    w = x.double()
    e = torch.exp(w - w.amax(dim=dim, keepdim=True))
    p = e / e.sum(dim=dim, keepdim=True)
    return torch.log(p.clamp_min(1e-30)).to(x.dtype)
