"""Torch log-softmax with an 8-lane accumulator in the tensor's dtype (planted corpus)."""
import torch

LANES = 8


def _lane_sum(e, dtype):
    rows, n = e.shape
    pad = (-n) % LANES
    if pad:
        e = torch.cat([e, e.new_zeros(rows, pad)], dim=1)
    blocks = e.to(dtype).view(rows, -1, LANES)
    acc = torch.zeros(rows, LANES, dtype=dtype)
    for j in range(blocks.shape[1]):
        acc = acc + blocks[:, j]
    return acc.float().sum(-1)


def log_softmax(x, dim=-1):
    half = x.element_size() < 4
    w = x.float() if half else x
    z = w - w.amax(-1, keepdim=True)
    e = torch.exp(z)
    s = (_lane_sum(e, x.dtype) if half else e.double().sum(-1)).to(w.dtype)
    return (z - s.log()[:, None]).to(x.dtype)
