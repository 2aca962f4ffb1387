"""Planted: the weight and bias gradients accumulated token by token in the parameters' 16-bit dtype."""

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
        d_hidden = torch.zeros(hidden.shape, dtype=work)
        d_weight = torch.zeros_like(weight)
        d_bias = torch.zeros_like(bias) if bias is not None else None
        for c in chunks(hidden, weight, target, bias, ignore_index, label_smoothing, z_loss, softcap, g):
            assert c.grad is not None
            d_hidden[c.rows] = c.grad @ w
            for i in range(c.grad.shape[0]):
                d_weight += torch.outer(c.grad[i], c.hidden[i])
                if d_bias is not None:
                    d_bias += c.grad[i]
        return d_hidden.to(hidden.dtype), d_weight, d_bias
