"""Turn a case into exact inputs in a target format.

Everything is generated in float64 first, identically for every format (one RNG
stream per (audit seed, case seed), consumed in the same order whatever the
format), and rounded once, correctly, with :func:`round_float64_array`. The same
case and seed therefore give the same bytes on every run and machine, and the
16-bit inputs are the correct roundings of the float64 ones (docs/formats.md#rounding-into-a-format).

Steps, in order (docs/cases.md): base values (scaled) -> gap -> ties -> offset ->
mask -> injections -> rounding. Only ``offset_fraction_of_max``,
``scale_fraction_of_max`` and the ``finfo.*`` symbols depend on the format.

Cross-entropy's other inputs (:func:`loss_inputs`: targets, class weights) and
the backward direction's upstream gradient (:func:`upstream`) come from streams
of their own, so they never move the logits: SeedSequence([seed, case.seed, 1])
for targets and probability rows, [seed, case.seed, 3] for random weights and
[seed, case.seed, 2] for upstream gradients. They are built in float64 and
rounded once too, the same for every format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from softaudit.cases.model import Case, Value
from softaudit.errors import SoftauditError
from softaudit.formats import Format, round_float64_array


class NotApplicable(SoftauditError):
    """The case does not make sense in this format; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate(case: Case, fmt: Format, seed: int = 0) -> np.ndarray:
    """The case's inputs: a C-contiguous (rows, n) array of ``fmt.np_dtype``.

    Raises NotApplicable when the case is restricted to other formats, or when a
    value meant to be finite overflows ``fmt`` (the case would test something else).
    """
    _check(case, fmt, seed)
    if case.linear:
        raise NotApplicable(f"case {case.name!r} is a linear_cross_entropy case: its inputs are hidden states "
                            f"and a weight (cases.linear_inputs), not logits")
    x, intended = float64_values(case, fmt, seed)
    out = round_float64_array(x, fmt)
    overflow = ~intended & ~np.isfinite(out.astype(np.float64))
    if overflow.any():
        raise NotApplicable(_overflow_reason(case, fmt, x[overflow]))
    return np.ascontiguousarray(out)


@dataclass(frozen=True, eq=False)
class LossInputs:
    """Cross-entropy's inputs besides the logits, for one case, format and seed."""

    target: np.ndarray
    """"index": int64, shape (rows,); "probability": ``fmt.np_dtype``, shape (rows, n), values >= 0."""
    target_kind: str
    """"index" | "probability"."""
    weight: np.ndarray | None
    """``fmt.np_dtype``, shape (n,), finite, >= 0; None: no class weights."""
    label_smoothing: float
    """In [0, 1]."""
    ignore_index: int | None
    """None: the case does not use it (then no target equals torch's default -100)."""
    reduction: str
    """"none" | "mean" | "sum"."""
    out_of_range: bool
    """Some row's target is outside [0, n) and != ignore_index: expect a raise (or NaN)."""

    def keywords(self) -> dict[str, object]:
        """The keyword arguments for a candidate that accepts them: label_smoothing if != 0, weight
        if not None, ignore_index if not None, and reduction always (torch's default is "mean",
        so "none" must be passed). Which of them a case *needs* is the runner's rule."""
        kw: dict[str, object] = {}
        if self.label_smoothing != 0:
            kw["label_smoothing"] = self.label_smoothing
        if self.ignore_index is not None:
            kw["ignore_index"] = self.ignore_index
        if self.weight is not None:
            kw["weight"] = self.weight
        kw["reduction"] = self.reduction
        return kw

    def parameters(self) -> dict[str, object]:
        """JSON-able: {"target_kind", "label_smoothing", "ignore_index", "weight": "none"|"given", "reduction"}."""
        return {
            "target_kind": self.target_kind,
            "label_smoothing": self.label_smoothing,
            "ignore_index": self.ignore_index,
            "weight": "none" if self.weight is None else "given",
            "reduction": self.reduction,
        }


