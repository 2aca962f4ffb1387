"""Calling a candidate's ``linear_cross_entropy``: forward as ``fn(hidden, weight, target, **kw)``
(``bias=`` and the loss keywords it accepts), backward through its explicit
``linear_cross_entropy_backward(hidden, weight, target, bias, dy, **kw)`` or through torch autograd
with hidden, weight and bias as leaves (docs/candidates.md#linear-cross-entropy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softaudit.candidates.arguments import Arguments
from softaudit.candidates.conversion import (
    OutputError,
    as_format,
    describe_value,
    is_tensor,
    jax_precision,
    normalise_output,
    output_problem,
    to_torch,
)
from softaudit.candidates.model import OpFunction
from softaudit.candidates.running import (
    CallRequest,
    CallResult,
    Run,
    Unsupported,
    finish_call,
    placement_failure,
    run_calls,
)
from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.formats import Format
from softaudit.ops import LINEAR_CROSS_ENTROPY, backward_name

LINEAR_BACKWARD_SIGNATURE = "linear_cross_entropy_backward(hidden, weight, target, bias, dy)"
"""The explicit backward function, as reasons for skipping name it."""

GRADIENT_NAMES = ("hidden", "weight", "bias")
"""The tensors a backward call returns the gradients of, in order."""


def call_linear_function(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """Call one function, the forward or the explicit backward (calling.call dispatches here)."""
    if opfn.rowwise:
        return CallResult(None, None, False, "", (), 0.0,
                          unsupported=f"{LINEAR_CROSS_ENTROPY} is not audited row by row (its rows share the weight)")
    backward = opfn.op == backward_name(LINEAR_CROSS_ENTROPY)
    if opfn.backend == "jax":
        with jax_precision(fmt):
            return _explicit_backward(opfn, request, fmt) if backward else _forward(opfn, request, fmt)
    return _explicit_backward(opfn, request, fmt) if backward else _forward(opfn, request, fmt)


def linear_request_inputs(request: CallRequest, fmt: Format) -> LinearLossInputs:
    """The request's linear inputs with every array in ``fmt`` (ValueError when it has none)."""
    inp = request.linear
    if inp is None:
        raise ValueError(f"a {LINEAR_CROSS_ENTROPY} call needs its linear inputs")
    target = np.asarray(inp.target)
    if target.dtype.kind not in "iu" or target.shape != (inp.tokens,):
        raise ValueError(f"targets must be {inp.tokens} integers, got {target.dtype} {target.shape}")
    return LinearLossInputs(
        hidden=as_format(np.asarray(inp.hidden), fmt), weight=as_format(np.asarray(inp.weight), fmt),
        bias=None if inp.bias is None else as_format(np.asarray(inp.bias), fmt), target=target.astype(np.int64),
        ignore_index=inp.ignore_index, label_smoothing=inp.label_smoothing, reduction=inp.reduction,
        z_loss=inp.z_loss, softcap=inp.softcap)


def _keywords(opfn: OpFunction, inp: LinearLossInputs) -> dict[str, Any]:
    """The case's keywords that the function accepts."""
    return {k: v for k, v in inp.keywords().items() if k in opfn.keywords}


def _loss_shapes(inp: LinearLossInputs, kwargs: dict[str, Any]) -> tuple[tuple[int, ...], list, list]:
    """(expected, allowed, also) shapes of the loss a forward call returns."""
    tokens = inp.tokens
    if kwargs.get("reduction") == "none":
        return (tokens,), [(tokens, 1)], []
    if "reduction" in kwargs:
        return (), [(1,)], []
    return (tokens,), [(tokens, 1)], [()]


def _forward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    inp = linear_request_inputs(request, fmt)
    args = Arguments(opfn)
    kwargs = _keywords(opfn, inp)
    try:
        values = (args.add("hidden", inp.hidden), args.add("weight", inp.weight), args.add("target", inp.target))
        if inp.bias is not None and "bias" in opfn.keywords:
            kwargs["bias"] = args.add("bias", inp.bias)
    except Exception as exc:
        return placement_failure(opfn, exc)
    run = run_calls(opfn, [(values, kwargs)])
    expected, allow, also = _loss_shapes(inp, kwargs)
    return finish_call(opfn, run, args, fmt, expected, allow=allow, also=also)


def _dy(request: CallRequest, inp: LinearLossInputs, fmt: Format) -> np.ndarray:
    if request.dy is None:
        raise ValueError("a backward call needs dy")
    dy = as_format(np.asarray(request.dy), fmt)
    if dy.shape not in ((inp.tokens,), ()):
        raise ValueError(f"dy of shape {dy.shape}, expected ({inp.tokens},) or ()")
    return dy


