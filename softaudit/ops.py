"""The ops softaudit audits, in the order it reports them."""

OPS = ("softmax", "log_softmax", "logsumexp")
