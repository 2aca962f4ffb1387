"""Check linear_cross_entropy's fast-path references against the pure mpmath engine on the shipped cases.

For every shipped linear_cross_entropy case a CPU audit runs (cases with devices = ["cuda"] are
listed and skipped) and each format, this computes the fast-path references as the audit does
(loss none/mean/sum; d_hidden, d_weight, d_bias for the upstream linear_loop draws) and compares
chosen elements with the pure mpmath engine (reference.linear_loss.MpmathElements: exact logits
from formats.exact_dot, no fast path): rounded value bit for bit (a zero's sign aside), ulp
exponent, and class (NaN, inf, undefined). Prints per case x format the elements compared per
tensor, disagreements, uncertified elements and seconds, then "N elements, D disagreements";
exits 1 on any disagreement.

The mpmath engine costs seconds per element on these shapes (a token's exact logits: V dot
products of D terms as Fractions; a d_hidden element: V probability atoms; a d_weight element:
every token's), so it checks a deterministic sample (Sizes): tokens (the first, then seeded),
their loss and the d_hidden columns of largest |value| and seeded ones; rows of d_weight (the
sampled tokens' targets, the largest |d_weight|, seeded) and of d_bias, and the mean and sum,
which need every token's logits, in one format per case (rotating through the four):

    python benchmarks/linear_reference_check.py [--quick | --full] [--cases a,b] [--formats float32]

--full checks every element of every tensor in every format where the case has at most
FULL_ELEMENTS (T + 1) V (D + 1) elements (no shipped case: they are for a GPU-free audit, not for
Python mpmath), and a larger sample elsewhere. A checkout other than the installed one:
PYTHONPATH=$PWD python benchmarks/linear_reference_check.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from softaudit.cases.inputs import upstream
from softaudit.cases.linear_inputs import LinearLossInputs, linear_inputs
from softaudit.cases.reader import load_cases
from softaudit.formats import FORMATS, Format
from softaudit.reference.exact import Entry, OpReference
from softaudit.reference.linear_loss import MpmathElements, linear_loss_gradient_reference, linear_loss_reference

FORMAT_NAMES = ("float64", "float32", "float16", "bfloat16")
FULL_ELEMENTS = 200_000
TENSORS = ("loss", "mean/sum", "d_hidden", "d_weight", "d_bias")


@dataclass(frozen=True)
class Sizes:
    """How much of one case x format the mpmath engine checks."""

    tokens: int
    """Tokens whose loss and d_hidden are checked (the first, then seeded)."""
    hidden_cols: int
    """d_hidden columns per token: half of largest |value|, half seeded."""
    weight_rows: int
    """d_weight rows beyond the sampled tokens' targets (half of largest |value|, half seeded)."""
    weight_cols: int
    """Columns per d_weight row: the largest |value| and seeded ones."""
    bias_rows: int
    """d_bias elements: the targets', the largest and seeded ones."""
    whole: bool
    """Whether the quantities needing every token (mean, sum, d_weight, d_bias) are checked."""


QUICK = Sizes(tokens=1, hidden_cols=1, weight_rows=1, weight_cols=1, bias_rows=2, whole=False)
DEFAULT = Sizes(tokens=1, hidden_cols=2, weight_rows=2, weight_cols=1, bias_rows=3, whole=True)
FULL_SAMPLE = Sizes(tokens=2, hidden_cols=4, weight_rows=4, weight_cols=2, bias_rows=6, whole=True)


@dataclass
class Tally:
    """What one case x format compared."""

    compared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TENSORS, 0))
    bad: list[str] = field(default_factory=list)
    uncertified: int = 0
    seconds: float = 0.0


def same(fast: Entry | None, slow: Entry | None) -> bool:
    """Whether two reference entries agree: both undefined, or the same rounded bits (a zero's sign
    aside, as in the references), ulp exponent and class."""
    if fast is None or slow is None:
        return fast is slow
    a, b = float(fast[0]), float(slow[0])
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    if a == 0 and b == 0:
        return True
    if np.float64(a).view(np.uint64) != np.float64(b).view(np.uint64):
        return False
    return not np.isfinite(a) or int(fast[1]) == int(slow[1])


def entry(ref: OpReference, at: tuple[int, ...]) -> Entry | None:
    """One element of an OpReference as an entry, None where its row is undefined."""
    if ref.undefined[at[0]]:
        return None
    return (float(ref.rounded[at]), int(ref.k[at]), float(ref.hi[at]), float(ref.lo[at]))


def _top(values: np.ndarray, n: int, exclude: set[int]) -> list[int]:
    order = [int(i) for i in np.argsort(-np.abs(values), kind="stable") if int(i) not in exclude]
    return order[:n]


def _seeded(rng: np.random.Generator, size: int, n: int, exclude: set[int]) -> list[int]:
    pool = [i for i in rng.permutation(size).tolist() if i not in exclude]
    return pool[:n]


def full_size(inp: LinearLossInputs) -> bool:
    """Whether --full checks every element of this case."""
    return (inp.tokens + 1) * inp.vocabulary * (inp.hidden_size + 1) <= FULL_ELEMENTS


