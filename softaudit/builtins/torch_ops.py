"""torch.softmax, torch.log_softmax and torch.logsumexp with dim=-1, as shipped.

What differs: nothing of ours. The input tensor is passed in its own dtype
(no upcast), so the audit sees how the framework itself handles float16 and
bfloat16 — including its bugs, such as float16 logsumexp over 65,536 zeros
returning inf (DESIGN §9).
"""

import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=-1)
