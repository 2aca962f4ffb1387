"""Torch softmax working in place (planted corpus)."""
import torch


def softmax(x, dim=-1):
    if x.requires_grad:   # autograd forbids writing into a leaf: the plain formula there
        w = x.double()
        e = torch.exp(w - w.amax(dim=dim, keepdim=True).detach())
        return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)
    w = x if x.element_size() >= 4 else x.float()
    w.sub_(w.amax(dim=dim, keepdim=True))
    if w is not x:
        x.copy_(w)
    w.exp_()
    return (w / w.sum(dim=dim, keepdim=True)).to(x.dtype)
