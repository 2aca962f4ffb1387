"""A chunked fused linear cross-entropy with a classic bug: the weight gradient is accumulated
across chunks in the parameter's 16-bit dtype.

Run it:  softaudit run examples/bf16_weight_grad_linear_ce.py --op linear_cross_entropy

Everything else is builtin:torch-chunked-linear-ce, the textbook (float32 logits, loss and
dL/dlogits per chunk of tokens, d_hidden and d_bias in float32). Only the d_weight accumulator
differs: it is allocated like the weight (``torch.zeros_like(weight)``), so for bfloat16 and
float16 weights each chunk's float32 contribution G_chunk.T @ h_chunk is added into a 16-bit
running sum and rounded there, once per chunk. With T tokens in chunks of CHUNK_TOKENS, every
element of d_weight takes T / CHUNK_TOKENS roundings of half a 16-bit ulp of its partial sum,
and an element whose partial sums cancel (tokens pulling a class's weight row in opposite
directions) loses more ulps of its small final value. This is Liger-Kernel's fused linear
cross-entropy with its default ``accum_dtype=None`` (docs/real-world-findings.md). In float32
and float64 the accumulator is the working precision and the example is the textbook.

It must FAIL in bfloat16 with a finding that names the weight gradient.
"""

import torch

from softaudit.builtins.torch_chunked_linear_ce import chunks, linear_cross_entropy, upstream_scale, working_dtype

__all__ = ["linear_cross_entropy", "linear_cross_entropy_backward"]


def linear_cross_entropy_backward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                  bias: torch.Tensor | None, dy: torch.Tensor, ignore_index: int = -100,
                                  label_smoothing: float = 0.0, reduction: str = "mean", z_loss: float = 0.0,
                                  softcap: float | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        work = working_dtype(hidden.dtype)
        w = weight.to(work)
        g = upstream_scale(dy, target, ignore_index, reduction, work)
        d_hidden = torch.zeros(hidden.shape, dtype=work, device=hidden.device)
        d_weight = torch.zeros_like(weight)  # the bug: a bfloat16 accumulator for bfloat16 weights
        d_bias = torch.zeros(weight.shape[0], dtype=work, device=weight.device) if bias is not None else None
        for c in chunks(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, g):
            assert c.grad is not None
            d_hidden[c.rows] = c.grad @ w
            d_weight += c.grad.T @ c.hidden  # computed in float32, rounded to the accumulator's dtype
            if d_bias is not None:
                d_bias += c.grad.sum(dim=0)
        return (d_hidden.to(hidden.dtype), d_weight,
                d_bias.to(bias.dtype) if d_bias is not None and bias is not None else None)
