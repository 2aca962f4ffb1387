"""Floating-point formats audited by softaudit, and exact rounding into them.

Every conversion that decides a value here is exact: float64 -> format uses
scaling by powers of two and round-half-even on integers held exactly in
float64; mpmath -> format uses integer arithmetic on the mantissa. Neither
goes through an intermediate format, so none of the double-rounding traps (float64 -> bfloat16
via float32: docs/formats.md#rounding-into-a-format) can occur.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np

from softaudit.errors import BadInput


class FormatError(BadInput):
    """An unknown format name was given."""


@dataclass(frozen=True)
class Format:
    """A binary floating-point format (IEEE-754 style, with subnormals)."""

    name: str
    """Canonical name, e.g. ``"float32"``; also the JSON spelling."""
    p: int
    """Precision in bits, including the hidden bit."""
    emin: int
    """Exponent of the smallest normal number."""
    emax: int
    """Exponent of the largest finite number."""
    np_dtype: np.dtype
    """numpy dtype holding values of this format (bfloat16 through ml_dtypes)."""
    uint_dtype: np.dtype
    """Unsigned integer dtype of the same width, for bit-level views."""

    @functools.cached_property
    def u(self) -> float:
        """Unit roundoff 2^-p."""
        return math.ldexp(1.0, -self.p)

    @functools.cached_property
    def max_finite(self) -> float:
        """Largest finite value, (2 - 2^(1-p)) * 2^emax."""
        return math.ldexp(float((1 << self.p) - 1), self.emax - self.p + 1)

    @functools.cached_property
    def smallest_subnormal(self) -> float:
        """2^(emin - p + 1): also ulp(0) in this format."""
        return math.ldexp(1.0, self.emin - self.p + 1)

    @property
    def torch_dtype(self):
        """The matching torch dtype (imported lazily: torch is slow to import)."""
        import torch

        return getattr(torch, self.name)

    def __str__(self) -> str:
        return self.name


FLOAT64 = Format("float64", 53, -1022, 1023, np.dtype(np.float64), np.dtype(np.uint64))
FLOAT32 = Format("float32", 24, -126, 127, np.dtype(np.float32), np.dtype(np.uint32))
FLOAT16 = Format("float16", 11, -14, 15, np.dtype(np.float16), np.dtype(np.uint16))
BFLOAT16 = Format("bfloat16", 8, -126, 127, np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16))

FORMATS: dict[str, Format] = {f.name: f for f in (FLOAT64, FLOAT32, FLOAT16, BFLOAT16)}
"""All formats, in the order they are audited by default."""

_ALIASES = {
    "f64": "float64", "fp64": "float64", "double": "float64",
    "f32": "float32", "fp32": "float32", "float": "float32",
    "f16": "float16", "fp16": "float16", "half": "float16",
    "bf16": "bfloat16",
}


def get_format(name: str) -> Format:
    """Look a format up by name or common alias (``bf16``, ``fp32``...)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return FORMATS[key]
    except KeyError:
        known = ", ".join(FORMATS)
        raise FormatError(f"unknown format {name!r} (known: {known})") from None


def format_of_dtype(dtype: object) -> Format | None:
    """The Format whose numpy or torch dtype is ``dtype``, if any."""
    text = str(dtype).replace("torch.", "")
    return FORMATS.get(text)


# --------------------------------------------------------------------------
# float64 -> format, vectorised and exact


