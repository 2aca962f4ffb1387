"""torch.softmax, torch.log_softmax, torch.logsumexp (dim=-1) and
torch.nn.functional.cross_entropy, as shipped.

What differs: nothing of ours. The input tensor is passed in its own dtype
(no upcast), so the audit sees how the framework itself handles float16 and
bfloat16 — including its bugs, such as float16 logsumexp over 65,536 zeros
returning inf (docs/calibration.md#what-it-finds-in-torch-213-cpu). cross_entropy passes every keyword through with
torch's own defaults. There are no explicit backward functions: all four
backward passes are audited through torch autograd, as training computes them.
"""

import torch
import torch.nn.functional as F


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=-1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
