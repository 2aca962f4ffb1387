"""Torch log-probabilities (planted corpus)."""
import torch
import torch.nn.functional as F


def _w(x):
    return x.float() if x.element_size() < 4 else x


def log_softmax(x, dim=-1):
    return torch.softmax(_w(x), dim=dim).log().to(x.dtype)


def cross_entropy(logits, target):
    logp = torch.log(F.softmax(_w(logits), dim=1))
    return F.nll_loss(logp, target.long(), reduction="none").to(logits.dtype)