def round_float64_array(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round float64 values correctly (nearest, ties to even) into ``fmt``.

    Returns an array of ``fmt.np_dtype``. NaN and ±inf pass through; values
    beyond the format's range become ±inf exactly where round-to-nearest says.
    """
    x = np.asarray(x, dtype=np.float64)
    if fmt is FLOAT64:
        return x.copy()
    out = np.array(x, dtype=np.float64, copy=True)
    finite = np.isfinite(out) & (out != 0)
    if finite.any():
        v = out[finite]
        _, e2 = np.frexp(v)  # v = m * 2^e2, 0.5 <= |m| < 1, so floor(log2|v|) = e2 - 1
        qe = np.maximum(e2 - 1, fmt.emin) - fmt.p + 1  # exponent of ulp(v) in fmt
        # |v * 2^-qe| < 2^p <= 2^53: the scaling and the rint are both exact.
        q = np.ldexp(np.rint(np.ldexp(v, -qe)), qe)
        q[np.abs(q) > fmt.max_finite] = np.copysign(np.inf, q[np.abs(q) > fmt.max_finite])
        out[finite] = q
    # Every value in ``out`` is now representable in fmt, so this cast is exact.
    return out.astype(fmt.np_dtype)


def to_float64(y: np.ndarray) -> np.ndarray:
    """Widen values of any audited format to float64 (always exact)."""
    return np.asarray(y).astype(np.float64)


# --------------------------------------------------------------------------
# mpmath -> format, per value and exact


def ulp_exponent(v: mpmath.mpf, fmt: Format) -> int:
    """k such that ulp(v) = 2^k in fmt (docs/formats.md#error-in-ulps); ulp(0) is the smallest subnormal."""
    if not v:
        return fmt.emin - fmt.p + 1
    sign, man, exp, bc = v._mpf_
    return max(exp + bc - 1, fmt.emin) - fmt.p + 1


def round_mpf(v: mpmath.mpf, fmt: Format) -> float:
    """Round an mpmath value correctly (nearest, ties to even) into fmt.

    Returned as a Python float that is exactly representable in fmt.
    """
    if mpmath.isnan(v):
        return math.nan
    if mpmath.isinf(v):
        return math.inf if v > 0 else -math.inf
    if not v:
        return 0.0
    sign, man, exp, bc = v._mpf_
    k = max(exp + bc - 1, fmt.emin) - fmt.p + 1
    shift = k - exp
    if shift > bc:
        n = 0  # |v| < 2^(k-1) = half of the smallest subnormal: rounds to zero
    elif shift <= 0:
        n = man << -shift
    else:
        n = man >> shift
        rem = man & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (n & 1)):
            n += 1
    # n <= 2^p, so n * 2^k is exact in float64 whenever it is below 2^(emax+1).
    if n.bit_length() - 1 + k > fmt.emax:
        mag = math.inf
    else:
        mag = math.ldexp(float(n), k)
        if mag > fmt.max_finite:
            mag = math.inf
    return -mag if sign else mag


def exact_sum(values: np.ndarray) -> Fraction:
    """The exact sum of finite float values, as a Fraction (no rounding anywhere).

    Each value is m * 2^(e-53) with an integer m of at most 53 bits; the m of
    equal exponent are summed as Python integers and the groups combined exactly.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v != 0]
    if v.size == 0:
        return Fraction(0)
    mant, exp = np.frexp(v)
    m = (mant * 2.0**53).astype(np.int64)
    e = exp.astype(np.int64) - 53
    order = np.argsort(e, kind="stable")
    e_sorted, m_sorted = e[order], m[order]
    bounds = np.flatnonzero(np.diff(e_sorted)) + 1
    e_min = int(e_sorted[0])
    total = 0
    for part_e, part_m in zip(np.split(e_sorted, bounds), np.split(m_sorted, bounds)):
        total += sum(part_m.tolist()) << (int(part_e[0]) - e_min)
    return Fraction(total, 1) * Fraction(2) ** e_min


def exact_dot(a: np.ndarray, b: np.ndarray) -> Fraction:
    """The exact sum of products a_i b_i of finite float values, as a Fraction.

    A product of two float64 values needs up to 106 bits, so a_i b_i rounded to float64 is not
    exact in general: each is split error-free into p + e (TwoProduct, exact where both factors
    lie in [2^-450, 2^450]) and both parts summed exactly; factors outside that range are
    multiplied as Fractions.
    """
    from softaudit.double_double import two_prod

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    nonzero = (a != 0) & (b != 0)
    safe = nonzero & (np.abs(a) >= 2.0**-450) & (np.abs(a) <= 2.0**450) \
        & (np.abs(b) >= 2.0**-450) & (np.abs(b) <= 2.0**450)
    p, e = two_prod(a[safe], b[safe])
    total = exact_sum(p) + exact_sum(e)
    rest = nonzero & ~safe
    for x, y in zip(a[rest].tolist(), b[rest].tolist()):
        total += Fraction(x) * Fraction(y)
    return total
