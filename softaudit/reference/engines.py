"""Which engine computes a format's references: its certified fast path, else mpmath alone.

ENGINES names the choices the reference functions take; fast_path() picks the FastPath for a
format on this machine (long double for the narrow formats where it is wider, double-double for
float64).
"""

from __future__ import annotations

from softaudit.formats import Format
from softaudit.reference.fast_double_double import DoubleDoublePath
from softaudit.reference.fast_long_double import LongDoublePath
from softaudit.reference.fast_path import FastPath

ENGINES = ("auto", "mpmath")
"""auto: the certified fast path (fast_path) where one applies, mpmath for what it cannot
prove; mpmath: every element from the mpmath engine (the verification suite's referee)."""

LONG_DOUBLE = LongDoublePath()
DOUBLE_DOUBLE = DoubleDoublePath()
PATHS: tuple[FastPath, ...] = (LONG_DOUBLE, DOUBLE_DOUBLE)
"""The fast paths, in the order fast_path tries them."""


def fast_path(fmt: Format) -> FastPath | None:
    """The certified fast path for ``fmt`` on this machine, or None where only the mpmath engine applies."""
    for path in PATHS:
        if path.applies(fmt):
            return path
    return None
