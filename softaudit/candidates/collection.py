"""Building candidates from functions: grouping a namespace's functions (a loaded file's module, a
module or a mapping the Python API is given) into named candidates, each function resolved by
detection.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

from softaudit.candidates.decorator import FUNCTION_NAMES, Mark, marks_of
from softaudit.candidates.detection import namespace_roots, resolve_function
from softaudit.candidates.errors import CandidateError, NoOpsError
from softaudit.candidates.model import Candidate, OpFunction
from softaudit.ops import BACKWARD_FUNCTIONS, OPS, backward_name


def candidates_from_module(module: types.ModuleType, target: str, default_name: str, rowwise: bool = False,
                           probe: bool = True, device: str | None = None) -> list[Candidate]:
    """The candidates a module defines: its ``@candidate`` functions, else its functions named after
    the contract (``softmax``, ``softmax_backward`` ...), each resolved by detection.

    ``target`` names the candidates' source in errors and records; ``default_name`` names the
    candidates the decorator does not; ``rowwise=True`` audits every op row by row; ``device`` is
    the requested device for torch functions that name none; ``probe=False`` keeps the static
    guesses. Raises CandidateError (NoOpsError when it defines none of the ops) in one line.
    """
    return _collect(vars(module), _first_line(module.__doc__), target, default_name, rowwise, probe, device)


def candidates_from_functions(functions: Mapping[str, Callable[..., Any]], target: str, default_name: str,
                              rowwise: bool = False, probe: bool = True,
                              device: str | None = None) -> list[Candidate]:
    """The candidates of callables keyed by their contract names (``softmax``, ``softmax_backward``
    ...), as ``candidates_from_module`` finds them in a module holding them under those names.

    Functions decorated with ``@candidate`` keep what the decorator says; mixing them with plain
    ones would hide the plain ones, and a decorator naming another op than the key would audit it
    as that op: both raise CandidateError.
    """
    marked = {key: marks_of(fn) for key, fn in functions.items()}
    if any(marked.values()):
        plain = [key for key, marks in marked.items() if not marks]
        if plain:
            raise CandidateError(f"{', '.join(plain)}: mixed with @candidate-decorated functions; "
                                 f"decorate every function or none")
        for key, marks in marked.items():
            other = [m.op for m in marks if m.op != key]
            if other:
                raise CandidateError(f"{key}: the function is decorated with @candidate(op={other[0]!r})")
    return _collect(dict(functions), "", target, default_name, rowwise, probe, device)


def _collect(namespace: Mapping[str, object], module_doc: str, target: str, default_name: str, rowwise: bool,
             probe: bool, device: str | None) -> list[Candidate]:
    """Group a namespace's functions into candidates and resolve each one (``module_doc``: the
    candidates' description when their functions' docstrings give none)."""
    marked: list[tuple[Any, Mark]] = []
    seen: set[int] = set()
    for obj in namespace.values():
        if id(obj) in seen or not callable(obj):
            continue
        seen.add(id(obj))
        marked.extend((obj, mark) for mark in marks_of(obj))

    groups: dict[str, dict[str, tuple[Any, Mark | None]]] = {}
    if marked:
        for fn, mark in marked:
            name = mark.name or default_name
            group = groups.setdefault(name, {})
            if mark.op in group:
                first = getattr(group[mark.op][0], "__name__", "?")
                second = getattr(fn, "__name__", "?")
                raise CandidateError(
                    f"{target}: candidate {name!r} has two {mark.op} functions ({first} and {second})"
                )
            group[mark.op] = (fn, mark)
    else:
        group = {}
        for fname in FUNCTION_NAMES:
            if fname in namespace:
                if not callable(namespace[fname]):
                    kind = type(namespace[fname]).__name__
                    raise CandidateError(f"{target}: {fname} is a {kind}, not a function")
                group[fname] = (namespace[fname], None)
        if not group:
            raise NoOpsError(f"{target} defines none of {', '.join(OPS)}")
        groups[default_name] = group

    for name, group in groups.items():
        for fname in group:
            op = BACKWARD_FUNCTIONS.get(fname)
            if op is not None and op not in group:
                who = f"{target}: candidate {name!r}" if marked else target
                raise CandidateError(f"{who} defines {fname} but not {op}")

    module_roots = namespace_roots(namespace)
    candidates = []
    for name, group in groups.items():
        resolve = functools.partial(resolve_function, module_roots=module_roots, force_rowwise=rowwise,
                                    target=target, probe=probe, requested_device=device)
        ops: dict[str, OpFunction] = {}
        loss_style = "none"
        for op in OPS:
            if op in group:
                ops[op], shape = resolve(op, *group[op])
                if op == "cross_entropy" and shape == ():
                    loss_style = "mean"  # a scalar loss: the backward's dloss is a scalar too
        backward = {
            op: resolve(backward_name(op), *group[backward_name(op)], loss_style=loss_style)[0]
            for op in OPS
            if backward_name(op) in group
        }
        fn_docs = [_first_line(getattr(fn, "__doc__", None)) for fn, mark in group.values() if mark]
        description = next((d for d in fn_docs if d), module_doc)
        candidates.append(Candidate(name, target, types.MappingProxyType(ops), description,
                                    types.MappingProxyType(backward)))
    return candidates


def _first_line(doc: str | None) -> str:
    """A docstring's summary: its first paragraph on one line (a summary may wrap), or ""."""
    if not isinstance(doc, str):
        return ""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
