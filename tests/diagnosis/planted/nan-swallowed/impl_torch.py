"""Torch softmax with nan-aware reductions (planted corpus)."""
import torch


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    top = torch.nan_to_num(w, nan=float("-inf")).amax(dim=dim, keepdim=True)
    e = torch.exp(w - top)
    return (e / torch.nansum(e, dim=dim, keepdim=True)).to(x.dtype)
