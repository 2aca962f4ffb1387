"""What a loaded candidate is: its functions, each with how it is called (``OpFunction``).

Detection builds these; calling, isolation and speed read them.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OpFunction:
    """One function of a candidate (an op or an explicit backward), with everything needed to call it."""

    op: str
    """The function's role: one of OPS, or a backward function name (``softmax_backward`` ...)."""
    fn: Callable[..., Any]
    """The user's callable."""
    backend: str
    """"numpy", "torch" or "jax": what kind of array it is given."""
    device: str
    """Torch device for the input ("cpu", "cuda", ...); "cpu" for numpy and JAX."""
    rowwise: bool
    """Called once per row with a 1-D vector instead of once with the 2-D input."""
    dim_kw: str | None
    """Keyword ("dim" or "axis") through which -1 is passed, if any."""
    notes: tuple[str, ...] = ()
    """What detection found that a reader should know (row-by-row mode, a backend switch)."""
    keywords: frozenset[str] = frozenset()
    """cross_entropy and cross_entropy_backward: the LOSS_KEYWORDS it accepts by name (all of
    them with ``**kwargs``); empty for the other functions."""
    probability_targets: bool = True
    """cross_entropy and cross_entropy_backward: whether the probe with probability targets ran
    without raising; True for the other functions."""


def _empty_mapping() -> Mapping[str, OpFunction]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Candidate:
    """A named implementation of some of the ops."""

    name: str
    """Display name: the decorator's name, the file stem, or "builtin:NAME"."""
    target: str
    """Where it came from: the path as given, or "builtin:NAME"."""
    ops: Mapping[str, OpFunction]
    """The forward functions it implements, keyed by op, in OPS order."""
    description: str = ""
    """First line of its docstring (the functions' for decorated candidates, else the module's)."""
    backward: Mapping[str, OpFunction] = field(default_factory=_empty_mapping)
    """Its explicit backward functions, keyed by the *forward* op ("softmax" -> softmax_backward)."""
