"""The search's moves: random starting inputs and mutations of the worst inputs found.

A :class:`Trial` is one input the search can judge: the logits as float64 values that are exactly
representable in the target format (rounded once, correctly, like every case's inputs), and for
cross-entropy the targets and loss keywords. Every move returns a new Trial (or None when it does
not apply); nothing here judges accuracy, that is the reference engine's job (engine.py).

The moves follow the case families (docs/cases.md#families): spread and offset, the gap between the max and the
others, masks, row length, the position of the max, rows, single entries (special values, ties,
ulp neighbours) and, for cross-entropy, the target and the loss keywords.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from softaudit.formats import Format, round_float64_array

RANDOM_MAX_N = 8192
"""Longest row a random start draws (log-uniform below it); mutations may double it up to the
element limit. Long enough for two tiles of the usual 1024- and 4096-wide kernels."""

ROW_COUNTS = (1, 1, 1, 2, 3, 4, 8)
"""Rows of a random start: mostly one (shrinking starts smaller), sometimes several, since rows
must stay independent."""


@dataclass(frozen=True, eq=False)
class Trial:
    """One input: logits ``x`` (float64, (rows, n), each value exact in the format) and, for
    cross-entropy, one class target per row and the loss keywords."""

    x: np.ndarray
    target: tuple[int, ...] | None = None
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    reduction: str = "none"
    weight: tuple[float, ...] | None = None
    origin: str = ""
    """How the search reached it: a library case or a random start, then the moves applied."""
    moves: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x.shape[0]), int(self.x.shape[1])

    def moved(self, move: str, **changes: object) -> Trial:
        """A copy with ``changes`` and ``move`` added to its history."""
        return replace(self, moves=self.moves + (move,), **changes)  # type: ignore[arg-type]


def representable(x: np.ndarray, fmt: Format) -> np.ndarray:
    """``x`` rounded once into ``fmt`` (finite values clipped to its range first, so a move never
    turns a finite entry into an infinity by overflow), as float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        clipped = np.where(np.isfinite(x), np.clip(x, -fmt.max_finite, fmt.max_finite), x)
    return round_float64_array(clipped, fmt).astype(np.float64)


def thresholds(fmt: Format) -> tuple[float, ...]:
    """Distances where exp changes behaviour in ``fmt``: its overflow, the smallest normal's and the
    smallest subnormal's logarithms, and half of each; the gaps and shifts moves reach for."""
    over = math.log(fmt.max_finite)
    normal = -math.log(math.ldexp(1.0, fmt.emin))
    sub = -math.log(fmt.smallest_subnormal)
    return (over, normal, sub, over / 2, math.log(2.0), 1.0)


def ulp(v: float, fmt: Format) -> float:
    """The spacing of ``fmt``'s values at ``v`` (docs/formats.md#error-in-ulps)."""
    e = math.frexp(abs(v))[1] - 1 if v != 0 else fmt.emin
    return math.ldexp(1.0, max(e, fmt.emin) - fmt.p + 1)


# --------------------------------------------------------------------------
# Random starts


def random_length(rng: np.random.Generator, max_elements: int) -> int:
    """A row length: small, a power of two, one off one, or log-uniform up to RANDOM_MAX_N."""
    top = max(1, min(RANDOM_MAX_N, max_elements))
    kind = rng.integers(4)
    if kind == 0:
        n = int(rng.integers(1, 17))
    elif kind == 1:
        n = 1 << int(rng.integers(0, top.bit_length()))
    elif kind == 2:
        n = (1 << int(rng.integers(1, top.bit_length()))) + int(rng.choice([-1, 1]))
    else:
        n = int(round(math.exp(rng.uniform(0.0, math.log(top)))))
    return max(1, min(n, top))


