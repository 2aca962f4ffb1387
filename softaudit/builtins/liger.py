"""Liger-Kernel's Triton softmax and cross-entropy (LigerSoftmaxFunction,
LigerCrossEntropyFunction), as shipped: what LLM trainers swap in for torch's.

What differs: nothing of ours. Both are torch autograd Functions over Liger's own Triton
kernels, so the backward passes are audited through autograd, as training computes them.
Interpreted on a CPU (softaudit switches Triton's interpreter on for a library's kernels too,
with its bfloat16 correction), compiled on a GPU.

cross_entropy passes every option Liger shares with torch.nn.functional.cross_entropy: weight,
ignore_index, label_smoothing, reduction ("mean", "sum", "none"). Liger's other options change
the loss away from torch's semantics (lse_square_scale adds a z-loss, softcap squashes the
logits) or only add outputs (return_z_loss, return_token_accuracy, return_predicted_tokens):
they are left at their defaults. Liger takes class-index targets only (the probability-target
probe fails, so those cases are skipped).

In place by design: Liger's cross-entropy forward overwrites its logits argument with the
gradient (to save memory). It is given a copy (``logits.clone()``, through which autograd
still reaches the caller's tensor), so softaudit's check that inputs are left intact holds
and the gradient is the one Liger computed.

Needs the ``liger`` extra (``pip install 'softaudit[liger]'``, with triton). Findings:
docs/real-world-findings.md.
"""

import torch
from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
from liger_kernel.ops.softmax import LigerSoftmaxFunction


def softmax(x: torch.Tensor) -> torch.Tensor:
    return LigerSoftmaxFunction.apply(x)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    # apply() takes its arguments positionally: input, target, weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction, softcap, return_z_loss, return_token_accuracy, return_predicted_tokens.
    loss, _, _, _ = LigerCrossEntropyFunction.apply(logits.clone(), target, weight, ignore_index, 0.0,
                                                    label_smoothing, reduction, None, False, False, False)
    return loss
