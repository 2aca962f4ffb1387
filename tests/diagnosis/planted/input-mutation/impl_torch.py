"""Torch softmax working in place (planted corpus)."""
import torch


def softmax(x, dim=-1):
    if x.requires_grad:
        x = x.clone()
    w = x if x.element_size() >= 4 else x.float()
    w.sub_(w.amax(dim=dim, keepdim=True))
    if w is not x:
        x.copy_(w)
    w.exp_()
    return (w / w.sum(dim=dim, keepdim=True)).to(x.dtype)
