"""One (format, case) being judged: its input, the references computed for it so far, and the
summary of the input that every record of the unit carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softaudit.cases.inputs import LossInputs, loss_inputs
from softaudit.cases.model import Case
from softaudit.formats import Format
from softaudit.reference import OpReference, ReferenceCache, ReferenceSet
from softaudit.reference.fast_long_double import loss_coefficients
from softaudit.reference.gradients import backward_reference
from softaudit.reference.loss import LossReference, loss_gradient_reference, loss_reference


@dataclass
class AuditUnit:
    """One (format, case): its input, references computed so far, and what the candidates' forward
    calls taught (the reduction each cross_entropy applies when it takes no reduction keyword)."""

    case: Case
    fmt: Format
    x: np.ndarray
    refs: ReferenceSet
    cache: ReferenceCache
    seed: int
    uncertified: int = 0
    _loss: LossInputs | None = None
    _loss_ref: LossReference | None = None
    _grads: dict = field(default_factory=dict)
    _coefficients: tuple[np.ndarray, np.ndarray] | None = None
    _probabilities: np.ndarray | None = None
    reductions: dict = field(default_factory=dict)
    """candidate name -> reduction its cross_entropy applied (from the forward output's shape)."""
    _summary: dict | None = None

    def summary(self) -> dict:
        if self._summary is None:
            self._summary = input_summary(self.x)
        return dict(self._summary)

    def loss(self) -> LossInputs:
        if self._loss is None:
            self._loss = loss_inputs(self.case, self.fmt, self.x, seed=self.seed)
        return self._loss

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """coef_ic and A_i (reference_loss) as float64, zero on ignored and out-of-range rows,
        for the envelopes: the same for every candidate and reduction."""
        if self._coefficients is None:
            rows, n = self.x.shape
            lc = loss_coefficients(self.loss(), rows, n)  # vectorised, within 2^-60 (envelopes need less)
            coef = lc.coef.astype(np.float64)
            self._coefficients = coef, coef.sum(axis=-1)
        return self._coefficients

    def probabilities(self) -> np.ndarray:
        """softmax of every row as float64 (0 on undefined and NaN rows), for the gradient envelopes."""
        if self._probabilities is None:
            self._probabilities = np.nan_to_num(exact_as_float64(self.refs.ops["softmax"]), nan=0.0, posinf=0.0,
                                                neginf=0.0)
        return self._probabilities

    def loss_reference(self) -> LossReference:
        if self._loss_ref is None:
            loss = self.loss()
            ops, unc = self.cache.get_or_compute_ops(
                "loss", _loss_key(self.x, loss), self.fmt, lambda: _loss_ops(self.x, loss, self.fmt))
            self._loss_ref = LossReference(ops["none"], ops["mean"], ops["sum"], unc)
            self.uncertified += unc
        return self._loss_ref

    def gradient(self, op: str, dy: np.ndarray, loss: LossInputs | None) -> OpReference:
        key = (op, loss.reduction if loss else "", dy.shape)
        if key not in self._grads:
            parts = [self.x, dy] + (_loss_key(self.x, loss) if loss else [])

            def compute() -> tuple[dict[str, OpReference], int]:
                if loss is None:
                    ref, unc = backward_reference(op, self.x, dy, self.fmt)
                else:
                    ref, unc = loss_gradient_reference(self.x, loss, dy, self.fmt)
                return {"gradient": ref}, unc

            ops, unc = self.cache.get_or_compute_ops(f"vjp-{op}", parts, self.fmt, compute)
            self.uncertified += unc
            self._grads[key] = ops["gradient"]
        return self._grads[key]


def _loss_key(x: np.ndarray, loss: LossInputs) -> list:
    weight = loss.weight if loss.weight is not None else "no-weight"
    return [x, np.asarray(loss.target), weight,
            f"{loss.target_kind}/{float(loss.label_smoothing)!r}/{loss.ignore_index}/{loss.reduction}"]


def _loss_ops(x: np.ndarray, loss: LossInputs, fmt: Format) -> tuple[dict[str, OpReference], int]:
    ref = loss_reference(x, loss, fmt)
    return {"none": ref.none, "mean": ref.mean, "sum": ref.sum}, ref.uncertified


def exact_as_float64(ref: OpReference) -> np.ndarray:
    """A reference's exact values as float64 (for envelopes: rounding does not matter there)."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.ldexp(ref.hi, ref.k) + np.ldexp(ref.lo, ref.k)
    return np.where(np.isfinite(v), v, np.where(np.isinf(ref.rounded), ref.rounded, np.nan))


def input_summary(x: np.ndarray) -> dict:
    """What reports plot error against: the input's offset and dynamic range (finite values only)."""
    x64 = np.asarray(x, dtype=np.float64)
    finite = x64[np.isfinite(x64)]
    out: dict[str, Any] = {"rows": int(x64.shape[0]), "n": int(x64.shape[-1]), "neg_inf": int(np.count_nonzero(x64 == -np.inf)),
           "nan": int(np.count_nonzero(np.isnan(x64)))}
    if finite.size:
        hi, lo = float(finite.max()), float(finite.min())
        out.update(max=hi, min=lo, offset=float(np.abs(finite).max()), range=hi - lo)
    else:
        out.update(max=None, min=None, offset=None, range=None)
    return out
