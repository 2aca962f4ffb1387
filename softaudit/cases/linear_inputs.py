"""The inputs of the fused linear cross-entropy (op ``linear_cross_entropy``): hidden states, the
output projection's weight and bias, class-index targets and the loss's keywords.

The op is ``cross_entropy(hidden @ weight.T + bias, target, ...)`` taken exactly, with Liger's z-loss
(``z_loss * lse**2`` per non-ignored token) and Gemma's softcap (``softcap * tanh(logits / softcap)``)
(docs/linear-cross-entropy.md). Every array holds values exactly representable in the case's
format, stored in that format's numpy dtype, as ``LossInputs`` does for the logits' neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from softaudit.cases.inputs import NotApplicable
from softaudit.cases.model import Case
from softaudit.formats import Format, round_float64_array


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


WEIGHT_CHUNK = 1 << 22
"""Weight elements drawn in float64 at a time: a full-size weight (4096 x 128256) is never held in
float64 beside its rounded copy (the stream is the same drawn whole or in consecutive chunks)."""


def _weight_chunks(rng: np.random.Generator, vocab: int, hidden: int, scale: float):
    """The weight in float64 as (first row, rows) chunks of consecutive rows, drawn in order."""
    step = max(1, WEIGHT_CHUNK // max(hidden, 1))
    for a in range(0, vocab, step):
        chunk = rng.standard_normal((min(step, vocab - a), hidden))
        chunk *= scale
        yield a, chunk


def _weight(rng: np.random.Generator, vocab: int, hidden: int, scale: float, fmt: Format) -> np.ndarray:
    """The weight ~ N(0, scale^2) rounded into fmt, chunk by chunk."""
    out = np.empty((vocab, hidden), dtype=fmt.np_dtype)
    for a, chunk in _weight_chunks(rng, vocab, hidden, scale):
        out[a:a + chunk.shape[0]] = round_float64_array(chunk, fmt)
    return out


def _weight_rows(rng: np.random.Generator, vocab: int, hidden: int, scale: float, rows: np.ndarray) -> np.ndarray:
    """Chosen rows of the weight in float64 before rounding, drawn again from the stream's start."""
    out = np.empty((len(rows), hidden))
    last = int(np.max(rows))
    for a, chunk in _weight_chunks(rng, vocab, hidden, scale):
        here = (rows >= a) & (rows < a + chunk.shape[0])
        out[here] = chunk[rows[here] - a]
        if a + chunk.shape[0] > last:
            break
    return out


def linear_inputs(case: Case, fmt: Format, seed: int = 0) -> LinearLossInputs:
    """A linear_cross_entropy case's inputs in ``fmt``: drawn in float64 from the stream
    SeedSequence([seed, case.seed, 4]) in the same order for every format, then rounded once.

    hidden ~ N(0, 1) (tokens, hidden_size); weight ~ N(0, logit_std^2 / hidden_size), so each logit
    has a standard deviation near ``logit_std``; bias ~ N(0, 1/4) when asked; targets uniform over the
    vocabulary. A ``confident_tokens`` fraction of the tokens (drawn) get the hidden state
    ``confident_margin / |w_t|^2 * w_t``: their target's logit is about the margin, the others near 0,
    so p_target is close to 1. The last ``ignored_tokens`` tokens are padding (target = ignore_index).
    Raises NotApplicable when the case is restricted to other formats.
    """
    if not case.applies_to_format(fmt.name):
        raise NotApplicable(f"case {case.name!r} is restricted to {', '.join(case.formats)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tokens, vocab, hidden = case.rows, case.n, int(case.param("hidden_size"))
    std = float(case.param("logit_std"))
    stream = np.random.SeedSequence([int(seed), case.seed, 4])
    rng = np.random.default_rng(stream)
    scale = std / math.sqrt(hidden)
    weight = _weight(rng, vocab, hidden, scale, fmt)
    h64 = rng.standard_normal((tokens, hidden))
    target = rng.integers(0, vocab, size=tokens).astype(np.int64)
    b64 = rng.standard_normal(vocab) * 0.5 if case.param("bias") else None
    confident = int(round(float(case.param("confident_tokens")) * tokens))
    if confident:
        rows = np.sort(rng.choice(tokens, size=confident, replace=False))
        w_t = _weight_rows(np.random.default_rng(stream), vocab, hidden, scale, target[rows])
        h64[rows] = w_t * (float(case.param("confident_margin")) / np.sum(w_t * w_t, axis=1))[:, None]
    ignored = int(case.param("ignored_tokens"))
    ignore_index = int(case.param("ignore_index") if case.param("ignore_index") is not None else -100)
    if ignored:
        target[tokens - ignored:] = ignore_index
    softcap = case.param("softcap")
    return LinearLossInputs(
        hidden=np.ascontiguousarray(round_float64_array(h64, fmt)),
        weight=weight,
        bias=None if b64 is None else np.ascontiguousarray(round_float64_array(b64, fmt)),
        target=np.ascontiguousarray(target), ignore_index=ignore_index,
        label_smoothing=float(case.param("label_smoothing")), reduction=str(case.param("reduction")),
        z_loss=float(case.param("z_loss")), softcap=None if softcap is None else float(softcap))


def linear_summary(inp: LinearLossInputs) -> dict:
    """What a record says about a linear case's input: its shape, ignored tokens, and the keywords."""
    return {"tokens": inp.tokens, "vocabulary": inp.vocabulary, "hidden_size": inp.hidden_size,
            "bias": inp.bias is not None, "ignored_tokens": int(np.count_nonzero(inp.target == inp.ignore_index)),
            "rows": inp.tokens, "n": inp.vocabulary}
