"""Streaming log-softmax in torch over blocks of 512 columns (planted corpus)."""
import torch

BLOCK = 512


def _running(w):
    mx = torch.full(w.shape[:-1], float("-inf"), dtype=w.dtype)
    acc = torch.zeros(w.shape[:-1], dtype=w.dtype)
    start = 0
    while start < w.shape[-1]:
        chunk = w[..., start:start + BLOCK]
        new_mx = torch.maximum(mx, chunk.amax(-1))
        acc = acc * torch.exp(mx - new_mx) + torch.exp(chunk - new_mx[..., None]).sum(-1)
        mx = new_mx
        start += BLOCK
    return mx, acc


def log_softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    mx, acc = _running(w)
    return (w - mx[..., None] - acc.log()[..., None]).to(x.dtype)


def logsumexp(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    mx, acc = _running(w)
    return (mx + acc.log()).to(x.dtype)
