"""Bench orchestration: every candidate x op x direction x format x shape timed in the audit's
own executor (softaudit.runner.speed measures each), after the audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from softaudit.formats import Format
from softaudit.ops import LINEAR_CROSS_ENTROPY
from softaudit.results.records import SpeedRecord
from softaudit.runner.isolation import CandidateInfo, Executor
from softaudit.runner.linear_speed import LINEAR_SHAPES

ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, what): called as each measurement starts and at the end."""


def run_bench(executor: Executor, candidates: list[CandidateInfo], wanted_ops: list[str], directions: list[str],
              formats: list[Format], shapes: list[tuple[int, int]], seed: int, out: list[SpeedRecord],
              progress: ProgressFn | None, linear_shapes: list[tuple[int, int]] | None = None) -> None:
    """Time every candidate x op x direction x format x shape in the executor (the audit's own
    worker), adding to ``out`` what was measured, also when interrupted. linear_cross_entropy is
    timed at ``linear_shapes`` (tokens x vocabulary; default LINEAR_SHAPES), the others at ``shapes``."""
    # Measured with format and shape outermost (the worker draws one set of logits per format x
    # shape and times every op and direction on it); listed in ``out`` candidate, op, direction,
    # format, shape, as the reports read them.
    def shapes_of(op: str) -> list[tuple[int, int]]:
        return (linear_shapes or list(LINEAR_SHAPES)) if op == LINEAR_CROSS_ENTROPY else shapes

    every = sorted({shape for op in wanted_ops for shape in shapes_of(op)}, key=lambda s: (s not in shapes, s))
    todo = [(c, op, d, fmt, shape) for fmt in formats for shape in every for c in candidates
            for op in wanted_ops if op in c.ops and shape in shapes_of(op) for d in directions]  # one draw per format x shape
    listed = {(id(c), op, d, fmt.name, shape): i for i, (c, op, d, fmt, shape) in enumerate(
        (c, op, d, fmt, shape) for c in candidates for op in wanted_ops if op in c.ops
        for d in directions for fmt in formats for shape in shapes_of(op))}
    measured: list[tuple[int, SpeedRecord]] = []
    try:
        for done, (c, op, d, fmt, (rows, n)) in enumerate(todo):
            label = op if d == "forward" else f"{op} bwd"
            if progress:
                progress(done, len(todo), f"speed · {c.name} {label} {fmt.name} {rows}x{n}")
            figures: dict | None = None
            reason: str | None = None
            if d == "backward" and op not in c.backward:
                reason = c.backward_missing.get(op, f"{op}'s backward pass cannot be timed")
            else:
                kind, payload = executor.bench(c, op, d, fmt.name, rows, n, seed)
                if kind == "speed":
                    figures = dict(cast(dict, payload))
                else:
                    reason = str(payload)
            measured.append((listed[(id(c), op, d, fmt.name, (rows, n))],
                             SpeedRecord(c.name, c.target, op, d, fmt.name, (rows, n), figures, reason)))
    finally:  # an interrupt keeps what was measured
        out.extend(sp for _, sp in sorted(measured, key=lambda pair: pair[0]))
    if progress and todo:
        progress(len(todo), len(todo), "done")
