"""The reference stage: certified, correctly rounded exact values of every op, and their cache.

The one module the rest of softaudit imports the references from. Inside: ``exact`` (the mpmath
engine, which owns its context; forward ops), ``gradients`` (the VJPs), ``loss`` (cross-entropy and
its gradient), the certified fast paths behind the ``FastPath`` protocol (``fast_long_double``,
``fast_double_double``, chosen by ``engines.fast_path``) and ``cache`` (the on-disk store).
"""

from __future__ import annotations

from softaudit.reference.cache import ReferenceCache, default_cache_dir
from softaudit.reference.engines import ENGINES, fast_path
from softaudit.reference.exact import (
    ENGINE_VERSION,
    ROW_OPS,
    ExactRow,
    OpReference,
    ReferenceSet,
    RowStats,
    exact_element,
    exact_row,
    reference_rows,
)
from softaudit.reference.fast_long_double import loss_coefficients
from softaudit.reference.fast_path import FastPath, LossCoefficients
from softaudit.reference.gradients import backward_reference
from softaudit.reference.loss import (
    LossReference,
    loss_gradient_reference,
    loss_reference,
    mean_denominator,
    row_coefficients,
    upstream_scale,
)

__all__ = [
    "ENGINES",
    "ENGINE_VERSION",
    "ROW_OPS",
    "ExactRow",
    "FastPath",
    "LossCoefficients",
    "LossReference",
    "OpReference",
    "ReferenceCache",
    "ReferenceSet",
    "RowStats",
    "backward_reference",
    "default_cache_dir",
    "exact_element",
    "exact_row",
    "fast_path",
    "loss_coefficients",
    "loss_gradient_reference",
    "loss_reference",
    "mean_denominator",
    "reference_rows",
    "row_coefficients",
    "upstream_scale",
]
