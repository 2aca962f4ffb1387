"""Torch log-softmax that accumulates 4 columns at a time, left to right (planted corpus)."""
import torch

STEP = 4


def _total(e):
    rows, n = e.shape
    pad = (-n) % STEP
    if pad:
        e = torch.cat([e, e.new_zeros(rows, pad)], 1)
    view = e.view(rows, -1, STEP)
    run = torch.zeros(rows, STEP, dtype=e.dtype)
    for k in range(view.shape[1]):
        run += view[:, k, :]
    out = run[:, 0]
    for k in range(1, STEP):
        out = out + run[:, k]
    return out


def log_softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    z = w - w.max(dim=-1, keepdim=True).values
    return (z - torch.log(_total(torch.exp(z)))[:, None]).to(x.dtype)


def logsumexp(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    m = w.max(dim=-1).values
    m = torch.where(m.isinf(), torch.zeros_like(m), m)
    return (m + torch.log(_total(torch.exp(w - m[:, None])))).to(x.dtype)
