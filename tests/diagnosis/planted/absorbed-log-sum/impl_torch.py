"""Torch log-probabilities via the built-in logsumexp (planted corpus)."""
import torch


def _w(x):
    return x.float() if x.element_size() < 4 else x


def log_softmax(x, dim=-1):
    w = _w(x)
    return (w - torch.logsumexp(w, dim=dim, keepdim=True)).to(x.dtype)


def cross_entropy(logits, target):
    w = _w(logits)
    picked = w.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (torch.logsumexp(w, 1) - picked).to(logits.dtype)
