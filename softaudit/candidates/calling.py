"""Calling a candidate: one op in one direction on one input (``CallRequest``), and what came of
it (``CallResult``).

A fresh copy of every array for every call, each checked bit for bit afterwards; exceptions and
odd outputs turned into a one-line ``error``; outputs in a wider format rounded exactly (once)
into the input's format. The backward pass goes through the candidate's explicit backward
function, else through torch autograd for torch candidates and ``jax.vjp`` for JAX candidates
(``backward_mode``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from softaudit.candidates.arguments import Arguments, call_arguments
from softaudit.candidates.conversion import (
    OutputError,
    as_format,
    block_until_ready,
    is_jax_array,
    is_tensor,
    jax_precision,
    to_jax,
    to_torch,
)
from softaudit.candidates.errors import describe_exception
from softaudit.candidates.linear_calling import (
    LINEAR_BACKWARD_SIGNATURE,
    call_linear_autograd,
    call_linear_function,
)
from softaudit.candidates.model import Candidate, OpFunction
from softaudit.candidates.running import (
    CallRequest,
    CallResult,
    Unsupported,
    finish_call,
    placement_failure,
    run_calls,
)
from softaudit.formats import FORMATS, Format
from softaudit.ops import BACKWARD_FUNCTIONS, LINEAR_CROSS_ENTROPY, LOSS_KEYWORDS, OPS, keywords_of

if TYPE_CHECKING:
    from softaudit.candidates.running import LossLike

__all__ = ["CallRequest", "CallResult", "accepted_keywords", "backward_mode", "call", "call_function", "call_op",
           "finish_call"]

_BACKWARD_SIGNATURES = {
    "softmax": "softmax_backward(y, dy)",
    "log_softmax": "log_softmax_backward(y, dy)",
    "logsumexp": "logsumexp_backward(x, y, dy)",
    "cross_entropy": "cross_entropy_backward(logits, target, dloss)",
    LINEAR_CROSS_ENTROPY: LINEAR_BACKWARD_SIGNATURE,
}
"""The explicit backward function of each op, as a reason for skipping names it."""


def backward_mode(cand: Candidate, op: str) -> tuple[str | None, str]:
    """How ``op``'s backward pass is audited: ("function", "") through the
    candidate's explicit backward function, ("autograd", "") through torch
    autograd of its forward function, ("vjp", "") through ``jax.vjp`` of a JAX
    forward function (not for linear_cross_entropy), or (None, reason) when it cannot be (the
    runner's SKIP reason)."""
    if op in cand.backward:
        return "function", ""
    opfn = cand.ops.get(op)
    if opfn is None:
        return None, f"{op} is not defined"
    if opfn.backend == "torch":
        return "autograd", ""
    if opfn.backend == "jax" and op != LINEAR_CROSS_ENTROPY:
        return "vjp", ""
    return None, f"{opfn.backend} candidate without {_BACKWARD_SIGNATURES[op]}: audited forward only"


def accepted_keywords(opfn: OpFunction) -> tuple[str, ...]:
    """The keywords a loss function is audited with, in LOSS_KEYWORDS (LINEAR_KEYWORDS) order: those
    it takes, less ``reduction`` row by row (each row's call gets reduction="none", so a case's mean
    or sum cannot be asked of it); a linear_cross_entropy function's also "bias" when it takes it."""
    names = (*keywords_of(opfn.op), "bias") if BACKWARD_FUNCTIONS.get(opfn.op, opfn.op) == LINEAR_CROSS_ENTROPY \
        else LOSS_KEYWORDS
    return tuple(k for k in names if k in opfn.keywords and not (k == "reduction" and opfn.rowwise))


def call(cand: Candidate, request: CallRequest) -> CallResult:
    """Run ``request.op`` of ``cand`` in ``request.direction`` on the request's arrays.

    The candidate gets fresh copies (numpy arrays or torch tensors on its
    device); nothing it raises or returns escapes as an exception. A backward
    pass that cannot be audited comes back with ``unsupported`` set. Raises
    ValueError only for a malformed request (the caller's fault).
    """
    fmt = FORMATS.get(request.fmt_name)
    if fmt is None:
        raise ValueError(f"unknown format {request.fmt_name!r}")
    if request.op not in OPS:
        raise ValueError(f"unknown op {request.op!r}")
    linear = request.op == LINEAR_CROSS_ENTROPY  # its own calling conventions: linear_calling
    if request.direction == "forward":
        opfn = cand.ops.get(request.op)
        if opfn is None:
            raise ValueError(f"{cand.name} defines no {request.op}")
        return (call_linear_function if linear else _call_forward)(opfn, request, fmt)
    if request.direction != "backward":
        raise ValueError(f"unknown direction {request.direction!r}")
    mode, reason = backward_mode(cand, request.op)
    if mode is None:
        return CallResult(None, None, False, "", (), 0.0, unsupported=reason)
    if mode == "function":
        return (call_linear_function if linear else _call_backward)(cand.backward[request.op], request, fmt)
    if mode == "vjp":
        return _call_vjp(cand.ops[request.op], request, fmt)
    return (call_linear_autograd if linear else _call_autograd)(cand.ops[request.op], request, fmt)


def call_op(opfn: OpFunction, x: np.ndarray, fmt: Format) -> CallResult:
    """Run one forward op (softmax, log_softmax or logsumexp) on a 2-D input ``x`` of format
    ``fmt``: ``call`` for a single function."""
    if opfn.op not in ("softmax", "log_softmax", "logsumexp"):
        raise ValueError(f"call_op runs softmax, log_softmax and logsumexp, not {opfn.op}: use call()")
    return _call_forward(opfn, CallRequest(opfn.op, "forward", x, fmt.name), fmt)


def call_function(opfn: OpFunction, request: CallRequest) -> CallResult:
    """Call one function as ``call`` would call it (the probes try functions, not candidates)."""
    fmt = FORMATS[request.fmt_name]
    if request.op == LINEAR_CROSS_ENTROPY:
        return call_linear_function(opfn, request, fmt)
    if opfn.op in BACKWARD_FUNCTIONS:
        return _call_backward(opfn, request, fmt)
    return _call_forward(opfn, request, fmt)


def _logits(request: CallRequest, fmt: Format) -> np.ndarray:
    """The request's x in ``fmt``, checked to be 2-D."""
    x = as_format(np.asarray(request.x), fmt)
    if x.ndim != 2:
        raise ValueError(f"call needs a 2-D input, got shape {x.shape}")
    return x


def _array(value: np.ndarray | None, name: str, fmt: Format, shapes: Iterable[tuple[int, ...]]) -> np.ndarray:
    """A request's ``y`` or ``dy`` in ``fmt``, checked to have one of ``shapes``."""
    if value is None:
        raise ValueError(f"this call needs {name}")
    arr = as_format(np.asarray(value), fmt)
    shapes = list(shapes)
    if arr.shape not in shapes:
        raise ValueError(f"{name} of shape {arr.shape}, expected {' or '.join(map(str, shapes))}")
    return arr


def _loss(request: CallRequest) -> LossLike:
    """The request's loss inputs (a probe's stand-in has the attributes a call reads)."""
    if request.loss is None:
        raise ValueError("a cross_entropy call needs loss inputs")
    return request.loss


def _target(loss: LossLike, fmt: Format, rows: int, n: int) -> np.ndarray:
    """Class indices as int64 (rows,), or probabilities in ``fmt`` (rows, n)."""
    if loss.target_kind == "probability":
        t = as_format(np.asarray(loss.target), fmt)
        expected: tuple[int, ...] = (rows, n)
    else:
        t = np.asarray(loss.target)
        if t.dtype.kind not in "iu":
            raise ValueError(f"class-index targets must be integers, not {t.dtype}")
        t = t.astype(np.int64)
        expected = (rows,)
    if t.shape != expected:
        raise ValueError(f"{loss.target_kind} targets of shape {t.shape}, expected {expected}")
    return t


def _loss_keyword_args(opfn: OpFunction, loss: LossLike, args: Arguments, fmt: Format) -> dict[str, Any]:
    """The case's keywords that the function accepts (weight converted like the logits); row by
    row, reduction="none" when it accepts reduction (each call sees one row)."""
    kwargs: dict[str, Any] = {}
    for key, value in loss.keywords().items():
        if key not in opfn.keywords:
            continue
        if isinstance(value, np.ndarray):
            value = args.add(key, as_format(value, fmt))
        kwargs[key] = value
    if opfn.rowwise and "reduction" in opfn.keywords:
        kwargs["reduction"] = "none"
    return kwargs


def _rowwise_mean(opfn: OpFunction, dy: np.ndarray, loss: LossLike | None) -> CallResult | None:
    """Row by row, a mean-reduced loss's gradient cannot be asked for (each call sees one row)."""
    if opfn.rowwise and loss is not None and dy.ndim == 0 and loss.reduction == "mean":
        return CallResult(None, None, False, "", (), 0.0, unsupported=(
            "a row-by-row cross_entropy cannot be differentiated through the mean over rows"))
    return None


def _call_forward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """``_forward`` (in JAX's 64-bit mode for a JAX function on float64 input)."""
    if opfn.backend == "jax":
        with jax_precision(fmt):
            return _forward(opfn, request, fmt)
    return _forward(opfn, request, fmt)


def _forward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """A forward op: fn(x) or, for cross_entropy, fn(logits, target, **accepted keywords)."""
    x = _logits(request, fmt)
    rows, n = x.shape
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    try:
        if opfn.op == "cross_entropy":
            loss = _loss(request)
            target = _target(loss, fmt, rows, n)
            values = [(args.add("logits", x), True), (args.add("target", target), True)]
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
        else:
            values = [(args.add("x", x), True)]
    except ValueError:
        raise
    except Exception as exc:
        return placement_failure(opfn, exc)
    run = run_calls(opfn, call_arguments(opfn, values, kwargs, rows))
    if opfn.op == "cross_entropy":
        if opfn.rowwise:
            return finish_call(opfn, run, args, fmt, (), allow=[(1,)], stack=True)
        if "reduction" in kwargs and kwargs["reduction"] == "none":
            return finish_call(opfn, run, args, fmt, (rows,))
        if "reduction" in kwargs:
            return finish_call(opfn, run, args, fmt, (), allow=[(1,)])
        return finish_call(opfn, run, args, fmt, (rows,), allow=[(rows, 1)], also=[()])
    if opfn.op == "logsumexp":
        if opfn.rowwise:
            return finish_call(opfn, run, args, fmt, (), allow=[(1,)], stack=True)
        return finish_call(opfn, run, args, fmt, (rows,), allow=[(rows, 1)] + ([()] if rows == 1 else []))
    if opfn.rowwise:
        return finish_call(opfn, run, args, fmt, (n,), stack=True)
    return finish_call(opfn, run, args, fmt, (rows, n))


def _call_backward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """``_backward`` (in JAX's 64-bit mode for a JAX function on float64 input)."""
    if opfn.backend == "jax":
        with jax_precision(fmt):
            return _backward(opfn, request, fmt)
    return _backward(opfn, request, fmt)


def _backward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """An explicit backward function, positionally: softmax_backward(y, dy),
    log_softmax_backward(y, dy), logsumexp_backward(x, y, dy) or
    cross_entropy_backward(logits, target, dloss, **accepted keywords); -> (rows, n)."""
    op = BACKWARD_FUNCTIONS[opfn.op]
    x = _logits(request, fmt)
    rows, n = x.shape
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    loss = _loss(request) if op == "cross_entropy" else None
    row_shape = (rows,) if op in ("logsumexp", "cross_entropy") else (rows, n)
    dy = _array(request.dy, "dy", fmt, [row_shape, ()] if op == "cross_entropy" else [row_shape])
    skip = _rowwise_mean(opfn, dy, loss)
    if skip is not None:
        return skip
    try:
        if loss is not None:
            target = _target(loss, fmt, rows, n)
            values = [(args.add("logits", x), True), (args.add("target", target), True),
                      (args.add("dloss", dy), dy.ndim == 1)]
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
        else:
            y = _array(request.y, "y", fmt, [row_shape])
            values = [(args.add("y", y), True), (args.add("dy", dy), True)]
            if op == "logsumexp":
                values.insert(0, (args.add("x", x), True))
    except ValueError:
        raise
    except Exception as exc:
        return placement_failure(opfn, exc)
    run = run_calls(opfn, call_arguments(opfn, values, kwargs, rows))
    if opfn.rowwise:
        return finish_call(opfn, run, args, fmt, (n,), stack=True)
    return finish_call(opfn, run, args, fmt, (rows, n))


@dataclass
class _BackwardSetup:
    """What a backward pass through autograd or jax.vjp calls the forward function with."""

    args: Arguments
    values: list[tuple[Any, bool]]
    kwargs: dict[str, Any]
    dy: np.ndarray
    shape: tuple[int, int]


def _backward_setup(opfn: OpFunction, request: CallRequest, fmt: Format, leaf: bool) -> _BackwardSetup | CallResult:
    """The logits (a leaf tensor for autograd when ``leaf``), the loss's target and keywords, and dy
    checked against the op's output shapes; a CallResult instead when the call cannot be made (a
    row-by-row mean loss, an input that cannot be placed)."""
    op = opfn.op
    x = _logits(request, fmt)
    rows, n = x.shape
    loss = _loss(request) if op == "cross_entropy" else None
    output_shapes: dict[str, list[tuple[int, ...]]] = {
        "softmax": [(rows, n)], "log_softmax": [(rows, n)], "logsumexp": [(rows,)], "cross_entropy": [(rows,), ()]}
    dy = _array(request.dy, "dy", fmt, output_shapes[op])
    skip = _rowwise_mean(opfn, dy, loss)
    if skip is not None:
        return skip
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    try:
        values = [(args.add("x", x, leaf=True) if leaf else args.add("x", x), True)]
        if loss is not None:
            values.append((args.add("target", _target(loss, fmt, rows, n)), True))
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
    except ValueError:
        raise
    except Exception as exc:
        return placement_failure(opfn, exc)
    return _BackwardSetup(args, values, kwargs, dy, (rows, n))


def _call_autograd(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """The backward pass of a torch forward function through autograd: x is a
    fresh leaf tensor, out = fn(x, ...), out.backward(dy); the output is x.grad."""
    if opfn.backend != "torch":
        raise ValueError(f"autograd needs a torch function, and {opfn.op} takes numpy arrays")
    import torch

    setup = _backward_setup(opfn, request, fmt, leaf=True)
    if isinstance(setup, CallResult):
        return setup
    args, values, kwargs, dy, (rows, n) = setup.args, setup.values, setup.kwargs, setup.dy, setup.shape
    leaf = values[0][0]
    define = f"define {_BACKWARD_SIGNATURES[opfn.op]} to audit the backward pass"
    extra: list[str] = []

    def backward(out: Any, i: int) -> None:
        if not is_tensor(out) or not out.requires_grad or out.grad_fn is None:
            raise Unsupported(f"output is not differentiable by autograd (no grad_fn); {define}")
        g = dy[i] if opfn.rowwise and dy.ndim else dy
        if out.numel() != g.size:
            raise OutputError(f"returned shape {tuple(out.shape)} but {g.shape} was expected")
        upstream = to_torch(np.array(g, copy=True), str(out.device)).to(out.dtype).reshape(out.shape)
        if out.dtype != fmt.torch_dtype:
            note = f"autograd: the output is {out.dtype}, so dy was passed in {out.dtype}"
            if note not in extra:
                extra.append(note)
        args.track("dy", upstream)
        out.backward(upstream)

    with torch.enable_grad():
        run = run_calls(opfn, call_arguments(opfn, values, kwargs, rows), after=backward)
    grad = leaf.grad
    if run.error is None and run.unsupported is None and grad is None:
        run.unsupported = f"the gradient did not reach the input (x.grad is None after backward); {define}"
    return finish_call(opfn, run, args, fmt, (rows, n), outputs=[grad], extra=extra)


_JAX_UNTRACEABLE = ("TracerArrayConversionError", "TracerBoolConversionError", "TracerIntegerConversionError",
                    "ConcretizationTypeError", "UnexpectedTracerError")
"""JAX's errors for code that leaves JAX while it is traced (through numpy, or Python control flow
on values): such a function runs forward but cannot be differentiated by jax.vjp."""


def _call_vjp(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """The backward pass of a JAX forward function through ``jax.vjp``: out, pullback =
    jax.vjp(lambda x: fn(x, ...), x); the output is pullback(dy), dy in out's dtype. Row by row,
    one vjp per row, stacked."""
    if opfn.backend != "jax":
        raise ValueError(f"jax.vjp needs a JAX function, and {opfn.op} takes {opfn.backend} arrays")
    with jax_precision(fmt):
        return _vjp(opfn, request, fmt)


def _vjp(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    import jax

    setup = _backward_setup(opfn, request, fmt, leaf=False)
    if isinstance(setup, CallResult):
        return setup
    args, values, kwargs, dy, (rows, n) = setup.args, setup.values, setup.kwargs, setup.dy, setup.shape
    define = f"define {_BACKWARD_SIGNATURES[opfn.op]} to audit the backward pass"
    extra: list[str] = []
    grads: list[Any] = []
    fn = opfn.fn

    def differentiated(x_in: Any, *rest: Any, **kw: Any) -> Any:
        try:
            out, pullback = jax.vjp(lambda v: fn(v, *rest, **kw), x_in)
        except Exception as exc:
            if type(exc).__name__ in _JAX_UNTRACEABLE or "not a valid JAX type" in str(exc):
                raise Unsupported(f"not differentiable by jax.vjp ({describe_exception(exc)}); {define}") from None
            raise
        return out, pullback

    def backward(result: Any, i: int) -> None:
        out, pullback = result
        g = dy[i] if opfn.rowwise and dy.ndim else dy
        if not is_jax_array(out):
            raise Unsupported(f"output is not a JAX array; {define}")
        if out.size != g.size:
            raise OutputError(f"returned shape {tuple(out.shape)} but {g.shape} was expected")
        upstream = to_jax(np.array(g, copy=True)).astype(out.dtype).reshape(out.shape)
        if out.dtype != fmt.np_dtype:
            note = f"jax.vjp: the output is {out.dtype}, so dy was passed in {out.dtype}"
            if note not in extra:
                extra.append(note)
        args.track("dy", upstream)
        (grad,) = pullback(upstream)
        block_until_ready(grad)
        grads.append(grad)

    run = run_calls(dataclasses.replace(opfn, fn=differentiated), call_arguments(opfn, values, kwargs, rows),
               after=backward)
    if opfn.rowwise:
        return finish_call(opfn, run, args, fmt, (n,), outputs=grads, stack=True, extra=extra)
    return finish_call(opfn, run, args, fmt, (rows, n), outputs=grads[:1] or [None], extra=extra)


