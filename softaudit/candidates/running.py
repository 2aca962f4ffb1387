"""What every call of a candidate shares: the request and its result, making the calls (timed,
warnings recorded) and turning what they returned into a result in the input's format.
softaudit.candidates.calling and softaudit.candidates.linear_calling build on it."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from softaudit.candidates.arguments import Arguments
from softaudit.candidates.conversion import (
    OutputError,
    block_until_ready,
    describe_value,
    normalise_output,
    output_problem,
)
from softaudit.candidates.errors import describe_exception, one_line, real_interrupt
from softaudit.candidates.model import OpFunction
from softaudit.formats import Format

if TYPE_CHECKING:
    from softaudit.candidates.probes import ProbeLoss
    from softaudit.cases.inputs import LossInputs
    from softaudit.cases.linear_inputs import LinearLossInputs

    LossLike: TypeAlias = LossInputs | ProbeLoss
    """An audit's loss inputs, or a probe's stand-in with the attributes a call reads."""

_MAX_WARNING_NOTES = 3

@dataclass(frozen=True)
class CallRequest:
    """One call to make: an op, a direction, and the arrays the candidate gets."""

    op: str
    """One of OPS."""
    direction: str
    """"forward" | "backward"."""
    x: np.ndarray
    """(rows, n) values of the format (the logits for cross_entropy)."""
    fmt_name: str
    """The format under audit (a key of FORMATS)."""
    loss: LossLike | None = None
    """cross_entropy only: the target, the class weights and the keywords of the case."""
    dy: np.ndarray | None = None
    """backward only: the upstream gradient, shaped like the forward output (() for a reduced loss)."""
    y: np.ndarray | None = None
    """backward only: the correctly rounded exact forward output (softmax and log_softmax (rows, n),
    logsumexp (rows,)); NaN on undefined rows. Unused for cross_entropy."""
    linear: LinearLossInputs | None = None
    """linear_cross_entropy only: hidden, weight, bias, target and keywords (``x`` is then the hidden states)."""


@dataclass
class CallResult:
    """The outcome of one ``call``."""

    output: np.ndarray | None
    """Output in the input's format: (rows, n) for softmax, log_softmax and every backward; (rows,)
    for logsumexp; (rows,) or () for cross_entropy, as returned; None on error."""
    error: str | None
    """One line when the call failed: an exception, a wrong shape, a non-array."""
    input_modified: bool
    """True when the candidate changed any array it was given (compared bit for bit)."""
    output_dtype: str
    """What the candidate returned, e.g. "float32", "torch.float64 on cpu", "list"."""
    notes: tuple[str, ...]
    """Remarks: a different output format rounded into the input's, warnings raised."""
    seconds: float
    """Wall time of the candidate's own call(s), device synchronised."""
    raised: bool = False
    """The candidate raised a Python exception (``error`` says which), as opposed to returning a
    bad output or taking the worker down."""
    unsupported: str | None = None
    """The call cannot be audited, and why (e.g. an autograd output without grad_fn): a SKIP reason."""
    cuda_error: str | None = None
    """The call left the CUDA context unusable (a device-side assert, an illegal memory access...):
    the key of the error in softaudit.runner.cuda_errors.STICKY_ERRORS (or its UNUSABLE_CONTEXT). The
    worker that made the call was replaced; ``error`` names the cause."""
    parts: tuple[tuple[str, np.ndarray | None], ...] = ()
    """linear_cross_entropy backward: ("hidden", d_hidden), ("weight", d_weight), ("bias", d_bias or
    None) in the input's format; ``output`` is d_hidden. Empty for every other call."""


class Unsupported(Exception):
    """The call cannot be audited (an autograd output without grad_fn); the message is the reason."""


@dataclass
class Run:
    """What the candidate's call(s) did."""

    raw: list[Any]
    error: str | None
    raised: bool
    unsupported: str | None
    seconds: float
    notes: tuple[str, ...]


