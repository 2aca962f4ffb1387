"""A torch.compile'd softmax and log_softmax: auditing what the compiler generated, not the eager code.

    softaudit run examples/torch_compile_softmax.py --device cpu     # Inductor's C++ (needs a C++ compiler)
    softaudit run examples/torch_compile_softmax.py --device cuda    # Inductor's Triton kernels

torch.compile fuses the max, exp, sum and division into generated kernels whose arithmetic
(accumulation order, precision of the intermediates, the exp it calls) is the compiler's, so
an eager implementation that passes says little about its compiled form: audit the compiled
function itself. The source is the textbook algorithm, upcast to float32 for 16-bit inputs.
``dynamic=True`` compiles one kernel per format for every row length (the case library has
dozens) instead of one per shape; the first call per format still compiles (seconds).
Backward passes go through autograd on the compiled graph (AOTAutograd).
"""

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.compile(dynamic=True)
def _softmax(x: torch.Tensor) -> torch.Tensor:
    w = _upcast(x)
    e = torch.exp(w - w.amax(dim=-1, keepdim=True))
    return (e / e.sum(dim=-1, keepdim=True)).to(x.dtype)


@torch.compile(dynamic=True)
def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    w = _upcast(x)
    z = w - w.amax(dim=-1, keepdim=True)
    return (z - torch.log(torch.exp(z).sum(dim=-1, keepdim=True))).to(x.dtype)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return _softmax(x)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return _log_softmax(x)
