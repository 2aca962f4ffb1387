"""Softmax in torch, computed in double precision (planted corpus)."""
import torch


class _Kernel:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        num = x.double().exp()
        den = num.sum(dim=-1, keepdim=True)
        return (num / den).to(x.dtype)


_k = _Kernel()


def softmax(x):
    return _k(x)


def logsumexp(x):
    return x.double().exp().sum(-1).log().to(x.dtype)
