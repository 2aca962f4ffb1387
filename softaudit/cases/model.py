"""The case model: what a case of the library is (name, family, ops, directions, formats, shape,
seed and generator parameters) and the vocabulary of its parameters (docs/cases.md).

A case is data (docs/cases.md#cases-the-input-library); :mod:`softaudit.cases.reader` reads and checks case files into
:class:`Case` objects and :mod:`softaudit.cases.inputs` turns one into exact inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from softaudit.errors import BadInput
from softaudit.formats import FORMATS, FormatError, get_format
from softaudit.ops import DIRECTIONS, LINEAR_CROSS_ENTROPY

FAMILIES: Mapping[str, str] = MappingProxyType({
    "offsets": "huge common offsets (±1e3 … 1e38, and near each format's range) with a fixed spread on top",
    "dynamic-range": "gaps across exp's limits: overflow of exp and of sums; probabilities at the subnormal thresholds",
    "masking": "-inf and finite mask constants (finfo.min, -1e4) in every pattern, set or added to scores",
    "special-values": "+inf, NaN (alone, with inf) and ±0 entries",
    "ties": "several entries equal to the row maximum",
    "confident": "near-one-hot rows with p_max in {0.9, 0.99, 0.999, 1 - 2^-23}; cross-entropy's target at the max",
    "high-entropy": "uniform and near-uniform rows up to n = 262144",
    "long-rows": "long 16-bit rows (n = 512 … 262144) where 16-bit accumulation saturates",
    "shapes": "odd and awkward shapes: n = 1, 2, 3, 513, 1023, vocabulary sizes, many rows",
    "seed-examples": "the project's own seed examples (docs/cases.md#the-seed-examples)",
    "cross-entropy": "losses: far-off targets, offsets, smoothing, ignore_index, weights, soft targets, bad targets",
    "gradients": "backward passes with an upstream of ones on confident rows, where p - 1 cancels",
    "linear-cross-entropy": "the fused linear cross-entropy at LLM shapes: vocabularies 32000 to 262144, z-loss, softcap, padding",
})
"""The shipped library's families and what each covers. User files may add others."""

VALUE_KINDS = ("normal", "uniform", "ramp", "constant", "confident", "explicit")
"""Base distributions of a case's values (the ``values`` key)."""

MASK_PATTERNS = ("none", "prefix", "suffix", "scattered", "alternate", "causal", "all-but-one", "all")
"""Column patterns of the ``mask`` key."""

MASK_MODES = ("set", "add")
"""``set`` replaces masked scores by the mask value; ``add`` adds it, as attention masks do."""

FINFO_SYMBOLS = ("finfo.min", "finfo.max")
"""Symbolic values resolved per format: -max_finite and +max_finite."""

Value = float | str
"""A number, or one of :data:`FINFO_SYMBOLS`."""

TARGET_CHOICES = ("random", "max", "min")
"""Class-index targets per row (the ``target`` key), unless it lists them explicitly."""

PROBABILITY_ZEROS = ("none", "masked", "one-hot")
"""Where probability targets are exactly 0 (the ``probability_zeros`` key)."""

WEIGHT_CHOICES = ("none", "random", "ones")
"""Class weights (the ``weight`` key), unless it lists them explicitly."""

OUT_OF_RANGE = ("none", "high", "negative")
"""Targets outside [0, n): ``high`` writes n, ``negative`` writes -1 (the ``out_of_range`` key)."""

UPSTREAM_KINDS = ("normal", "ones")
"""Upstream gradients of the backward direction (the ``upstream`` key)."""

LOSS_KEYS = ("target", "target_kind", "probability_zeros", "label_smoothing", "ignore_index", "ignored_rows",
             "weight", "reduction", "out_of_range", "out_of_range_rows")
"""Keys that only mean something to cross_entropy: a case that sets one must include it in ``ops``."""

LINEAR_KEYS = ("tokens", "vocab", "hidden_size", "logit_std", "confident_tokens", "confident_margin", "bias",
               "ignored_tokens", "z_loss", "softcap")
"""Keys that only mean something to linear_cross_entropy (docs/cases.md#linear-cross-entropy-cases); its
cases also take label_smoothing, ignore_index, reduction and upstream."""

