"""The arrays one call gives a candidate: fresh copies (numpy arrays, torch tensors on its
device, or JAX arrays on the CPU), whole or row by row, remembered bit for bit to find the ones it changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softaudit.candidates.conversion import raw_bits, to_jax, to_torch
from softaudit.candidates.model import OpFunction


class Arguments:
    """The arrays of one call as the candidate gets them (fresh copies: numpy
    arrays, or torch tensors on its device), with their bits as given, to find
    the ones it changes."""

    def __init__(self, opfn: OpFunction) -> None:
        self.opfn = opfn
        self._given: list[tuple[str, Any, object, tuple[int, ...], np.ndarray]] = []

    def add(self, name: str, arr: np.ndarray, leaf: bool = False) -> Any:
        """A fresh copy of ``arr`` for the candidate; ``leaf``: a torch leaf that requires grad."""
        value: Any = np.array(arr, copy=True, order="C")
        if self.opfn.backend == "torch":
            value = to_torch(value, self.opfn.device)
            if leaf:
                value = value.clone().requires_grad_(True)
        elif self.opfn.backend == "jax":
            value = to_jax(value)  # immutable: jax.vjp needs no leaf
        self.track(name, value)
        return value

    def track(self, name: str, value: Any) -> None:
        """Remember ``value``'s dtype, shape and bits as the candidate receives it."""
        self._given.append((name, value, value.dtype, tuple(value.shape), raw_bits(value).copy()))

    def modified(self) -> list[str]:
        """Names of the arguments whose dtype, shape or any bit changed (NaN payloads included)."""
        names: list[str] = []
        for name, value, dtype, shape, bits in self._given:
            if value.dtype != dtype or tuple(value.shape) != shape or not np.array_equal(raw_bits(value), bits):
                if name not in names:
                    names.append(name)
        return names


def call_arguments(opfn: OpFunction, values: list[tuple[Any, bool]], kwargs: dict[str, Any],
                   rows: int) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The positional arguments of each call: whole arrays, or (row by row) row ``i`` of
    every argument marked per-row and the others whole."""
    if not opfn.rowwise:
        return [(tuple(v for v, _ in values), kwargs)]
    return [(tuple(v[i] if per_row else v for v, per_row in values), kwargs) for i in range(rows)]