def run_calls(opfn: OpFunction, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
         after: Callable[[Any, int], None] | None = None) -> Run:
    """Make the calls (one, or one per row), timing them and recording warnings;
    ``after(output, i)`` runs inside the timing (autograd's backward)."""
    raw: list[Any] = []
    error: str | None = None
    unsupported: str | None = None
    raised = False
    i = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            for i, (args, kwargs) in enumerate(calls):
                out = opfn.fn(*args, **kwargs)
                raw.append(out)
                if after is not None:
                    after(out, i)
            synchronize(opfn, raw)
        except Unsupported as exc:
            unsupported = str(exc)
        except OutputError as exc:
            error = (f"row {i}: " if opfn.rowwise else "") + str(exc)
        except BaseException as exc:
            if real_interrupt(exc):
                raise
            error = (f"row {i}: " if opfn.rowwise else "") + describe_exception(exc)
            raised = True
        seconds = time.perf_counter() - start
    return Run(raw, error, raised, unsupported, seconds, warning_notes(caught))


def finish_call(opfn: OpFunction, run: Run, args: Arguments, fmt: Format, expected: tuple[int, ...],
            allow: Iterable[tuple[int, ...]] = (), also: Iterable[tuple[int, ...]] = (),
            outputs: list[Any] | None = None, stack: bool = False, extra: Iterable[str] = ()) -> CallResult:
    """The CallResult of a run: input changes, errors, and the output(s) normalised into ``fmt``.

    ``stack``: the outputs are rows (``expected`` is a row's shape), stacked.
    ``outputs`` replaces the candidate's return values (autograd's x.grad).
    """
    notes = run.notes + tuple(extra)
    try:
        changed = args.modified()
    except Exception as exc:
        if run.error is not None:
            # The call failed already, and its error made the input unreadable too (a CUDA error that
            # breaks the context, cuda_errors): the error is the finding, not a modified input.
            return CallResult(None, run.error, False, "", notes, run.seconds, run.raised)
        return CallResult(None, f"input could not be read back: {describe_exception(exc)}", True, "", notes, run.seconds,
                          run.raised)
    others = [name for name in changed if name not in ("x", "logits")]
    if others:
        notes += (f"changed its {', '.join(others)} argument{'s' if len(others) > 1 else ''} in place",)
    modified = bool(changed)
    if run.unsupported is not None:
        return CallResult(None, None, modified, "", notes, run.seconds, unsupported=run.unsupported)
    if run.error is not None:
        return CallResult(None, run.error, modified, "", notes, run.seconds, run.raised)
    items = run.raw if outputs is None else outputs
    allow, also = list(allow), list(also)
    if stack:
        parts, descs, rounding = [], [], []
        for i, item in enumerate(items):
            try:
                part, desc, note = normalise_output(item, expected, fmt, allow=allow)
            except Exception as exc:
                problem = f"row {i}: {output_problem(exc, item)}"
                return CallResult(None, problem, modified, describe_value(item), notes, run.seconds)
            parts.append(part)
            descs.append(desc)
            if note and note not in rounding:
                rounding.append(note)
        out = np.stack(parts) if parts else np.empty((0,) + expected, dtype=fmt.np_dtype)
        return CallResult(out, None, modified, descs[0] if descs else "", notes + tuple(rounding), run.seconds)
    try:
        out, desc, note = normalise_output(items[0], expected, fmt, allow=allow, also=also)
    except Exception as exc:
        return CallResult(None, output_problem(exc, items[0]), modified, describe_value(items[0]), notes, run.seconds)
    return CallResult(out, None, modified, desc, notes + ((note,) if note else ()), run.seconds)


def placement_failure(opfn: OpFunction, exc: Exception) -> CallResult:
    return CallResult(None, f"cannot place the input on {opfn.device}: {describe_exception(exc)}", False, "", (), 0.0)


def synchronize(opfn: OpFunction, outputs: list[Any]) -> None:
    """Wait for queued GPU work, or JAX's asynchronous dispatch, so that timings include it."""
    if opfn.backend == "torch" and opfn.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    elif opfn.backend == "jax":
        block_until_ready(outputs)


def warning_notes(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """Distinct warnings raised during the call, as notes (a few at most)."""
    notes: list[str] = []
    for w in caught:
        note = f"warned {w.category.__name__}: {one_line(str(w.message))}"
        if note not in notes:
            notes.append(note)
    if len(notes) > _MAX_WARNING_NOTES:
        notes = notes[:_MAX_WARNING_NOTES] + [f"and {len(notes) - _MAX_WARNING_NOTES} more warnings"]
    return tuple(notes)
