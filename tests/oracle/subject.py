"""softaudit as the subject under test: its inputs for a shipped case (its own builders, which
are not numerics) and its references, to be compared with the oracle.

The only module of the oracle package that imports softaudit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

ROW_OPS = ("softmax", "log_softmax", "logsumexp")
REDUCTIONS = ("none", "mean", "sum")


def fmt(name: str):
    from softaudit.formats import get_format

    return get_format(name)


def loss_inputs(target, target_kind="index", weight=None, label_smoothing=0.0, ignore_index=None,
                reduction="none", out_of_range=False):
    from softaudit.cases.inputs import LossInputs

    return LossInputs(target=np.asarray(target), target_kind=target_kind,
                      weight=None if weight is None else np.asarray(weight), label_smoothing=label_smoothing,
                      ignore_index=ignore_index, reduction=reduction, out_of_range=out_of_range)


def forward(x, fmt_name: str, engine: str = "auto"):
    """{op: (rounded, undefined)} from softaudit.reference.reference_rows."""
    from softaudit.reference import reference_rows

    refs = reference_rows(np.asarray(x, dtype=np.float64), fmt(fmt_name), engine=engine)
    return {op: (r.rounded, r.undefined) for op, r in refs.ops.items()}


def backward(op: str, x, dy, fmt_name: str, engine: str = "auto"):
    from softaudit.reference import backward_reference

    ref, _ = backward_reference(op, np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64),
                                fmt(fmt_name), engine=engine)
    return ref.rounded, ref.undefined


def ce(x, loss, fmt_name: str, engine: str = "auto"):
    """{"none"|"mean"|"sum": (rounded, undefined)}."""
    from softaudit.reference import loss_reference

    ref = loss_reference(np.asarray(x, dtype=np.float64), loss, fmt(fmt_name), engine=engine)
    return {r: (getattr(ref, r).rounded, getattr(ref, r).undefined) for r in REDUCTIONS}


def ce_gradient(x, loss, dy, fmt_name: str, engine: str = "auto"):
    from softaudit.reference import loss_gradient_reference

    ref, _ = loss_gradient_reference(np.asarray(x, dtype=np.float64), loss, np.asarray(dy, dtype=np.float64),
                                     fmt(fmt_name), engine=engine)
    return ref.rounded, ref.undefined


@dataclass
class Check:
    """One comparison to make: an op, a direction and the inputs (as the runner builds them)."""

    case: str
    fmt: str
    op: str
    direction: str
    """"forward" or "backward"."""
    x: np.ndarray
    dy: np.ndarray | None = None
    loss: object = None
    """softaudit LossInputs (cross_entropy)."""
    ops: tuple = ()
    """op "row_ops" (forward softmax, log_softmax, logsumexp from one reference_rows call): which."""

    @property
    def label(self) -> str:
        red = f"[{self.loss.reduction}]" if self.loss is not None and self.direction == "backward" else ""
        return f"{self.fmt}/{self.op}{red}/{self.direction}"


def library_checks(formats=("float64", "float32", "float16", "bfloat16"), names=None,
                   seed: int = 0) -> Iterator[Check]:
    """Every (case, format, op, direction) of the shipped library, inputs built by softaudit's own
    builders (inputs.generate, inputs.loss_inputs, inputs.upstream) as runner.loop.audit_record does.
    Cross-entropy backward is checked for every reduction (the runner uses the case's, or the one a
    candidate without the keyword applies); its forward reference holds all three."""
    from softaudit.cases.inputs import NotApplicable, generate, upstream
    from softaudit.cases.inputs import loss_inputs as build_loss
    from softaudit.cases.reader import load_cases

    for case in load_cases():
        if names is not None and case.name not in names:
            continue
        for fname in formats:
            f = fmt(fname)
            try:
                x = generate(case, f, seed=seed)
            except NotApplicable:
                continue
            x64 = x.astype(np.float64)
            rows, n = x64.shape
            row_ops = tuple(op for op in ROW_OPS if case.applies_to(op, fname, "forward"))
            if row_ops:
                yield Check(case.name, fname, "row_ops", "forward", x64, ops=row_ops)
            for op in case.ops:
                for direction in case.directions:
                    if op in ROW_OPS and direction == "forward":
                        continue
                    if not case.applies_to(op, fname, direction):
                        continue
                    if op != "cross_entropy":
                        dy = None
                        if direction == "backward":
                            shape = (rows,) if op == "logsumexp" else (rows, n)
                            dy = upstream(case, f, shape, seed=seed).astype(np.float64)
                        yield Check(case.name, fname, op, direction, x64, dy)
                        continue
                    loss = build_loss(case, f, x, seed=seed)
                    if direction == "forward":
                        yield Check(case.name, fname, op, direction, x64, None, loss)
                        continue
                    if loss.out_of_range:
                        continue  # no gradient: the runner audits such cases forward only
                    for red in REDUCTIONS:
                        lr = dataclasses.replace(loss, reduction=red)
                        shape = (rows,) if red == "none" else ()
                        dy = upstream(case, f, shape, seed=seed).astype(np.float64)
                        yield Check(case.name, fname, op, direction, x64, dy, lr)


def run_check(check: Check, engine: str = "auto"):
    """Compare softaudit with the oracle on one check: {label: Comparison}."""
    from .compare import compare, oracle_backward, oracle_ce, oracle_ce_gradient, oracle_forward

    x, f = check.x, check.fmt
    if check.op != "cross_entropy":
        if check.direction == "forward":
            sub = forward(x, f, engine)
            want = oracle_forward(x, f)
            ops = check.ops or ((check.op,) if check.op in sub else tuple(sub))
            return {f"{f}/{op}/forward": compare(*sub[op], want[op]) for op in ops}
        got = backward(check.op, x, check.dy, f, engine)
        return {f"{f}/{check.op}/backward": compare(*got, oracle_backward(check.op, x, check.dy, f))}
    if check.direction == "forward":
        sub = ce(x, check.loss, f, engine)
        want = oracle_ce(x, check.loss, f)
        return {f"{f}/cross_entropy[{r}]/forward": compare(*sub[r], want[r]) for r in REDUCTIONS}
    got = ce_gradient(x, check.loss, check.dy, f, engine)
    return {check.label: compare(*got, oracle_ce_gradient(x, check.loss, check.dy, f))}


def run_item(item, fmt_name: str, engine: str = "auto"):
    """Compare softaudit with the oracle on a generators.Item: {label: Comparison}."""
    from .compare import compare, oracle_backward, oracle_ce, oracle_ce_gradient, oracle_forward

    x = np.asarray(item.x, dtype=np.float64)
    f = fmt_name
    if item.op != "cross_entropy":
        if item.direction == "forward":
            sub = forward(x, f, engine)
            want = oracle_forward(x, f)
            ops = (item.op,) if item.op in sub else tuple(sub)
            return {f"{f}/{op}/forward": compare(*sub[op], want[op]) for op in ops}
        got = backward(item.op, x, item.dy, f, engine)
        return {f"{f}/{item.op}/backward": compare(*got, oracle_backward(item.op, x, item.dy, f))}
    loss = loss_inputs(**item.loss)
    if item.direction == "forward":
        sub = ce(x, loss, f, engine)
        want = oracle_ce(x, loss, f)
        return {f"{f}/cross_entropy[{r}]/forward": compare(*sub[r], want[r]) for r in REDUCTIONS}
    got = ce_gradient(x, loss, item.dy, f, engine)
    return {f"{f}/cross_entropy[{loss.reduction}]/backward": compare(*got, oracle_ce_gradient(x, loss, item.dy, f))}