def _explicit_backward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    inp = linear_request_inputs(request, fmt)
    dy = _dy(request, inp, fmt)
    args = Arguments(opfn)
    kwargs = _keywords(opfn, inp)
    try:
        bias = args.add("bias", inp.bias) if inp.bias is not None else None
        values = (args.add("hidden", inp.hidden), args.add("weight", inp.weight), args.add("target", inp.target),
                  bias, args.add("dy", dy))
    except Exception as exc:
        return placement_failure(opfn, exc)
    run = run_calls(opfn, [(values, kwargs)])
    if run.error is not None or run.unsupported is not None:
        return finish_call(opfn, run, args, fmt, inp.hidden.shape)
    raw = run.raw[0]
    if not isinstance(raw, (tuple, list)) or len(raw) != 3:
        problem = f"returned a {describe_value(raw)}, not (d_hidden, d_weight, d_bias)"
        return CallResult(None, problem, bool(args.modified()), describe_value(raw), run.notes, run.seconds)
    return _finish_gradients(opfn, run, args, fmt, inp, list(raw), [])


def _finish_gradients(opfn: OpFunction, run: Run, args: Arguments, fmt: Format, inp: LinearLossInputs,
                      grads: list[Any], extra: list[str]) -> CallResult:
    """The CallResult of a backward run: d_hidden as the output, every gradient among ``parts``."""
    result = finish_call(opfn, run, args, fmt, inp.hidden.shape, outputs=[grads[0]], extra=extra)
    if result.output is None:
        return result
    parts: list[tuple[str, np.ndarray | None]] = [("hidden", result.output)]
    shapes = {"weight": inp.weight.shape, "bias": (inp.vocabulary,)}
    for name, value in zip(GRADIENT_NAMES[1:], grads[1:]):
        if name == "bias" and inp.bias is None:
            parts.append((name, None))
            continue
        if value is None:
            return CallResult(None, f"returned no {name} gradient", result.input_modified, result.output_dtype,
                              result.notes, result.seconds)
        try:
            arr, _desc, _note = normalise_output(value, shapes[name], fmt)
        except Exception as exc:
            return CallResult(None, f"{name} gradient: {output_problem(exc, value)}", result.input_modified,
                              result.output_dtype, result.notes, result.seconds)
        parts.append((name, arr))
    return CallResult(result.output, None, result.input_modified, result.output_dtype, result.notes, result.seconds,
                      parts=tuple(parts))


def call_linear_autograd(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """Backward through torch autograd: hidden, weight (and bias) are fresh leaves, out = fn(...),
    out.backward(dy); the output is their .grad."""
    import torch

    inp = linear_request_inputs(request, fmt)
    dy = _dy(request, inp, fmt)
    args = Arguments(opfn)
    kwargs = _keywords(opfn, inp)
    try:
        hidden = args.add("hidden", inp.hidden, leaf=True)
        weight = args.add("weight", inp.weight, leaf=True)
        values = (hidden, weight, args.add("target", inp.target))
        bias = None
        if inp.bias is not None and "bias" in opfn.keywords:
            bias = kwargs["bias"] = args.add("bias", inp.bias, leaf=True)
    except Exception as exc:
        return placement_failure(opfn, exc)
    define = f"define {LINEAR_BACKWARD_SIGNATURE} to audit the backward pass"
    extra: list[str] = []

    def backward(out: Any, i: int) -> None:
        if not is_tensor(out) or not out.requires_grad or out.grad_fn is None:
            raise Unsupported(f"output is not differentiable by autograd (no grad_fn); {define}")
        if out.numel() != dy.size:
            raise OutputError(f"returned shape {tuple(out.shape)} but {dy.shape} was expected")
        upstream = to_torch(np.array(dy, copy=True), str(out.device)).to(out.dtype).reshape(out.shape)
        if out.dtype != fmt.torch_dtype:
            extra.append(f"autograd: the output is {out.dtype}, so dy was passed in {out.dtype}")
        args.track("dy", upstream)
        out.backward(upstream)

    with torch.enable_grad():
        run = run_calls(opfn, [(values, kwargs)], after=backward)
    grads = [hidden.grad, weight.grad, None if bias is None else bias.grad]
    if run.error is None and run.unsupported is None:
        lost = [name for name, g in zip(GRADIENT_NAMES, grads) if g is None and (name != "bias" or bias is not None)]
        if lost:
            run.unsupported = f"the gradient did not reach {' and '.join(lost)} (.grad is None after backward); {define}"
    return _finish_gradients(opfn, run, args, fmt, inp, grads, extra)
