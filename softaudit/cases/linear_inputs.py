"""The inputs of the fused linear cross-entropy (op ``linear_cross_entropy``): hidden states, the
output projection's weight and bias, class-index targets and the loss's keywords.

The op is ``cross_entropy(hidden @ weight.T + bias, target, ...)`` taken exactly, with Liger's z-loss
(``z_loss * lse**2`` per non-ignored token) and Gemma's softcap (``softcap * tanh(logits / softcap)``)
(docs/linear-cross-entropy.md). Every array holds values exactly representable in the case's
format, stored in that format's numpy dtype, as ``LossInputs`` does for the logits' neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearLossInputs:
    """One case's inputs of ``linear_cross_entropy`` in one format."""

    hidden: np.ndarray
    """(tokens, hidden size) in ``fmt.np_dtype``."""
    weight: np.ndarray
    """(vocabulary, hidden size) in ``fmt.np_dtype``: the output projection, one row per class."""
    bias: np.ndarray | None
    """(vocabulary,) in ``fmt.np_dtype``, or None: no bias."""
    target: np.ndarray
    """(tokens,) int64: class indices, or ``ignore_index`` for an ignored (padding) token."""
    ignore_index: int = -100
    """Tokens whose target equals it contribute 0 to the loss and get zero gradients."""
    label_smoothing: float = 0.0
    """In [0, 1): torch's label smoothing over the vocabulary."""
    reduction: str = "mean"
    """"none" | "mean" | "sum"; the mean divides by the number of non-ignored tokens."""
    z_loss: float = 0.0
    """>= 0: the per-token term ``z_loss * lse**2`` (lse of the (softcapped) logits), non-ignored tokens only."""
    softcap: float | None = None
    """> 0 or None: the logits become ``softcap * tanh(logits / softcap)`` before the loss."""

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def vocabulary(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.hidden.shape[1])

    def keywords(self) -> dict[str, object]:
        """The keyword arguments of a call: ignore_index and reduction always; label_smoothing,
        z_loss and softcap when they are not their neutral values."""
        kw: dict[str, object] = {"ignore_index": self.ignore_index, "reduction": self.reduction}
        if self.label_smoothing != 0:
            kw["label_smoothing"] = self.label_smoothing
        if self.z_loss != 0:
            kw["z_loss"] = self.z_loss
        if self.softcap is not None:
            kw["softcap"] = self.softcap
        return kw
