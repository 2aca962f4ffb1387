"""Judging: how a candidate's output is held to its exact reference (the envelopes, the element
metrics, the verdict tiers) and the one (op, direction) table the audit loop and reproduce share."""
