"""Planted: the unfused loss, logits from a matmul in the input's dtype (rounded to 16 bits), autograd."""

from softaudit.builtins.torch_linear_ce import linear_cross_entropy

__all__ = ["linear_cross_entropy"]