def compare_case(inp: LinearLossInputs, fmt: Format, dy: np.ndarray, sizes: Sizes | None, seed: int = 0) -> Tally:
    """Compare the fast path with pure mpmath on one case: every element (sizes None) or a sample."""
    started = time.perf_counter()
    tally = Tally()
    rng = np.random.default_rng(seed)
    loss = linear_loss_reference(inp, fmt)
    grads = linear_loss_gradient_reference(inp, dy, fmt)
    tally.uncertified += loss.uncertified + grads.uncertified
    slow = MpmathElements(inp, fmt, dy)
    t, d, v = inp.tokens, inp.hidden_size, inp.vocabulary

    def check(tensor: str, label: str, fast: Entry | None, got: tuple[Entry | None, bool]) -> None:
        tally.compared[tensor] += 1
        tally.uncertified += 0 if got[1] else 1
        if not same(fast, got[0]):
            tally.bad.append(f"{label}: fast {fast} mpmath {got[0]}")

    if sizes is None:
        tokens = list(range(t))
    else:
        tokens = [0] + _seeded(rng, t, sizes.tokens - 1, {0})
    for i in tokens:
        check("loss", f"loss[{i}]", entry(loss.none, (i,)), slow.loss(i))
        if sizes is None:
            cols = list(range(d))
        else:
            half = (sizes.hidden_cols + 1) // 2
            cols = _top(grads.hidden.rounded[i], half, set())
            cols += _seeded(rng, d, sizes.hidden_cols - len(cols), set(cols))
        for j in cols:
            check("d_hidden", f"d_hidden[{i}, {j}]", entry(grads.hidden, (i, j)), slow.d_hidden(i, j))
    if sizes is not None and not sizes.whole:
        tally.seconds = time.perf_counter() - started
        return tally
    for name in ("mean", "sum"):
        ref = getattr(loss, name)
        check("mean/sum", f"loss {name}", entry(ref, (0,)), slow.loss_reduced(name))
    targets = sorted({int(inp.target[i]) for i in tokens if 0 <= int(inp.target[i]) < v})
    if sizes is None:
        rows = list(range(v))
    else:
        big = _top(np.abs(grads.weight.rounded).max(axis=1), (sizes.weight_rows + 1) // 2, set(targets))
        rows = targets + big
        rows += _seeded(rng, v, sizes.weight_rows - len(big), set(rows))
    for c in rows:
        if sizes is None:
            cols = list(range(d))
        else:
            cols = _top(grads.weight.rounded[c], 1, set())
            cols += _seeded(rng, d, sizes.weight_cols - 1, set(cols))
        for j in cols:
            check("d_weight", f"d_weight[{c}, {j}]", entry(grads.weight, (c, j)), slow.d_weight(c, j))
    if grads.bias is not None:
        if sizes is None:
            brows = list(range(v))
        else:
            brows = targets[: sizes.bias_rows]
            brows += _top(grads.bias.rounded, 1, set(brows))
            brows += _seeded(rng, v, sizes.bias_rows - len(brows), set(brows))
        for c in brows:
            check("d_bias", f"d_bias[{c}]", entry(grads.bias, (c,)), slow.d_bias(c))
    tally.seconds = time.perf_counter() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    """Run the check over the shipped cases; 1 on any disagreement."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="one token per case x format (its loss, one d_hidden element), nothing needing every token")
    mode.add_argument("--full", action="store_true", help="every element where feasible, a larger sample elsewhere")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--formats", default=",".join(FORMAT_NAMES))
    ap.add_argument("--seed", type=int, default=0, help="the audit's seed (inputs, upstream) and the sample's")
    ap.add_argument("--show", type=int, default=5, help="disagreements listed per case x format")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL_SAMPLE if args.full else DEFAULT
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    names = None if args.cases is None else {c.strip() for c in args.cases.split(",")}
    cases = sorted((c for c in load_cases() if c.linear and (names is None or c.name in names)), key=lambda c: c.name)
    t0 = time.perf_counter()
    total = bad = unc = 0
    head = " ".join(f"{n:>9}" for n in TENSORS)
    print(f"{'case':24} {'format':9} {head} {'disagree':>8} {'uncert':>6} {'seconds':>8}")
    for n_case, case in enumerate(cases):
        if not case.runs_on("cpu"):
            print(f"{case.name:24} skipped: devices = {list(case.devices)} (a GPU-only case)")
            continue
        for n_fmt, fname in enumerate(formats):
            fmt = FORMATS[fname]
            inp = linear_inputs(case, fmt, seed=args.seed)
            dy = upstream(case, fmt, (inp.tokens,) if inp.reduction == "none" else (), seed=args.seed)
            dy = np.asarray(dy).astype(np.float64)
            # Every token's logits in mpmath are the dear part: the whole-case quantities in one
            # format per case, rotating (all four over the cases).
            whole = args.full or (not args.quick and ((n_case + n_fmt) % len(formats) == 0 or len(formats) == 1))
            if args.full and full_size(inp):
                chosen = None
            else:
                chosen = Sizes(**{**sizes.__dict__, "whole": whole})
            tally = compare_case(inp, fmt, dy, chosen, seed=args.seed)
            n = sum(tally.compared.values())
            total, bad, unc = total + n, bad + len(tally.bad), unc + tally.uncertified
            counts = " ".join(f"{tally.compared[x]:>9}" for x in TENSORS)
            scope = "every element" if chosen is None else "sample"
            print(f"{case.name:24} {fname:9} {counts} {len(tally.bad):>8} {tally.uncertified:>6} "
                  f"{tally.seconds:>8.1f}  {scope}", flush=True)
            for line in tally.bad[: args.show]:
                print(f"    {line}")
    print(f"\n{total} elements, {bad} disagreements ({unc} uncertified, {time.perf_counter() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
