"""The ops softaudit audits, the two directions of each, and the names that go with them."""

OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy")
"""Forward ops, in the order they are reported."""

DIRECTIONS = ("forward", "backward")
"""forward: the op itself; backward: its vector-Jacobian product with an upstream gradient."""

LOSS_KEYWORDS = ("label_smoothing", "ignore_index", "weight", "reduction")
"""Keyword arguments of cross_entropy (torch.nn.functional.cross_entropy's names), passed only when accepted."""

REDUCTIONS = ("none", "mean", "sum")
TARGET_KINDS = ("index", "probability")


def backward_name(op: str) -> str:
    """The name of an op's explicit backward function in a candidate file (softmax -> softmax_backward)."""
    return f"{op}_backward"


BACKWARD_FUNCTIONS = {backward_name(op): op for op in OPS}
"""Explicit backward function name -> its forward op."""
