"""Torch softmax family entirely in the input's dtype (planted corpus)."""
import torch


def softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def logsumexp(x, dim=-1):
    m = x.amax(dim, keepdim=True)
    m = torch.where(m.isinf(), torch.zeros_like(m), m)
    return (m + torch.exp(x - m).sum(dim, keepdim=True).log()).squeeze(dim)


def log_softmax(x, dim=-1):
    z = x - x.amax(dim, keepdim=True)
    return z - torch.exp(z).sum(dim, keepdim=True).log()
