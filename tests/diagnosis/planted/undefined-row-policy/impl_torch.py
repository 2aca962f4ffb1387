"""Torch softmax over scores floored at the format's lowest value (planted corpus)."""
import torch


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    w = torch.where(w == float("-inf"), torch.finfo(x.dtype).min, w)
    top = w.amax(dim=dim, keepdim=True)
    e = (w - top).exp()
    return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)
