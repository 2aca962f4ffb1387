"""Formats and round-to-nearest-even (RNE) of exact values, written independently of softaudit.

A value is exact either as a Fraction or as a dyadic m * 2^e (Python ints; e may be
astronomically negative, as Arb's exponents are). Results are Python floats, which hold every
value of the four formats exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Fmt:
    name: str
    p: int
    """Precision in bits, hidden bit included."""
    emin: int
    """Exponent of the smallest normal."""
    emax: int
    """Exponent of the largest finite."""

    @property
    def max_finite(self) -> Fraction:
        return Fraction((1 << self.p) - 1) * Fraction(2) ** (self.emax - self.p + 1)

    @property
    def overflow_threshold(self) -> Fraction:
        """Values of magnitude >= this round to infinity: (2^p - 1/2) 2^(emax-p+1) (a tie rounds
        to the even 2^(emax+1), which is infinite)."""
        return (Fraction(1 << self.p) - Fraction(1, 2)) * Fraction(2) ** (self.emax - self.p + 1)

    @property
    def qmin(self) -> int:
        """Exponent of the smallest subnormal (ulp of zero)."""
        return self.emin - self.p + 1


FORMATS = {
    "float64": Fmt("float64", 53, -1022, 1023),
    "float32": Fmt("float32", 24, -126, 127),
    "float16": Fmt("float16", 11, -14, 15),
    "bfloat16": Fmt("bfloat16", 8, -126, 127),
}


def fmt_of(fmt: Fmt | str | object) -> Fmt:
    """A Fmt from a Fmt, a name, or any object with a ``name`` (softaudit's Format)."""
    if isinstance(fmt, Fmt):
        return fmt
    name = fmt if isinstance(fmt, str) else fmt.name
    return FORMATS[name]


def _floor_log2_fraction(q: Fraction) -> int:
    """floor(log2 q) for q > 0."""
    a, b = q.numerator, q.denominator
    e = a.bit_length() - b.bit_length()
    # 2^(e-1) < a/b < 2^(e+1)
    if e >= 0:
        if a < (b << e):
            e -= 1
    else:
        if (a << -e) < b:
            e -= 1
    return e


def _round_half_even_div(num: int, den: int) -> int:
    """RNE of num/den for num >= 0, den > 0."""
    n, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and n & 1):
        n += 1
    return n


def _finish(sign: int, n: int, k: int, f: Fmt) -> float:
    """sign * n * 2^k (n <= 2^p) as a float, infinite past the format's range."""
    if n == 0:
        return -0.0 if sign < 0 else 0.0
    if n.bit_length() - 1 + k > f.emax or (n == (1 << f.p) and f.p - 1 + k + 1 > f.emax):
        mag = math.inf
    else:
        mag = math.ldexp(float(n), k)
    return -mag if sign < 0 else mag


def rne_fraction(q: Fraction, fmt) -> float:
    """Round the exact rational q into fmt, nearest, ties to even."""
    f = fmt_of(fmt)
    if q == 0:
        return 0.0
    sign = -1 if q < 0 else 1
    a = abs(q)
    e = _floor_log2_fraction(a)
    k = max(e, f.emin) - f.p + 1
    num, den = a.numerator, a.denominator
    if k >= 0:
        den <<= k
    else:
        num <<= -k
    return _finish(sign, _round_half_even_div(num, den), k, f)


def rne_dyadic(m: int, e: int, fmt) -> float:
    """Round m * 2^e (ints; e may be huge) into fmt, nearest, ties to even."""
    f = fmt_of(fmt)
    if m == 0:
        return 0.0
    sign = -1 if m < 0 else 1
    m = abs(m)
    bl = m.bit_length()
    top = bl - 1 + e  # floor(log2 |v|)
    if top > f.emax + 1:
        return -math.inf if sign < 0 else math.inf
    k = max(top, f.emin) - f.p + 1
    shift = k - e
    if shift <= 0:
        n = m << -shift
    elif shift > bl + 1:
        n = 0  # |v| < 2^(k-2): below half of ulp
    else:
        n = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and n & 1):
            n += 1
    return _finish(sign, n, k, f)


def rne_float(x: float, fmt) -> float:
    """Round a Python float (exact binary64) into fmt."""
    if math.isnan(x) or math.isinf(x):
        return x
    if x == 0:
        return x
    return rne_fraction(Fraction(x), fmt)


@dataclass(frozen=True)
class BoundaryInfo:
    """Where an exact rational Q sits among fmt's rounding boundaries (midpoints between
    neighbours, and the overflow threshold)."""

    rounded: float
    """RNE(Q)."""
    dist: Fraction
    """A lower bound on the distance from Q to the nearest rounding boundary; 0 iff Q is one."""
    k: int
    """ulp(Q) = 2^k in fmt (for Q beyond the finite range: the top binade's ulp)."""


def boundary_info(q: Fraction, fmt) -> BoundaryInfo:
    f = fmt_of(fmt)
    rounded = rne_fraction(q, f)
    a = abs(q)
    thr = f.overflow_threshold
    if a >= thr:
        return BoundaryInfo(rounded, a - thr, f.emax - f.p + 1)
    e = _floor_log2_fraction(a) if a else f.emin
    k = max(e, f.emin) - f.p + 1
    s = a / Fraction(2) ** k  # in [0, 2^p)
    fl = s.numerator // s.denominator
    frac = s - fl
    dist = abs(frac - Fraction(1, 2))
    # Just above a power of two the boundary below lies at a quarter of this ulp.
    dist = min(dist, frac + Fraction(1, 4))
    dist = min(dist, Fraction(thr - a) / Fraction(2) ** k)
    return BoundaryInfo(rounded, dist * Fraction(2) ** k, k)
