"""Whole arrays through the oracle, and their comparison with softaudit's references.

Oracle results are per row: a list of values (floats, or UNDECIDED) or UNDEFINED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import exact
from .exact import UNDEFINED, CELoss


def oracle_forward(x, fmt) -> dict[str, list]:
    xs = np.asarray(x, dtype=np.float64)
    out: dict[str, list] = {"softmax": [], "log_softmax": [], "logsumexp": []}
    for row in xs:
        r = exact.forward_row(row, fmt)
        out["softmax"].append(r["softmax"])
        out["log_softmax"].append(r["log_softmax"])
        out["logsumexp"].append([r["logsumexp"]])
    return out


def oracle_backward(op: str, x, dy, fmt) -> list:
    xs = np.asarray(x, dtype=np.float64)
    dys = np.asarray(dy, dtype=np.float64)
    fn = {"softmax": exact.softmax_vjp_row, "log_softmax": exact.log_softmax_vjp_row,
          "logsumexp": exact.logsumexp_vjp_row}[op]
    return [fn(xs[i], dys[i], fmt) for i in range(xs.shape[0])]


def oracle_ce(x, loss, fmt) -> dict[str, list]:
    r = exact.ce_forward(x, loss if isinstance(loss, CELoss) else CELoss.of(loss), fmt)
    wrap = lambda v: UNDEFINED if v is UNDEFINED or v == UNDEFINED else [v]  # noqa: E731
    return {"none": [wrap(v) for v in r["none"]], "mean": [wrap(r["mean"])], "sum": [wrap(r["sum"])]}


def oracle_ce_gradient(x, loss, dy, fmt) -> list:
    return exact.ce_gradient(x, loss if isinstance(loss, CELoss) else CELoss.of(loss), dy, fmt)


@dataclass
class Disagreement:
    row: int
    col: int
    got: float
    """softaudit's value (NaN where it called the row undefined)."""
    want: float | str
    """The oracle's."""
    note: str = ""


@dataclass
class Comparison:
    compared: int = 0
    undecided: list = field(default_factory=list)
    """(row, col) the oracle could not decide within its precision cap (not compared)."""
    disagreements: list = field(default_factory=list)

    def add(self, other: Comparison) -> None:
        self.compared += other.compared
        self.undecided += other.undecided
        self.disagreements += other.disagreements


def _same(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == want  # -0.0 == 0.0: zeros compare ignoring sign; inf == inf


def compare(rounded, undefined, oracle_rows: list) -> Comparison:
    """softaudit's ``rounded`` (rows, ...) and per-row ``undefined`` flags against the oracle."""
    got = np.asarray(rounded, dtype=np.float64)
    rows = len(oracle_rows)
    got = got.reshape(rows, -1)
    und = np.zeros(rows, dtype=bool) if undefined is None else np.asarray(undefined, dtype=bool).reshape(-1)
    c = Comparison()
    for i, want_row in enumerate(oracle_rows):
        if want_row is UNDEFINED or (isinstance(want_row, str) and want_row == UNDEFINED):
            continue  # undefined by the project's definitions: nothing to compare
        for j, want in enumerate(want_row):
            if isinstance(want, str):
                c.undecided.append((i, j))
                continue
            c.compared += 1
            if und.size > i and und[i]:
                c.disagreements.append(Disagreement(i, j, math.nan, want, "softaudit calls the row undefined"))
            elif not _same(float(got[i, j]), want):
                c.disagreements.append(Disagreement(i, j, float(got[i, j]), want))
    return c
