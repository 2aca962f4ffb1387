"""Torch softmax through the log domain (planted corpus)."""
import torch


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    top = w.amax(dim=dim, keepdim=True)
    norm = top + (w - top).exp().sum(dim=dim, keepdim=True).log()
    return torch.exp(w - norm).to(x.dtype)
