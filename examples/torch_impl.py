"""A hand-written torch softmax, log_softmax and logsumexp.

Shows a torch candidate without boilerplate: the functions use torch, so the
auditor passes them torch tensors (on the CPU unless told otherwise), and the
``dim`` parameter receives -1. 16-bit inputs are computed in float32 and
rounded back once, the way fused GPU kernels do it.

    softaudit run examples/torch_impl.py
"""

import torch


def _upcast(x):
    """16-bit inputs are computed in float32; wider ones as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def softmax(x, dim=-1):
    w = _upcast(x)
    e = torch.exp(w - w.amax(dim, keepdim=True))
    return (e / e.sum(dim, keepdim=True)).to(x.dtype)


def log_softmax(x, dim=-1):
    w = _upcast(x)
    z = w - w.amax(dim, keepdim=True)
    return (z - torch.log(torch.exp(z).sum(dim, keepdim=True))).to(x.dtype)


def logsumexp(x, dim=-1):
    w = _upcast(x)
    m = w.amax(dim, keepdim=True)
    # Shift by 0 where the max is infinite, so masked rows give -inf and +inf rows +inf.
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return (m.squeeze(dim) + torch.log(torch.exp(w - m).sum(dim))).to(x.dtype)
