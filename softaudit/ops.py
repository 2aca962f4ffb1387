"""The ops softaudit audits, the two directions of each, and the names that go with them."""

SOFTMAX_FAMILY = ("softmax", "log_softmax", "logsumexp", "cross_entropy")
"""The ops over (rows, n) logits: the library's row cases apply to them."""

LINEAR_CROSS_ENTROPY = "linear_cross_entropy"
"""The fused linear cross-entropy, CE(hidden @ weight.T + bias, target): its own inputs and cases
(docs/linear-cross-entropy.md)."""

OPS = (*SOFTMAX_FAMILY, LINEAR_CROSS_ENTROPY)
"""Forward ops, in the order they are reported."""

DIRECTIONS = ("forward", "backward")
"""forward: the op itself; backward: its vector-Jacobian product with an upstream gradient."""

LOSS_KEYWORDS = ("label_smoothing", "ignore_index", "weight", "reduction")
"""Keyword arguments of cross_entropy (torch.nn.functional.cross_entropy's names), passed only when accepted."""

LINEAR_KEYWORDS = ("ignore_index", "label_smoothing", "reduction", "z_loss", "softcap")
"""Keyword arguments of linear_cross_entropy (Liger's names), passed only when accepted."""

REDUCTIONS = ("none", "mean", "sum")
TARGET_KINDS = ("index", "probability")


def backward_name(op: str) -> str:
    """The name of an op's explicit backward function in a candidate file (softmax -> softmax_backward)."""
    return f"{op}_backward"


BACKWARD_FUNCTIONS = {backward_name(op): op for op in OPS}
"""Explicit backward function name -> its forward op."""


def keywords_of(op: str) -> tuple[str, ...]:
    """The keywords a function of ``op`` (forward or backward) may accept: the loss keywords, or none."""
    op = BACKWARD_FUNCTIONS.get(op, op)
    if op == "cross_entropy":
        return LOSS_KEYWORDS
    if op == LINEAR_CROSS_ENTROPY:
        return LINEAR_KEYWORDS
    return ()
