"""The probe calls that confirm detection: a tiny 2×3 float32 input, the call of each function
on it, and the outputs that are right (exact in float64), by shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from softaudit.candidates.calling import CallRequest, CallResult
from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.ops import BACKWARD_FUNCTIONS, LINEAR_CROSS_ENTROPY

_PROBE = np.array([[1.0, 2.0, 3.5], [-1.0, 0.5, 0.25]], dtype=np.float32)
_PROBE_TARGET = np.array([2, 0], dtype=np.int64)
_PROBE_PROBABILITIES = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]], dtype=np.float32)
_PROBE_DY = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]], dtype=np.float32)
_PROBE_DY_ROWS = np.array([0.75, -1.5], dtype=np.float32)
TRIAL_VALUES: dict[str, object] = {
    "label_smoothing": 0.0, "ignore_index": -100, "weight": np.ones(3, np.float32), "reduction": "none",
}
"""Harmless values for the keyword trial of a loss function whose signature cannot be inspected."""


@dataclass(frozen=True)
class ProbeLoss:
    """Stands in for inputs.LossInputs in the probe calls: the attributes ``call`` reads."""

    target: np.ndarray
    target_kind: str = "index"
    reduction: str = "none"
    passed: tuple[tuple[str, object], ...] = ()
    """The keywords to pass (when the function accepts them)."""
    weight: np.ndarray | None = None
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    out_of_range: bool = False

    def keywords(self) -> dict[str, object]:
        return dict(self.passed)


_PROBE_HIDDEN = np.array([[1.0, 0.5], [-0.5, 2.0]], dtype=np.float32)
_PROBE_WEIGHT = np.array([[1.0, 2.0], [0.5, -1.0], [1.75, 0.25]], dtype=np.float32)
"""The linear probe: hidden @ weight.T is the probe's 2x3 logits' stand-in (exact in float32)."""


def _linear_probe(fname: str, keywords: frozenset[str], loss_style: str
                  ) -> tuple[CallRequest, dict[tuple[int, ...], np.ndarray]]:
    """linear_cross_entropy's probe: per-token losses (reduction "none" when it takes the keyword),
    or the backward's d_hidden, with hidden @ weight.T as the logits."""
    h, w = _PROBE_HIDDEN.astype(np.float64), _PROBE_WEIGHT.astype(np.float64)
    z = h @ w.T
    rows, n = z.shape
    lse = np.log(np.exp(z).sum(axis=-1))
    per_row = lse - z[np.arange(rows), _PROBE_TARGET]
    reduction = "none" if "reduction" in keywords else "mean"
    inp = LinearLossInputs(_PROBE_HIDDEN, _PROBE_WEIGHT, None, _PROBE_TARGET, reduction=reduction)
    if fname == LINEAR_CROSS_ENTROPY:
        expected: dict[tuple[int, ...], np.ndarray] = {(rows,): per_row, (): np.array(per_row.mean())}
        return CallRequest(LINEAR_CROSS_ENTROPY, "forward", _PROBE_HIDDEN, "float32", linear=inp), expected
    if reduction == "none" or loss_style == "none" and "reduction" in keywords:
        dy, g = _PROBE_DY_ROWS, _PROBE_DY_ROWS.astype(np.float64)
    else:
        dy = np.array(_PROBE_DY_ROWS[0])
        g = np.full(rows, float(dy) / rows)
    grad = g[:, None] * (np.exp(z - lse[:, None]) - np.eye(n)[_PROBE_TARGET])
    request = CallRequest(LINEAR_CROSS_ENTROPY, "backward", _PROBE_HIDDEN, "float32", linear=inp, dy=dy)
    return request, {h.shape: grad @ w}


def _probe_exact() -> dict[str, np.ndarray]:
    """softmax, log_softmax and logsumexp of the probe input in float64 (its values are exact)."""
    x = _PROBE.astype(np.float64)
    lse = np.log(np.exp(x).sum(axis=-1))
    return {"softmax": np.exp(x - lse[:, None]), "log_softmax": x - lse[:, None], "logsumexp": lse}


def probe_request(
    fname: str, keywords: frozenset[str], loss_style: str = "none",
    passed: tuple[tuple[str, object], ...] = (), probabilities: bool = False,
) -> tuple[CallRequest, dict[tuple[int, ...], np.ndarray]]:
    """The probe call of function ``fname`` and the outputs that are right, by shape.

    ``loss_style`` is "mean" when the candidate's cross_entropy returned a
    scalar: its cross_entropy_backward (if it takes no reduction keyword) then
    gets a scalar dloss. ``passed`` are keywords to pass (the keyword trial);
    ``probabilities`` probes with probability targets instead of [2, 0].
    """
    if BACKWARD_FUNCTIONS.get(fname, fname) == LINEAR_CROSS_ENTROPY:
        return _linear_probe(fname, keywords, loss_style)
    exact = _probe_exact()
    rows, n = _PROBE.shape
    if fname in ("softmax", "log_softmax", "logsumexp"):
        return CallRequest(fname, "forward", _PROBE, "float32"), {exact[fname].shape: exact[fname]}
    p = exact["softmax"]
    target = _PROBE_PROBABILITIES if probabilities else _PROBE_TARGET
    kind = "probability" if probabilities else "index"
    if fname == "cross_entropy":
        per_row = -exact["log_softmax"][np.arange(rows), _PROBE_TARGET]
        expected: dict[tuple[int, ...], np.ndarray] = {(rows,): per_row}
        if dict(passed).get("reduction") != "none":
            expected[()] = np.array(per_row.mean())
        loss = ProbeLoss(target, kind, "none", passed)
        return CallRequest("cross_entropy", "forward", _PROBE, "float32", loss=loss), expected
    op = BACKWARD_FUNCTIONS[fname]
    d = _PROBE_DY.astype(np.float64)
    if op == "cross_entropy":
        kw = dict(passed)
        if "reduction" in keywords:
            kw["reduction"] = "none"
        if kw.get("reduction", loss_style) == "none":
            dloss, g = _PROBE_DY_ROWS, _PROBE_DY_ROWS.astype(np.float64)
        else:
            dloss = np.array(_PROBE_DY_ROWS[0])
            g = np.full(rows, float(dloss) / rows)
        loss = ProbeLoss(target, kind, str(kw.get("reduction", loss_style)), tuple(kw.items()))
        onehot = np.eye(n)[_PROBE_TARGET]
        request = CallRequest("cross_entropy", "backward", _PROBE, "float32", loss=loss, dy=dloss)
        return request, {(rows, n): g[:, None] * (p - onehot)}
    if op == "softmax":
        grad = p * (d - (p * d).sum(axis=-1, keepdims=True))
    elif op == "log_softmax":
        grad = d - p * d.sum(axis=-1, keepdims=True)
    else:
        d = _PROBE_DY_ROWS.astype(np.float64)
        grad = d[:, None] * p  # dy * exp(x - y)
    dy = _PROBE_DY if op != "logsumexp" else _PROBE_DY_ROWS
    request = CallRequest(op, "backward", _PROBE, "float32", dy=dy, y=exact[op].astype(np.float32))
    return request, {(rows, n): grad}


def probe_quality(result: CallResult, expected: Mapping[tuple[int, ...], np.ndarray]) -> int:
    """2: right shape and values; 1: right shape, wrong values; 0: failed."""
    if result.error is not None or result.output is None:
        return 0
    out = result.output.astype(np.float64)
    want = expected.get(out.shape)
    if want is None:
        return 1
    ok = np.all(np.isfinite(out)) and np.allclose(out, want, rtol=2e-2, atol=1e-3)
    return 2 if ok else 1