def random_trial(rng: np.random.Generator, fmt: Format, max_elements: int, loss: bool) -> Trial:
    """A fresh random input: a base distribution at a random scale, maybe an offset, a mask or a
    special value."""
    n = random_length(rng, max_elements)
    rows = max(1, min(int(rng.choice(ROW_COUNTS)), max_elements // n))
    scale = 10.0 ** rng.uniform(-2, 3)
    kind = int(rng.integers(5))
    if kind == 0:
        x = scale * rng.standard_normal((rows, n))
    elif kind == 1:
        x = scale * rng.random((rows, n))
    elif kind == 2:
        x = np.full((rows, n), scale * rng.standard_normal())
    elif kind == 3:
        x = np.tile(-scale * np.arange(n) / max(n - 1, 1), (rows, 1))
    else:
        x = np.zeros((rows, n))
        x[np.arange(rows), rng.integers(0, n, rows)] = scale * rng.uniform(1, 10)
    if rng.random() < 0.5:
        x = x + _random_offset(rng, fmt)
    trial = Trial(representable(x, fmt), origin=f"random start {rows}x{n}")
    if loss:
        trial = replace(trial, target=tuple(int(t) for t in rng.integers(0, n, rows)))
    if rng.random() < 0.25:
        trial = mask(rng, trial, fmt) or trial
    if rng.random() < 0.1:
        trial = entry(rng, trial, fmt) or trial
    return replace(trial, moves=())


def _random_offset(rng: np.random.Generator, fmt: Format) -> float:
    top = math.log10(fmt.max_finite) - 0.5
    return float(rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(0, top))


# --------------------------------------------------------------------------
# Mutations


def _finite_max(row: np.ndarray) -> float | None:
    finite = row[np.isfinite(row)]
    return float(finite.max()) if finite.size else None


def spread(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Scale every row's distances from its max by a factor in [1/16, 16]."""
    x = t.x.copy()
    factor = 2.0 ** rng.uniform(-4, 4)
    for r in range(x.shape[0]):
        top = _finite_max(x[r])
        if top is None:
            continue
        finite = np.isfinite(x[r])
        x[r, finite] = top + (x[r, finite] - top) * factor
    return t.moved(f"spread x{factor:.3g}", x=representable(x, fmt))


def shift(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Add a common offset: a random power of ten, or one that puts the max at a threshold."""
    top = _finite_max(t.x.ravel())
    if top is None:
        return None
    if rng.random() < 0.5:
        c = _random_offset(rng, fmt)
    else:
        goal = float(rng.choice([-1.0, 1.0])) * float(rng.choice(thresholds(fmt) + (50.0, 100.0, 1e3, 1e4)))
        c = goal - top
    x = t.x + c
    return t.moved(f"offset {c:+.4g}", x=representable(x, fmt))


def gap(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Move one row's max to a chosen distance above (or below) the rest of the row."""
    rows, n = t.shape
    if n < 2:
        return None
    r = int(rng.integers(rows))
    x = t.x.copy()
    row = np.where(np.isnan(x[r]), -np.inf, x[r])
    j = int(np.argmax(row))
    rest = np.delete(row, j)
    others = _finite_max(rest)
    if others is None:
        return None
    g = float(rng.choice(thresholds(fmt))) if rng.random() < 0.6 else 10.0 ** rng.uniform(-3, 3)
    g *= float(rng.choice([1.0, 1.0, -1.0]))
    x[r, j] = others + g
    return t.moved(f"gap {g:+.4g} in row {r}", x=representable(x, fmt))


MASK_PATTERNS = ("prefix", "suffix", "scattered", "alternate", "all-but-one", "all")
MASK_VALUES = ("-inf", "finfo.min", "-1e4")


def mask(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Mask some columns of one row, or of every row: -inf set, or finfo.min or -1e4 added."""
    rows, n = t.shape
    pattern = str(rng.choice(MASK_PATTERNS))
    k = int(round(rng.random() * n))
    cols = {"prefix": np.arange(k), "suffix": np.arange(n - k, n),
            "scattered": rng.choice(n, size=k, replace=False), "alternate": np.arange(1, n, 2),
            "all-but-one": np.delete(np.arange(n), int(rng.integers(n))), "all": np.arange(n)}[pattern]
    which = [int(rng.integers(rows))] if rows > 1 and rng.random() < 0.5 else list(range(rows))
    value = str(rng.choice(MASK_VALUES))
    x = t.x.copy()
    for r in which:
        if value == "-inf":
            x[r, cols] = -np.inf
        else:
            x[r, cols] = x[r, cols] + (-fmt.max_finite if value == "finfo.min" else -1e4)
    return t.moved(f"mask {pattern} {value}", x=representable(x, fmt))


def resize(rng: np.random.Generator, t: Trial, fmt: Format, max_elements: int) -> Trial | None:
    """Change the row length: one more or less, double, half, a power of two (or one off it), or
    any length up to twice; new entries are drawn from the row's own values."""
    rows, n = t.shape
    limit = max(1, max_elements // rows)
    p2 = 1 << max(0, int(rng.integers(0, max(1, limit.bit_length()))))
    options = [n + 1, n - 1, 2 * n, n // 2, p2, p2 + 1, p2 - 1, int(rng.integers(1, 2 * n + 2))]
    new_n = int(rng.choice(options))
    new_n = max(1, min(new_n, limit))
    if new_n == n:
        return None
    if new_n < n:
        start = int(rng.integers(0, n - new_n + 1)) if rng.random() < 0.5 else 0
        keep = np.arange(start, start + new_n)
        if rng.random() < 0.3:
            keep = np.sort(rng.choice(n, size=new_n, replace=False))
        return keep_columns(t, keep, f"length {n} -> {new_n}", rng)
    extra = np.empty((rows, new_n - n))
    for r in range(rows):
        pool = t.x[r][np.isfinite(t.x[r])]
        extra[r] = rng.choice(pool, size=new_n - n) if pool.size else 0.0
    prepended = rng.random() < 0.3
    x = np.concatenate([extra, t.x] if prepended else [t.x, extra], axis=1)
    changes: dict = {"x": representable(x, fmt)}
    if t.target is not None:
        offset = (new_n - n) if prepended else 0
        changes["target"] = tuple(tt + offset if 0 <= tt < n else tt for tt in t.target)
    if t.weight is not None:
        w = list(t.weight)
        changes["weight"] = tuple(([1.0] * (new_n - n) + w) if prepended else (w + [1.0] * (new_n - n)))
    return t.moved(f"length {n} -> {new_n}", **changes)


def keep_columns(t: Trial, keep: np.ndarray, move: str, rng: np.random.Generator | None = None) -> Trial | None:
    """The trial with only columns ``keep`` (targets renumbered; a target whose column goes is
    moved to the kept row's max when rng is given, else the move does not apply)."""
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size == 0:
        return None
    changes: dict = {"x": np.ascontiguousarray(t.x[:, keep])}
    if t.target is not None:
        where = {int(c): i for i, c in enumerate(keep)}
        targets = []
        for r, tt in enumerate(t.target):
            if tt == t.ignore_index or not 0 <= tt < t.x.shape[1]:
                targets.append(tt)
            elif tt in where:
                targets.append(where[tt])
            elif rng is not None:
                targets.append(int(np.argmax(np.where(np.isnan(changes["x"][r]), -np.inf, changes["x"][r]))))
            else:
                return None
        changes["target"] = tuple(targets)
    if t.weight is not None:
        changes["weight"] = tuple(t.weight[int(c)] for c in keep)
    return t.moved(move, **changes)


def entry(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Change one entry: a special value, a tie with the row's max, a few ulps above it, a random
    value at the row's scale, or twice, half or minus itself."""
    rows, n = t.shape
    r, c = int(rng.integers(rows)), int(rng.integers(n))
    x = t.x.copy()
    top = _finite_max(x[r])
    kind = int(rng.integers(6))
    if kind == 0:
        v = float(rng.choice([np.inf, -np.inf, np.nan, 0.0, -0.0, fmt.max_finite, -fmt.max_finite]))
        what = "special"
    elif kind == 1 and top is not None:
        v, what = top, "tie with the max"
    elif kind == 2 and top is not None:
        v, what = top + int(rng.integers(1, 4)) * ulp(top, fmt), "a few ulps above the max"
    elif kind == 3:
        finite = x[r][np.isfinite(x[r])]
        centre = float(finite.mean()) if finite.size else 0.0
        width = float(finite.std()) if finite.size > 1 else 1.0
        v, what = centre + (width or 1.0) * float(rng.standard_normal()), "random"
    else:
        v = float(x[r, c]) * float(rng.choice([2.0, 0.5, -1.0]))
        what = "scaled"
    x[r, c] = v
    return t.moved(f"entry ({r}, {c}) {what}", x=representable(x, fmt))


def permute(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Reorder a row: move its max to the last or first column or anywhere, reverse, rotate or
    shuffle it (tiled kernels treat the first and last tiles differently)."""
    rows, n = t.shape
    if n < 2:
        return None
    r = int(rng.integers(rows))
    row = t.x[r].copy()
    j = int(np.argmax(np.where(np.isnan(row), -np.inf, row)))
    kind = int(rng.integers(5))
    if kind == 0:
        dest = n - 1 if rng.random() < 0.6 else (0 if rng.random() < 0.5 else int(rng.integers(n)))
        order = np.delete(np.arange(n), j)
        order = np.insert(order, dest, j)
        what = f"max to column {dest}"
    elif kind == 1:
        order, what = np.arange(n)[::-1], "reversed"
    elif kind == 2:
        order, what = np.roll(np.arange(n), int(rng.integers(1, n))), "rotated"
    else:
        order, what = rng.permutation(n), "shuffled"
    x = t.x.copy()
    x[r] = row[order]
    changes: dict = {"x": x}
    if t.target is not None and 0 <= t.target[r] < n:
        targets = list(t.target)
        targets[r] = int(np.flatnonzero(order == t.target[r])[0])
        changes["target"] = tuple(targets)
    if t.weight is not None and rows == 1:
        changes["weight"] = tuple(t.weight[int(i)] for i in order)
    return t.moved(f"row {r} {what}", **changes)


def reshape_rows(rng: np.random.Generator, t: Trial, fmt: Format, max_elements: int) -> Trial | None:
    """Add a row (a copy of one, or of one scaled) or drop one."""
    rows, n = t.shape
    if rows > 1 and rng.random() < 0.5:
        r = int(rng.integers(rows))
        keep = [i for i in range(rows) if i != r]
        return keep_rows(t, keep, f"row {r} dropped")
    if (rows + 1) * n > max_elements:
        return None
    r = int(rng.integers(rows))
    new = t.x[r] * (float(rng.choice([1.0, 0.5, 2.0])))
    x = representable(np.vstack([t.x, new]), fmt)
    changes: dict = {"x": x}
    if t.target is not None:
        changes["target"] = t.target + (t.target[r],)
    return t.moved(f"row {r} copied", **changes)


def keep_rows(t: Trial, keep: list[int], move: str) -> Trial | None:
    """The trial with only rows ``keep`` (and their targets); None when none is kept."""
    if not keep:
        return None
    changes: dict = {"x": np.ascontiguousarray(t.x[keep])}
    if t.target is not None:
        changes["target"] = tuple(t.target[i] for i in keep)
    return t.moved(move, **changes)


def loss_keys(rng: np.random.Generator, t: Trial, fmt: Format) -> Trial | None:
    """Cross-entropy: move a target (to its row's max or min, or anywhere), or change label
    smoothing, ignore_index (with ignored rows), the reduction or the class weights."""
    if t.target is None:
        return None
    rows, n = t.shape
    kind = int(rng.integers(5))
    if kind == 0:
        r = int(rng.integers(rows))
        row = np.where(np.isnan(t.x[r]), -np.inf, t.x[r])
        choice = int(rng.integers(3))
        c = int(np.argmax(row)) if choice == 0 else (int(np.argmin(np.where(np.isnan(t.x[r]), np.inf, t.x[r])))
                                                        if choice == 1 else int(rng.integers(n)))
        targets = list(t.target)
        targets[r] = c
        return t.moved(f"target of row {r} -> {c}", target=tuple(targets))
    if kind == 1:
        eps = float(rng.choice([0.0, 0.1, 0.9, float(rng.random())]))
        return t.moved(f"label_smoothing {eps:.3g}", label_smoothing=eps)
    if kind == 2:
        if t.ignore_index is not None:
            kept = tuple(int(rng.integers(n)) if tt == t.ignore_index else tt for tt in t.target)
            return t.moved("no ignore_index", ignore_index=None, target=kept)
        targets = list(t.target)
        for r in rng.choice(rows, size=int(rng.integers(1, rows + 1)), replace=False):
            targets[int(r)] = -100
        return t.moved("ignore_index -100", ignore_index=-100, target=tuple(targets))
    if kind == 3:
        reduction = str(rng.choice(["none", "mean", "sum"]))
        return t.moved(f"reduction {reduction}", reduction=reduction)
    if t.weight is not None and rng.random() < 0.5:
        return t.moved("no class weights", weight=None)
    w = representable(rng.uniform(0.25, 4.0, n), fmt)
    return t.moved("random class weights", weight=tuple(float(v) for v in w))


Move = Callable[[np.random.Generator, Trial, Format], "Trial | None"]


def moves(max_elements: int, loss: bool) -> list[Move]:
    """Every move that applies (the loss moves only for cross-entropy)."""
    out: list[Move] = [spread, shift, gap, mask, entry, permute, permute,
                       lambda rng, t, fmt: resize(rng, t, fmt, max_elements),
                       lambda rng, t, fmt: resize(rng, t, fmt, max_elements),
                       lambda rng, t, fmt: reshape_rows(rng, t, fmt, max_elements)]
    if loss:
        out += [loss_keys, loss_keys]
    return out


def mutate(rng: np.random.Generator, t: Trial, fmt: Format, max_elements: int, loss: bool) -> Trial | None:
    """One to three moves in a row (the first that applies of a few tries each)."""
    options = moves(max_elements, loss)
    out = t
    for _ in range(int(rng.choice([1, 1, 2, 3]))):
        for _attempt in range(4):
            move = options[int(rng.integers(len(options)))]
            nxt = move(rng, out, fmt)
            if nxt is not None:
                out = nxt
                break
    return out if out is not t else None
