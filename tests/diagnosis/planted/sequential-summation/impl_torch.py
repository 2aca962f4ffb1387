"""Torch log-softmax whose row sum runs left to right over 4 lanes (planted corpus)."""
import torch

LANES = 4


class _RowSum(torch.autograd.Function):
    """sum over the last axis, accumulated lane by lane; its gradient is exact (ones)."""

    @staticmethod
    def forward(ctx, e):
        rows, n = e.shape
        ctx.n = n
        pad = (-n) % LANES
        if pad:
            e = torch.cat([e, e.new_zeros(rows, pad)], 1)
        view = e.view(rows, -1, LANES)
        run = torch.zeros(rows, LANES, dtype=e.dtype)
        for k in range(view.shape[1]):
            run += view[:, k, :]
        return run.sum(-1)

    @staticmethod
    def backward(ctx, g):
        return g[:, None].expand(-1, ctx.n)


def softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    e = torch.exp(w - w.max(dim=-1, keepdim=True).values.detach())
    return (e / _RowSum.apply(e)[:, None]).to(x.dtype)


def log_softmax(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    z = w - w.max(dim=-1, keepdim=True).values.detach()
    return (z - torch.log(_RowSum.apply(torch.exp(z)))[:, None]).to(x.dtype)


def logsumexp(x, dim=-1):
    w = x.float() if x.element_size() < 4 else x
    m = w.max(dim=-1).values.detach()
    m = torch.where(m.isinf(), torch.zeros_like(m), m)
    return (m + torch.log(_RowSum.apply(torch.exp(w - m[:, None])))).to(x.dtype)
