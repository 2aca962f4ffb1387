"""The ``@candidate`` decorator: marks functions as (ops of) named candidates.

Standard library only, apart from the rest of softaudit.candidates (which loads and calls
candidates, with numpy), so that ``import softaudit`` and ``from softaudit import candidate`` in
a user's file stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from softaudit.errors import BadInput
from softaudit.ops import BACKWARD_FUNCTIONS, OPS

FUNCTION_NAMES = OPS + tuple(BACKWARD_FUNCTIONS)
"""Names a candidate's functions may have (or ``@candidate(op=...)`` may give): the ops, then
their explicit backward functions."""

BACKENDS = ("numpy", "torch", "jax")
"""The array libraries a candidate can be called with."""

_MARK = "__softaudit_candidate__"

_F = TypeVar("_F", bound=Callable[..., Any])

@dataclass(frozen=True)
class Mark:
    """What one ``@candidate(...)`` says about the function it decorates."""

    name: str | None
    op: str
    backend: str | None
    device: str | None
    rowwise: bool

def candidate(
    name: str | Callable[..., Any] | None = None,
    *,
    op: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    rowwise: bool = False,
) -> Any:
    """Mark a function as (one op of) a named candidate; returns it unchanged.

    ``name`` defaults to the file's stem, ``op`` to the function's name: an op
    or an explicit backward function name (``softmax_backward`` ...). Give
    ``backend`` ("numpy", "torch" or "jax") and ``device`` to skip detection (a
    device implies torch); ``rowwise=True`` audits a 1-D function row by row.
    Several decorators may be stacked to put one function in several
    candidates. Bare ``@candidate`` works too. Mistakes raise at decoration
    time, so they surface as a load error naming the line.
    """
    if callable(name):
        return candidate()(name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise BadInput(f"@candidate: name must be a non-empty string, not {name!r}")
    if op is not None and op not in FUNCTION_NAMES:
        raise BadInput(f"@candidate: op must be one of {', '.join(FUNCTION_NAMES)}, not {op!r}")
    if backend is not None and backend not in BACKENDS:
        raise BadInput(f"@candidate: backend must be 'numpy', 'torch' or 'jax', not {backend!r}")
    if device is not None and backend in ("numpy", "jax"):
        raise BadInput(f"@candidate: device applies to torch only, not to backend={backend!r}")

    def mark(fn: _F) -> _F:
        fn_op = op if op is not None else getattr(fn, "__name__", None)
        if fn_op not in FUNCTION_NAMES:
            raise BadInput(
                f"@candidate: {getattr(fn, '__name__', fn)!r} is not named after an op; "
                f"pass op= (one of {', '.join(FUNCTION_NAMES)})"
            )
        marks = marks_of(fn) + (Mark(name, fn_op, backend, device, bool(rowwise)),)
        try:
            setattr(fn, _MARK, marks)
        except (AttributeError, TypeError):
            raise TypeError(f"@candidate cannot mark {fn!r}; wrap it in a def") from None
        return fn

    return mark

def marks_of(obj: object) -> tuple[Mark, ...]:
    """The marks stored on ``obj`` (read from its ``__dict__`` only, so that
    objects answering every attribute, such as mocks, are not mistaken)."""
    try:
        marks = vars(obj).get(_MARK, ())
    except TypeError:
        return ()
    return marks if isinstance(marks, tuple) else ()
