"""Running the independent oracle (independent_oracle.py) against softaudit's references.

``check_unit`` compares every rounded reference of one input - forward ops, VJPs, cross-entropy
per row and reduced, its gradient - with the oracle's; ``library_units`` yields the shipped
library's inputs exactly as an audit builds them; ``tuned_units`` yields adversarial inputs
tuned to lie on or next to rounding midpoints. Used by tests/test_independent_oracle.py and
benchmarks/oracle_check.py.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

import independent_oracle as oracle
from softaudit.cases import load_cases
from softaudit.formats import FORMATS, Format, round_float64_array
from softaudit.inputs import LossInputs, NotApplicable, generate, loss_inputs, upstream
from softaudit.reference import reference_rows
from softaudit.reference_backward import backward_reference
from softaudit.reference_loss import loss_gradient_reference, loss_reference

COMPARED: Counter = Counter()
"""Elements compared so far, by (format, what): what the benchmark script prints."""


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b  # 0.0 == -0.0: a zero's sign is not part of a reference


def _compare(label: str, fmt: Format, got: np.ndarray, want: Sequence[float] | None, out: list[str],
             x_row: np.ndarray) -> None:
    if want is None:
        return  # undefined: nothing to compare
    COMPARED[(fmt.name, label.split("[")[0])] += len(want)
    for j, (g, w) in enumerate(zip(np.asarray(got).ravel().tolist(), want)):
        if not _same(g, w):
            out.append(f"{label}[{j}]: softaudit {g!r}, oracle {w!r}; row {x_row.tolist()[:8]}"
                       f"{' ...' if x_row.size > 8 else ''}")


def _oracle_loss(loss: LossInputs) -> oracle.Loss:
    probability = loss.target_kind == "probability"
    target = (np.asarray(loss.target, dtype=np.float64).tolist() if probability
              else np.asarray(loss.target).astype(int).tolist())
    weight = None if loss.weight is None else np.asarray(loss.weight, dtype=np.float64).tolist()
    return oracle.Loss(target, probability, weight, float(loss.label_smoothing), loss.ignore_index)


def check_unit(x: np.ndarray, fmt: Format, dys: dict | None, loss: LossInputs | None,
               loss_dy: np.ndarray | None, engines: Sequence[str] = ("auto",)) -> list[str]:
    """Disagreements between softaudit (each engine) and the oracle on every reference of x."""
    x = np.asarray(x, dtype=np.float64)
    bad: list[str] = []
    rows = x.shape[0]
    fwd = [oracle.forward(x[i].tolist(), fmt.name) for i in range(rows)]
    vjps = {op: [oracle.vjp(op, x[i].tolist(), (dy[i] if op == "logsumexp" else dy[i].tolist()), fmt.name)
                 for i in range(rows)] for op, dy in (dys or {}).items()}
    lo = _oracle_loss(loss) if loss is not None else None
    losses = oracle.loss_forward(x.tolist(), lo, fmt.name) if lo is not None else None
    grads = None
    if lo is not None and loss_dy is not None and not loss.out_of_range:
        dy_arg = np.asarray(loss_dy, dtype=np.float64)
        grads = oracle.loss_gradient(x.tolist(), lo, loss.reduction,
                                     dy_arg.tolist() if loss.reduction == "none" else float(dy_arg), fmt.name)
    for engine in engines:
        ref = reference_rows(x, fmt, engine=engine)
        for i in range(rows):
            for op in ("softmax", "log_softmax", "logsumexp"):
                _compare(f"{op} ({engine})[{i}]", fmt, ref.ops[op].rounded[i], fwd[i][op], bad, x[i])
        for op, dy in (dys or {}).items():
            got, _ = backward_reference(op, x, dy, fmt, engine=engine)
            for i in range(rows):
                _compare(f"{op}_backward ({engine})[{i}]", fmt, got.rounded[i], vjps[op][i], bad, x[i])
        if losses is not None:
            got_loss = loss_reference(x, loss, fmt, engine=engine)
            for i in range(rows):
                want = losses["none"][i]
                _compare(f"cross_entropy none ({engine})[{i}]", fmt, got_loss.none.rounded[i:i + 1],
                         None if want is None else [want], bad, x[i])
            for name in ("mean", "sum"):
                _compare(f"cross_entropy {name} ({engine})", fmt, getattr(got_loss, name).rounded, losses[name], bad,
                         x[0])
        if grads is not None:
            got_g, _ = loss_gradient_reference(x, loss, loss_dy, fmt, engine=engine)
            for i in range(rows):
                _compare(f"cross_entropy_backward ({engine})[{i}]", fmt, got_g.rounded[i], grads[i], bad, x[i])
    return bad


# --------------------------------------------------------------------------
# Inputs


def library_units(max_elements: int | None = None,
                  formats: Sequence[Format] = tuple(FORMATS.values())) -> Iterator[tuple]:
    """(case, fmt, x, dys, loss, loss_dy) for every shipped case and format, built as an audit builds
    them (seed 0); cases over ``max_elements`` are left out."""
    for case in load_cases():
        for fmt in formats:
            try:
                x = generate(case, fmt, seed=0)
            except NotApplicable:
                continue
            if max_elements is not None and x.size > max_elements:
                continue
            x = x.astype(np.float64)
            dys = {}
            if "backward" in case.directions:
                for op in ("softmax", "log_softmax", "logsumexp"):
                    if case.applies_to(op, fmt.name):
                        shape = (x.shape[0],) if op == "logsumexp" else x.shape
                        dys[op] = upstream(case, fmt, shape, seed=0).astype(np.float64)
            loss = loss_dy = None
            if case.applies_to("cross_entropy", fmt.name):
                try:
                    loss = loss_inputs(case, fmt, x, seed=0)
                except NotApplicable:
                    loss = None
                if loss is not None and "backward" in case.directions:
                    shape = (x.shape[0],) if loss.reduction == "none" else ()
                    loss_dy = upstream(case, fmt, shape, seed=0).astype(np.float64)
            yield case, fmt, x, dys, loss, loss_dy


def _fmt_values(v, fmt: Format) -> np.ndarray:
    return round_float64_array(np.asarray(v, dtype=np.float64), fmt).astype(np.float64)


def tuned_units(fmt: Format, count: int, seed: int = 0) -> Iterator[tuple]:
    """(x, dys, loss, loss_dy) built to put exact outputs on or next to rounding midpoints: a
    difference max - x_t that is a midpoint (p + 1 bits), tied maxima, upstream gradients whose sums
    are midpoints, weights whose products need 2p bits, and the other terms at gaps from live
    (e^-5) to astronomically far below any cut (e^-10^4 and beyond), in every format."""
    rng = np.random.default_rng(seed)
    p = fmt.p
    big = min(fmt.max_finite / 4, 1e300)
    gaps = [3.0, 11.0, 40.0, 90.0, 200.0, 750.0, 1400.0, 1e4, big]
    for unit in range(count):
        kind = unit % 4
        n = int(rng.integers(3, 7))
        scale = 2.0 ** int(rng.integers(-4, 2))
        m = float(rng.integers(2 ** (p - 1), 2**p)) if p < 53 else float(rng.integers(2**52, 2**53 - 1))
        a = 0.5 * scale
        x = np.empty(n)
        x[0] = a
        x[1] = a - (m + 0.5) * scale  # max - x_1 = (m + 1/2) scale: a midpoint
        for j in range(2, n):
            x[j] = a - float(rng.choice(gaps)) * (1 + rng.random())
        if kind == 1:  # tied maxima (2 or 4: 1/k is a format value)
            k = int(rng.choice([2, 4])) if n > 4 else 2
            x[n - k:] = a
        elif kind == 2:  # a live neighbour as well
            x[2] = a - float(rng.choice([0.5, 2.0, 7.0]))
        elif kind == 3:  # every other term astronomically far
            x[2:] = a - big
        x = _fmt_values(x, fmt)
        if not np.isfinite(x).all():
            continue
        perm = rng.permutation(n) if rng.random() < 0.5 else np.arange(n)
        x = x[perm][None, :]
        # upstream gradients: dyadic, with sums on midpoints
        dy = _fmt_values(rng.integers(-8, 9, n) / 8.0, fmt)
        dy[int(rng.integers(n))] = _fmt_values([1.0 + 3 * 2.0**-p * rng.choice([1, -1, 3])], fmt)[0]
        dys = {"softmax": dy[None, :], "log_softmax": dy[None, :],
               "logsumexp": _fmt_values([float(rng.choice([1.0, 3.0, -5.0, 1.0 + 2.0 ** (1 - p)]))], fmt)}
        target = int(np.flatnonzero(perm == 1)[0]) if perm.size else 1
        weight = None
        if rng.random() < 0.4:
            weight = _fmt_values(1 + rng.integers(0, 2**min(p - 1, 10), n) * 2.0 ** -min(p - 1, 10), fmt)
            weight = weight.astype(fmt.np_dtype)
        reduction = str(rng.choice(["none", "mean", "sum"]))
        eps = float(rng.choice([0.0, 0.0, 0.1]))
        if rng.random() < 0.25:
            q = rng.random((1, n)) * (rng.random(n) < 0.7)
            q = _fmt_values(q / max(q.sum(), 1e-9), fmt).astype(fmt.np_dtype)
            loss = LossInputs(q, "probability", weight, eps, None, reduction, False)
        else:
            loss = LossInputs(np.array([target]), "index", weight, eps, None, reduction, False)
        g = _fmt_values([float(rng.choice([1.0, 1.0 + 2.0 ** (1 - p), 3.0, -0.75]))], fmt)
        loss_dy = g if reduction == "none" else np.array(g[0])
        yield x, dys, loss, loss_dy