def loss_inputs(case: Case, fmt: Format, x: np.ndarray, seed: int = 0) -> LossInputs:
    """Cross-entropy's targets, weights and keywords for the logits ``x`` = ``generate(case, fmt, seed)``.

    ``x`` is read only by ``target = "max" / "min"`` (the row's argmax / argmin,
    NaN entries skipped, ties to the first column) and by
    ``probability_zeros = "masked"`` (zeros where x is -inf). Every case has
    them: the defaults are one uniformly random class per row, no weights, no
    smoothing, no ignore_index, reduction "none". Raises NotApplicable where
    :func:`generate` would, and where a class weight is not finite and >= 0 in ``fmt``.
    """
    _check(case, fmt, seed)
    rows, n = case.rows, case.n
    x64 = np.asarray(x).astype(np.float64)
    if x64.shape != (rows, n):
        raise ValueError(f"case {case.name!r}: logits of shape {x64.shape}, expected {(rows, n)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), case.seed, 1]))
    drawn = rng.integers(0, n, size=rows)  # drawn whatever the target rule: later draws never move
    choice = case.param("target")
    if isinstance(choice, tuple):
        t = np.array(choice, dtype=np.int64)
    elif choice == "max":
        t = np.argmax(np.where(np.isnan(x64), -np.inf, x64), axis=1)
    elif choice == "min":
        t = np.argmin(np.where(np.isnan(x64), np.inf, x64), axis=1)
    else:
        t = drawn
    t = t.astype(np.int64)
    weight = _weight(case, fmt, seed)
    eps = float(case.param("label_smoothing"))
    reduction = case.param("reduction")

    if case.param("target_kind") == "probability":
        zeros = case.param("probability_zeros")
        if zeros == "one-hot":
            q = np.zeros((rows, n))
            q[np.arange(rows), t] = 1.0
        else:
            q = 1.0 - rng.random((rows, n))  # in (0, 1]: positive before any masking
            if zeros == "masked":
                q[x64 == -np.inf] = 0.0
            total = q.sum(axis=1, keepdims=True)
            q = np.divide(q, total, out=np.zeros_like(q), where=total > 0)  # a fully masked row: all 0
        return LossInputs(target=np.ascontiguousarray(round_float64_array(q, fmt)), target_kind="probability",
                          weight=weight, label_smoothing=eps, ignore_index=None, reduction=reduction,
                          out_of_range=False)

    ignore = case.param("ignore_index")
    ignored = case.param("ignored_rows")
    if ignored is not None:
        t[np.arange(rows) if ignored == "all" else list(ignored)] = ignore
    bad = case.param("out_of_range")
    if bad != "none":
        t[list(case.param("out_of_range_rows"))] = n if bad == "high" else -1
    outside = (t < 0) | (t >= n)
    if ignore is not None:
        outside &= t != ignore
    return LossInputs(target=np.ascontiguousarray(t), target_kind="index", weight=weight, label_smoothing=eps,
                      ignore_index=ignore, reduction=reduction, out_of_range=bool(outside.any()))


def upstream(case: Case, fmt: Format, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The backward direction's upstream gradient dy: an array of ``fmt.np_dtype`` of ``shape``.

    ``shape`` is the forward output's: (rows, n) for softmax and log_softmax,
    (rows,) for logsumexp and cross_entropy with reduction "none", () for a
    reduced loss. ``upstream = "normal"`` (the default) draws N(0, 1) values and
    rounds them into ``fmt``, except that a 0-d dy is 1.0, as ``loss.backward()``
    passes; ``"ones"`` gives 1.0 everywhere.
    """
    _check(case, fmt, seed)
    shape = tuple(int(s) for s in shape)
    if case.param("upstream") == "ones" or shape == ():
        g = np.ones(shape)
    else:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), case.seed, 2]))
        g = rng.standard_normal(shape)
    return np.ascontiguousarray(round_float64_array(g, fmt)).reshape(shape)  # ascontiguousarray makes 0-d 1-d


def _check(case: Case, fmt: Format, seed: int) -> None:
    if not case.applies_to_format(fmt.name):
        raise NotApplicable(f"case {case.name!r} is restricted to {', '.join(case.formats)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _weight(case: Case, fmt: Format, seed: int) -> np.ndarray | None:
    """The class weights rounded into ``fmt``, or None; NotApplicable unless finite and >= 0 there."""
    spec = case.param("weight")
    if spec == "none":
        return None
    n = case.n
    if spec == "ones":
        w64 = np.ones(n)
    elif spec == "random":
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), case.seed, 3]))
        w64 = 0.25 + 3.75 * rng.random(n)
    else:
        w64 = np.array(spec, dtype=np.float64)
    w = round_float64_array(w64, fmt)
    bad = ~np.isfinite(w.astype(np.float64)) | (w.astype(np.float64) < 0)
    if bad.any():
        worst = float(w64[bad][0])
        raise NotApplicable(f"class weight {_num(worst)} is beyond {fmt.name}'s range (max {_num(fmt.max_finite)})")
    return np.ascontiguousarray(w)


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