LINEAR_SHARED_KEYS = ("label_smoothing", "ignore_index", "reduction", "upstream")
"""cross_entropy's keys that a linear_cross_entropy case takes too."""

DEVICES = ("cpu", "cuda")
"""Devices a case may be restricted to (the ``devices`` key): a full-size case that only a GPU runs in time."""

TORCH_DEFAULT_IGNORE_INDEX = -100
"""torch's default ignore_index: a target equal to it is ignored even when the case passes none."""

PARAM_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "values": "normal",
    "scale": 1.0,
    "scale_fraction_of_max": None,
    "offset": 0.0,
    "offset_fraction_of_max": None,
    "value": 0.0,
    "p_max": None,
    "data": None,
    "gap": None,
    "ties": 1,
    "mask": "none",
    "mask_fraction": 0.5,
    "mask_value": -math.inf,
    "mask_mode": "set",
    "mask_rows": None,
    "inject": (),
    "target": "random",
    "target_kind": "index",
    "probability_zeros": "none",
    "label_smoothing": 0.0,
    "ignore_index": None,
    "ignored_rows": None,
    "weight": "none",
    "reduction": "none",
    "out_of_range": "none",
    "out_of_range_rows": (0,),
    "upstream": "normal",
    "hidden_size": None,
    "logit_std": 3.0,
    "confident_tokens": 0.0,
    "confident_margin": 16.0,
    "bias": False,
    "ignored_tokens": 0,
    "z_loss": 0.0,
    "softcap": None,
})
"""Every generator parameter with the value it takes when a case omits it (None: unused)."""



class CaseError(BadInput):
    """A malformed case file, or a selection that matches nothing. The message is one line."""


@dataclass(frozen=True)
class Case:
    """One case of the library: what to generate, and where it applies."""

    name: str
    """Unique kebab-case identifier (letters, digits, '-' and '.')."""
    family: str
    """Failure family (see :data:`FAMILIES`); ``--case`` patterns match it too."""
    description: str
    """One line: the failure the case provokes."""
    seen_in: str
    """Where such a failure was seen in the wild."""
    ops: tuple[str, ...]
    """Ops the case applies to, in :data:`OPS` order."""
    formats: tuple[str, ...]
    """Canonical format names the case is restricted to; () means all."""
    rows: int
    n: int
    seed: int
    """Per-case seed, combined with the audit's seed (default: CRC-32 of the name)."""
    directions: tuple[str, ...] = DIRECTIONS
    """Directions the case applies to, in :data:`DIRECTIONS` order (forward, backward)."""
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Generator parameters the file gave, validated and normalised (read-only)."""
    source: str = ""
    """Path of the file the case came from."""
    devices: tuple[str, ...] = ()
    """Devices the case runs on (DEVICES); () means any. A full-size linear_cross_entropy case says
    ("cuda",): a CPU audit leaves it out (docs/cases.md#devices)."""

    def applies_to(self, op: str, fmt_name: str, direction: str = "forward") -> bool:
        """Whether the case runs for ``op`` in ``direction`` in the format named ``fmt_name``."""
        return op in self.ops and direction in self.directions and self.applies_to_format(fmt_name)

    def runs_on(self, device: str) -> bool:
        """Whether the case runs in an audit whose candidates run on ``device`` ("cpu", "cuda", "cuda:1")."""
        return not self.devices or device.split(":")[0] in self.devices

    @property
    def linear(self) -> bool:
        """Whether this is a linear_cross_entropy case: rows are tokens, n the vocabulary."""
        return LINEAR_CROSS_ENTROPY in self.ops

    def applies_to_format(self, fmt_name: str) -> bool:
        """Whether the case runs in the format named ``fmt_name`` (aliases accepted)."""
        if not self.formats:
            return True
        name = fmt_name if fmt_name in FORMATS else _canonical_format(fmt_name)
        return name in self.formats

    @property
    def elements(self) -> int:
        """Input elements per format: rows * n (a linear case: its logits, tokens * vocabulary)."""
        return self.rows * self.n

    def param(self, key: str) -> Any:
        """A generator parameter, or its default from :data:`PARAM_DEFAULTS`."""
        return self.params.get(key, PARAM_DEFAULTS[key])


def _canonical_format(name: str) -> str:
    try:
        return get_format(name).name
    except FormatError:
        return name
