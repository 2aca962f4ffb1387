"""Shrinking: reduce a failing input to a small one that still fails the same way.

As Hypothesis does for its examples, the shrinker tries simpler variants of the input and keeps
each one that still fails, until no pass makes progress: fewer rows, shorter rows (windows of a few
columns, then blocks of columns deleted), values replaced by simpler ones (0, integers, powers of
two, fewer significant bits), and fewer distinct values. "Simpler" is a strict order (smaller
shapes, then simpler values, see :func:`complexity`), so shrinking always ends.

What "the same way" means is the caller's (engine.py): the same hard-failure class, or a stability
ratio still above the gate's limit. Every variant is judged by the reference engine like any other
input; nothing here computes an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from softaudit.formats import Format
from softaudit.search.mutations import Trial, keep_columns, keep_rows, representable

WINDOW_LENGTHS = 32
"""Row lengths 1 .. this many are tried as windows (prefix, suffix, around the max, the largest
entries) before blocks of columns are deleted: a bug that needs n = 7 is found as n = 7."""

SINGLE_COLUMN_LIMIT = 256
"""Rows at most this long are also shrunk one column at a time; longer ones in blocks of at least
n / 128 columns (a 4096-wide row would otherwise cost thousands of calls)."""

ENTRY_LIMIT = 256
"""Inputs of at most this many elements get their values simplified one entry at a time; larger
ones only in bulk (every entry at once, one value everywhere it occurs)."""

DISTINCT_LIMIT = 64
"""At most this many distinct values are considered for merging (fewer distinct values)."""


Judge = Callable[[Trial], bool]
"""Whether a variant still fails the same way (engine.py judges it against the exact reference)."""


@dataclass
class ShrinkStats:
    tried: int = 0
    """Variants judged (repeats are answered from the search's memo, and not counted twice)."""
    kept: int = 0
    """Variants that still failed and replaced the input."""
    seconds: float = 0.0
    complete: bool = True
    """False when the time limit ended shrinking before no pass could make progress."""


def complexity(v: float) -> tuple[int, int, int, int]:
    """How complex a value reads: 0 and the special values first, then fewer significant bits,
    then a smaller exponent magnitude, then positive before negative."""
    if v == 0 or not math.isfinite(v):
        return (0, 0, 0, 0)
    exponent = math.frexp(abs(v))[1]
    numerator = abs(v).as_integer_ratio()[0]
    bits = (numerator // (numerator & -numerator)).bit_length()
    return (1, bits, abs(exponent - 1), int(v < 0))


def input_complexity(t: Trial) -> tuple:
    """Shape first (elements, then rows), then the sums of the values' complexity terms (as
    :func:`complexity`, vectorised): a strict order."""
    rows, n = t.shape
    x = t.x.ravel()
    plain = np.isfinite(x) & (x != 0)
    mantissa, exponent = np.frexp(np.where(plain, np.abs(x), 1.0))
    digits = (mantissa * 2.0**53).astype(np.int64)  # the 53-bit significand, exactly
    lowest = digits & -digits
    bits = np.where(plain, 54 - np.log2(lowest.astype(np.float64)).astype(np.int64) - 1, 0)
    magnitude = np.where(plain, np.abs(exponent - 1), 0)
    negative = plain & (x < 0)
    return (rows * n, rows, int(bits.sum()), int(magnitude.sum()), int(negative.sum()))


def simpler_values(v: float, fmt: Format) -> list[float]:
    """Candidates simpler than ``v``, simplest first: 0, the nearest integers, the nearest powers
    of two and ``v`` rounded to fewer significant bits (all representable in ``fmt``)."""
    if v == 0 or not math.isfinite(v):
        return []
    out = [0.0]
    if abs(v) < 2.0 ** fmt.p:
        out += [float(math.floor(v)), float(math.ceil(v))]
    e = math.floor(math.log2(abs(v)))
    # Powers of two nearer 1 first (64 reads better than 2^112), then those around v.
    exponents = sorted({*range(-min(abs(e), 16), min(abs(e), 16) + 1), e // 2, e * 3 // 4, e - 2, e - 1, e, e + 1},
                       key=abs)
    out += [math.copysign(2.0 ** k, v) for k in exponents if fmt.emin - fmt.p < k <= fmt.emax]
    for bits in range(1, fmt.p):
        out.append(round_to_bits(v, bits))
    mine = complexity(v)
    seen: set[float] = set()
    kept = []
    for c in out:
        c = float(representable(np.array([c]), fmt)[0])
        if c in seen or not math.isfinite(c) or complexity(c) >= mine:
            continue
        seen.add(c)
        kept.append(c)
    return sorted(kept, key=complexity)


def round_to_bits(v: float, bits: int) -> float:
    """``v`` rounded to ``bits`` significant bits (nearest)."""
    if v == 0 or not math.isfinite(v):
        return v
    e = math.frexp(v)[1]
    return math.ldexp(round(math.ldexp(v, bits - e)), e - bits)


def _without_columns(t: Trial, start: int, size: int, move: str) -> Trial | None:
    """``t`` with columns start .. start + size - 1 deleted."""
    n = t.shape[1]
    return keep_columns(t, np.concatenate([np.arange(0, start), np.arange(min(start + size, n), n)]), move)


def rounded_to_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """Every finite value of ``x`` rounded to ``bits`` significant bits (nearest, ties to even);
    round_to_bits over an array."""
    finite = np.isfinite(x)
    mantissa, exponent = np.frexp(np.where(finite, x, 0.0))
    return np.where(finite, np.ldexp(np.round(np.ldexp(mantissa, bits)), exponent - bits), x)


class Shrinker:
    """Runs the passes over one failing trial until none makes progress or time runs out."""

    def __init__(self, still_fails: Judge, fmt: Format, deadline: float) -> None:
        self.still_fails = still_fails
        self.fmt = fmt
        self.deadline = deadline
        self.stats = ShrinkStats()

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline

    def accept(self, current: Trial, variant: Trial | None) -> bool:
        """Whether ``variant`` is simpler than ``current`` and still fails."""
        if variant is None or input_complexity(variant) >= input_complexity(current):
            return False
        if self.out_of_time():
            return False
        self.stats.tried += 1
        if self.still_fails(variant):
            self.stats.kept += 1
            return True
        return False

    def run(self, trial: Trial) -> Trial:
        started = time.monotonic()
        passes = (self.fewer_rows, self.windows, self.delete_blocks, self.bulk_values, self.merge_values,
                  self.entry_values)
        current = trial
        progress = True
        while progress and not self.out_of_time():
            progress = False
            for shrink_pass in passes:
                smaller = shrink_pass(current)
                if smaller is not current:
                    current, progress = smaller, True
                if self.out_of_time():
                    break
        self.stats.complete = not self.out_of_time() or not progress
        self.stats.seconds = time.monotonic() - started
        return current

    # -- shape --------------------------------------------------------------

    def fewer_rows(self, t: Trial) -> Trial:
        """One row alone, then each row dropped."""
        rows = t.shape[0]
        if rows == 1:
            return t
        for r in range(rows):
            variant = keep_rows(t, [r], f"row {r} alone")
            if self.accept(t, variant):
                return variant  # type: ignore[return-value]
        r = 0
        while r < t.shape[0] and t.shape[0] > 1:
            variant = keep_rows(t, [i for i in range(t.shape[0]) if i != r], f"row {r} dropped")
            if self.accept(t, variant):
                t = variant  # type: ignore[assignment]
            else:
                r += 1
        return t

    def windows(self, t: Trial) -> Trial:
        """The shortest window of columns that still fails: prefix, suffix, around the largest entry,
        or the largest entries in their order."""
        rows, n = t.shape
        x = np.where(np.isnan(t.x), -np.inf, t.x)
        top = int(np.argmax(x.max(axis=0)))
        order = np.argsort(-x.max(axis=0), kind="stable")
        for length in range(1, min(n, WINDOW_LENGTHS + 1)):
            start = min(max(0, top - length // 2), n - length)
            choices = [np.arange(length), np.arange(n - length, n), np.arange(start, start + length),
                       np.sort(order[:length])]
            for keep in choices:
                variant = keep_columns(t, keep, f"{length} columns kept")
                if self.accept(t, variant):
                    return variant  # type: ignore[return-value]
        return t

    def delete_blocks(self, t: Trial) -> Trial:
        """Delete blocks of columns, halving the block size (delta debugging)."""
        n = t.shape[1]
        smallest = 1 if n <= SINGLE_COLUMN_LIMIT else max(1, n // 128)
        size = n // 2
        while size >= smallest and not self.out_of_time():
            start = 0
            while start < t.shape[1] and t.shape[1] > 1:
                variant = _without_columns(t, start, size, f"columns {start}..{start + size - 1} deleted")
                if self.accept(t, variant):
                    t = variant  # type: ignore[assignment]
                else:
                    start += size
                if self.out_of_time():
                    break
            size //= 2
        if smallest > 1:  # blocks smaller than the pass's smallest: only at the ends and before the max
            for size in range(smallest - 1, 0, -1):
                for where in ("start", "before the max", "end"):
                    top = int(np.argmax(np.where(np.isnan(t.x), -np.inf, t.x).max(axis=0)))
                    start = {"start": 0, "before the max": max(0, top - size), "end": max(0, t.shape[1] - size)}[where]
                    variant = _without_columns(t, start, size, f"{size} columns deleted at the {where}")
                    if self.accept(t, variant):
                        t = variant  # type: ignore[assignment]
        return t

    # -- values -------------------------------------------------------------

    def _with(self, t: Trial, x: np.ndarray, move: str) -> Trial:
        return t.moved(move, x=representable(x, self.fmt))

    def bulk_values(self, t: Trial) -> Trial:
        """Every entry at once: all but each row's max to 0, then every value to 1, 2, ... bits."""
        x = t.x
        finite = np.isfinite(x)
        tops = np.where(np.isnan(x), -np.inf, x).argmax(axis=1)
        zeroed = np.where(finite, 0.0, x)
        zeroed[np.arange(x.shape[0]), tops] = x[np.arange(x.shape[0]), tops]
        variant = self._with(t, zeroed, "all but the max set to 0")
        if self.accept(t, variant):
            t = variant
        for bits in range(1, self.fmt.p):
            rounded = rounded_to_bits(t.x, bits)
            variant = self._with(t, rounded, f"values rounded to {bits} bits")
            if np.array_equal(variant.x, t.x, equal_nan=True):
                break
            if self.accept(t, variant):
                return variant
        return t

    def merge_values(self, t: Trial) -> Trial:
        """Fewer and simpler distinct values: every occurrence of a value replaced at once, by a
        simpler value that occurs, else by a simpler one (simpler_values)."""
        values = sorted({float(v) for v in t.x.ravel() if math.isfinite(v)}, key=complexity)[:DISTINCT_LIMIT]
        for complex_v in reversed(values):
            occurring = [v for v in values if complexity(v) < complexity(complex_v)]
            others = [v for v in simpler_values(complex_v, self.fmt) if v not in occurring]
            for simple_v in occurring + others:
                x = np.where(t.x == complex_v, simple_v, t.x)
                variant = self._with(t, x, f"{complex_v!r} -> {simple_v!r} everywhere")
                if self.accept(t, variant):
                    return variant
                if self.out_of_time():
                    return t
        return t

    def entry_values(self, t: Trial) -> Trial:
        """Each entry (small inputs only) replaced by the simplest value that keeps the failure."""
        if t.x.size > ENTRY_LIMIT:
            return t
        rows, n = t.shape
        for r in range(rows):
            for c in range(n):
                for v in simpler_values(float(t.x[r, c]), self.fmt):
                    x = t.x.copy()
                    x[r, c] = v
                    variant = self._with(t, x, f"entry ({r}, {c}) -> {v!r}")
                    if self.accept(t, variant):
                        t = variant
                        break
                if self.out_of_time():
                    return t
        return t


def shrink(trial: Trial, still_fails: Judge, fmt: Format, seconds: float) -> tuple[Trial, ShrinkStats]:
    """The smallest variant of ``trial`` found that still fails, within ``seconds``."""
    shrinker = Shrinker(still_fails, fmt, time.monotonic() + seconds)
    out = shrinker.run(trial)
    return out, shrinker.stats
