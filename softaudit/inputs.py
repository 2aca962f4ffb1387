"""Turn a case into exact inputs in a target format.

Everything is generated in float64 first, identically for every format (one RNG
stream per (audit seed, case seed), consumed in the same order whatever the
format), and rounded once, correctly, with :func:`round_float64_array`. The same
case and seed therefore give the same bytes on every run and machine, and the
16-bit inputs are the correct roundings of the float64 ones (DESIGN §2, §9).

Steps, in order (docs/cases.md): base values (scaled) -> gap -> ties -> offset ->
mask -> injections -> rounding. Only ``offset_fraction_of_max``,
``scale_fraction_of_max`` and the ``finfo.*`` symbols depend on the format.
"""

from __future__ import annotations

import math

import numpy as np

from softaudit.cases import Case, Value
from softaudit.formats import Format, round_float64_array


class NotApplicable(Exception):
    """The case does not make sense in this format; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate(case: Case, fmt: Format, seed: int = 0) -> np.ndarray:
    """The case's inputs: a C-contiguous (rows, n) array of ``fmt.np_dtype``.

    Raises NotApplicable when the case is restricted to other formats, or when a
    value meant to be finite overflows ``fmt`` (the case would test something else).
    """
    if not case.applies_to_format(fmt.name):
        raise NotApplicable(f"case {case.name!r} is restricted to {', '.join(case.formats)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    x, intended = float64_values(case, fmt, seed)
    out = round_float64_array(x, fmt)
    overflow = ~intended & ~np.isfinite(out.astype(np.float64))
    if overflow.any():
        raise NotApplicable(_overflow_reason(case, fmt, x[overflow]))
    return np.ascontiguousarray(out)


def float64_values(case: Case, fmt: Format, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The unrounded float64 inputs, and a mask of the entries meant to be non-finite.

    ``fmt`` only resolves the format-relative parameters; the random stream is
    the same for every format.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), case.seed]))
    rows, n = case.rows, case.n
    x = _base(case, fmt, rng)
    intended = ~np.isfinite(x)  # a constant or explicit inf/nan is deliberate

    gap = case.param("gap")
    if gap is not None:
        where = (np.arange(rows), rng.integers(0, n, size=rows))
        x[where] = -np.inf
        x[where] = x.max(axis=1) + gap

    ties = case.param("ties")
    if ties > 1:
        for r in range(rows):
            top = int(np.argmax(x[r]))
            others = rng.choice(n - 1, size=ties - 1, replace=False)
            x[r, others + (others >= top)] = x[r, top]

    offset = _offset(case, fmt)
    if offset != 0.0:  # adding +0.0 would turn -0.0 entries into +0.0
        x += offset

    _apply_mask(case, fmt, rng, x, intended)

    for entry in case.param("inject"):
        v = _resolve(entry["value"], fmt)
        for r in entry.get("rows", range(rows)):
            if "columns" in entry:
                cols = np.asarray(entry["columns"])
            else:
                cols = rng.choice(n, size=entry["count"], replace=False)
            x[r, cols] = v
            intended[r, cols] = not math.isfinite(v)
    return x, intended


def _resolve(v: Value, fmt: Format) -> float:
    """A parameter value as a float64: finfo symbols become ∓max_finite of ``fmt``."""
    if v == "finfo.min":
        return -fmt.max_finite
    if v == "finfo.max":
        return fmt.max_finite
    return float(v)


def _scale(case: Case, fmt: Format) -> float:
    frac = case.param("scale_fraction_of_max")
    return frac * fmt.max_finite if frac is not None else case.param("scale")


def _offset(case: Case, fmt: Format) -> float:
    frac = case.param("offset_fraction_of_max")
    return frac * fmt.max_finite if frac is not None else case.param("offset")


def _base(case: Case, fmt: Format, rng: np.random.Generator) -> np.ndarray:
    """The (rows, n) base values of the case's ``values`` distribution, scaled."""
    rows, n = case.rows, case.n
    kind = case.param("values")
    if kind == "normal":
        return rng.standard_normal((rows, n)) * _scale(case, fmt)
    if kind == "uniform":
        return rng.random((rows, n)) * _scale(case, fmt)
    if kind == "ramp":
        # 0.0 - s*j/(n-1): the first entry is +0.0, not -0.0.
        ramp = 0.0 - _scale(case, fmt) * (np.arange(n) / max(n - 1, 1))
        return np.tile(ramp, (rows, 1))
    if kind == "constant":
        return np.full((rows, n), _resolve(case.param("value"), fmt))
    if kind == "confident":
        # One target per row at t, the others at 0: softmax(target) = e^t / (e^t + n - 1) = p.
        p = case.param("p_max")
        t = math.log(p) - math.log1p(-p) + math.log(n - 1)
        x = np.zeros((rows, n))
        x[np.arange(rows), rng.integers(0, n, size=rows)] = t
        return x
    data = np.array([[_resolve(v, fmt) for v in row] for row in case.param("data")], dtype=np.float64)
    return np.tile(data, (rows // data.shape[0], 1))


def _apply_mask(case: Case, fmt: Format, rng: np.random.Generator, x: np.ndarray, intended: np.ndarray) -> None:
    """Set or add the mask value at the pattern's columns of the masked rows, in place."""
    pattern = case.param("mask")
    if pattern == "none":
        return
    rows, n = case.rows, case.n
    k = int(round(case.param("mask_fraction") * n))
    m = np.zeros((rows, n), dtype=bool)
    for r in case.param("mask_rows") or range(rows):
        if pattern == "prefix":
            m[r, :k] = True
        elif pattern == "suffix":
            m[r, n - k:] = True
        elif pattern == "scattered":
            m[r, rng.choice(n, size=k, replace=False)] = True
        elif pattern == "alternate":
            m[r, 1::2] = True
        elif pattern == "causal":
            # Bottom-right aligned, as attention with rows queries over n keys:
            # row r sees keys 0 .. r + n - rows (none when that is negative).
            m[r, max(r + n - rows + 1, 0):] = True
        elif pattern == "all-but-one":
            m[r, :] = True
            m[r, rng.integers(0, n)] = False
        else:  # "all"
            m[r, :] = True
    v = _resolve(case.param("mask_value"), fmt)
    if case.param("mask_mode") == "add":
        x[m] += v
    else:
        x[m] = v
    if not math.isfinite(v):
        intended |= m


def _num(v: float) -> str:
    """Compact decimal: 65504, 1e5, -1e38, 3.40282e38."""
    if v == 0 or not math.isfinite(v) or 1e-4 <= abs(v) < 1e5:
        return f"{v:.6g}"
    mantissa, exponent = f"{v:.5e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _overflow_reason(case: Case, fmt: Format, bad: np.ndarray) -> str:
    limit = f"{fmt.name}'s range (max {_num(fmt.max_finite)})"
    offset = _offset(case, fmt)
    if abs(offset) > fmt.max_finite:
        return f"offset {_num(offset)} is beyond {limit}"
    worst = float(bad[np.argmax(np.abs(np.nan_to_num(bad, nan=0.0)))])
    what = "value" if bad.size == 1 else "values"
    return f"{bad.size} generated {what} beyond {limit}, e.g. {_num(worst)}"
