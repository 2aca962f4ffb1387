"""Liger-Kernel's fused linear cross-entropy (LigerFusedLinearCrossEntropyFunction), as shipped:
what LLM trainers swap in for ``lm_head`` + F.cross_entropy.

What differs: nothing of ours. Our keywords map onto Liger's own: z_loss -> lse_square_scale
(Liger adds ``lse_square_scale * lse**2`` to every non-ignored token's loss, the mean dividing it
by the number of non-ignored tokens, as the op defines), softcap -> softcap (``softcap *
tanh(logits / softcap)``), ignore_index, label_smoothing and reduction as they are. Liger's
other options are left at their defaults: no class weights (``ce_weight``), return_z_loss,
return_token_accuracy and return_predicted_tokens off (they only add outputs), no token
scaling, and ``accum_dtype=None``, so the weight and bias gradients are accumulated across
chunks in the parameters' own dtype.

How it computes (liger-kernel 0.8.5, liger_kernel/ops/fused_linear_cross_entropy.py): the
tokens are taken in chunks sized so that a chunk's logits take about as much memory as the
hidden states (``next_power_of_2(ceil(T / ceil(V / H)))`` tokens: one token at a time on most
CPU-sized cases). Each chunk's logits are a torch matmul in the input's dtype, so 16-bit logits
are rounded to 16 bits; Liger's Triton cross-entropy kernel reads them into float32, computes
the loss in float32 and writes dL/dlogits back over the logits, in the logits' dtype; d_hidden is
that gradient times the weight in the input's dtype, and d_weight and d_bias are summed chunk by
chunk into buffers of the parameters' dtype. For "mean" and "sum" the gradients are computed
during the forward and scaled by the upstream gradient in the backward; for "none" the backward
recomputes the chunks with the per-token upstream gradient folded in first. The loss comes back
in float32 whatever the input's format (softaudit rounds it into the format, with a note).

Backward through torch autograd, as training computes it. Interpreted on a CPU (softaudit
switches Triton's interpreter on for a library's kernels, with its bfloat16 correction),
compiled on a GPU. Needs the ``liger`` extra (``pip install 'softaudit[liger]'``, with triton).

Softcap only where the kernels are compiled. Triton 3.9's CPU interpreter cannot run Liger's
softcap branch: it passes a float argument to the kernel as a Python float (``softcap.to``
raises AttributeError; a GPU receives a float32 scalar), and it does not implement
``triton.language.extra.libdevice.tanh``, whose stub returns None. Interpreted, the function
therefore does not accept ``softcap``, and the softcap cases are SKIPs saying so; on a GPU they
are audited.
"""

import os

import torch
from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Liger's kernels run under Triton's CPU interpreter (softaudit sets it before the import)."""


def _liger(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
           ignore_index: int, label_smoothing: float, reduction: str, z_loss: float,
           softcap: float | None) -> torch.Tensor:
    """Liger's loss for our keywords (apply() takes its arguments positionally: _input, weight,
    target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
    return_z_loss, accum_dtype, ...)."""
    loss, _, _, _ = LigerFusedLinearCrossEntropyFunction.apply(hidden, weight, target, bias, None, ignore_index,
                                                               z_loss, label_smoothing, reduction, softcap, False,
                                                               None)
    return loss


def _compiled(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None,
              ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean", z_loss: float = 0.0,
              softcap: float | None = None) -> torch.Tensor:
    """Liger's fused linear cross-entropy, every keyword of the op."""
    return _liger(hidden, weight, target, bias, ignore_index, label_smoothing, reduction, z_loss, softcap)


def _interpreted(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None,
                 ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                 z_loss: float = 0.0) -> torch.Tensor:
    """Liger's fused linear cross-entropy under Triton's interpreter: no softcap (see above)."""
    return _liger(hidden, weight, target, bias, ignore_index, label_smoothing, reduction, z_loss, None)


linear_cross_entropy = _interpreted if INTERPRETED else _compiled
