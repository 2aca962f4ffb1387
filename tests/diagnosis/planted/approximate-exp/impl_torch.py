"""Torch softmax with a polynomial exponential on the float32 path (planted corpus)."""
import math

import torch

LN2 = math.log(2.0)
COEF = [1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720]


def _exp(t):
    if t.dtype == torch.float64:
        return torch.exp(t)
    k = torch.round(t / LN2)
    r = t - k * LN2
    acc = torch.full_like(r, COEF[-1])
    for c in reversed(COEF[:-1]):
        acc = acc * r + c
    return torch.where(t == float("-inf"), torch.zeros_like(t), torch.ldexp(acc, k.nan_to_num(0.0)))


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    e = _exp(w - w.amax(dim=dim, keepdim=True))
    return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)
