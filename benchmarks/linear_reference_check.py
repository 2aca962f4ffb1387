"""Check linear_cross_entropy's fast-path references against the pure mpmath engine on the shipped cases.

For every shipped linear_cross_entropy case and each format, this computes the fast-path
references as the audit does (loss none/mean/sum; d_hidden, d_weight, d_bias for the upstream
linear_loop draws) and compares chosen elements with the pure mpmath engine
(reference.linear_loss.MpmathElements: exact logits in Python integers, no fast path): rounded
value bit for bit (a zero's sign aside), ulp exponent, and class (NaN, inf, undefined). Prints per
case x format the elements compared per tensor, disagreements, uncertified elements and seconds,
then "N elements, D disagreements"; exits 1 on any disagreement.

The mpmath engine costs about a second per 32,000-class token row (its exact logits, V
exponentials) and an O(V) sum per d_hidden element; d_weight and d_bias elements then cost O(T).
So it checks, in every format of every case: every token's loss (each row is computed for the
mean and the sum anyway), the mean and the sum; d_hidden of sampled tokens (the first, then
seeded) at the columns of largest |value| and seeded ones; d_weight at rows of the sampled
tokens' targets, of largest |d_weight| and seeded ones; up to 64 d_bias elements (Sizes):

    python benchmarks/linear_reference_check.py [--quick | --full] [--cases a,b] [--formats float32]
        [--jobs 2] [--gpu-cases]

--quick: one token per case x format, nothing needing every token. --full: a larger sample, every
d_bias element, and every element of every tensor where the case has at most FULL_ELEMENTS
(T + 1) V (D + 1) of them (no shipped case). --gpu-cases adds the full-size cases (devices =
["cuda"]) as the per-token references of GPU_TOKENS tokens each, computed as a case of those
tokens alone at the full weight: their losses, and d_hidden where V x D <= GPU_GRADIENT_ELEMENTS
(the gradient references' memory). Every token's exact logits at 4096 x 128256 would take hours in
Python integers, so the mean, sum, d_weight and d_bias of these cases are not checked. A checkout other than
the installed one: PYTHONPATH=$PWD python benchmarks/linear_reference_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
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
DEFAULT = Sizes(tokens=2, hidden_cols=2, weight_rows=6, weight_cols=4, bias_rows=64, whole=True)
GPU_TOKENS = 2
"""Tokens of a full-size GPU case checked (--gpu-cases): the first live one and a seeded one."""
GPU_SAMPLE = Sizes(tokens=GPU_TOKENS, hidden_cols=2, weight_rows=0, weight_cols=0, bias_rows=0, whole=False)
GPU_GRADIENT_ELEMENTS = 1 << 28
"""Largest V x D whose gradient references --gpu-cases computes: they hold d_weight (V x D) in
double-double with bounds, about 55 bytes per element (7.2 GB at 4096 x 32000), so beyond it
(4096 x 128256, 2560 x 262144) only the losses are checked on a 24 GB machine."""
FULL_SAMPLE = Sizes(tokens=4, hidden_cols=8, weight_rows=16, weight_cols=16, bias_rows=sys.maxsize, whole=True)


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


def compare_case(inp: LinearLossInputs, fmt: Format, dy: np.ndarray, sizes: Sizes | None, seed: int = 0,
                 gradients: bool = True) -> Tally:
    """Compare the fast path with pure mpmath on one case: every element (sizes None) or a sample;
    the losses alone where ``gradients`` is False."""
    started = time.perf_counter()
    tally = Tally()
    rng = np.random.default_rng(seed)
    loss = linear_loss_reference(inp, fmt)
    tally.uncertified += loss.uncertified
    if gradients:
        grads = linear_loss_gradient_reference(inp, dy, fmt)
        tally.uncertified += grads.uncertified
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
    # With the whole-case quantities every token's row is computed anyway: every loss is checked.
    for i in range(t) if sizes is None or sizes.whole else tokens:
        check("loss", f"loss[{i}]", entry(loss.none, (i,)), slow.loss(i))
    if not gradients:
        tally.seconds = time.perf_counter() - started
        return tally
    for i in tokens:
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
        if sizes is None or sizes.bias_rows >= v:
            brows = list(range(v))
        else:
            brows = targets[: sizes.bias_rows]
            brows += _top(grads.bias.rounded, 1, set(brows))
            brows += _seeded(rng, v, sizes.bias_rows - len(brows), set(brows))
        for c in brows:
            check("d_bias", f"d_bias[{c}]", entry(grads.bias, (c,)), slow.d_bias(c))
    tally.seconds = time.perf_counter() - started
    return tally


def token_subcase(inp: LinearLossInputs, tokens: list[int]) -> LinearLossInputs:
    """The chosen tokens of a case alone, with reduction "none": each token's loss and d_hidden
    row are those of the whole case up to its upstream factor, at the case's full weight."""
    return dataclasses.replace(inp, hidden=inp.hidden[tokens], target=inp.target[tokens], reduction="none")


def check_one(task: tuple[str, str, Sizes | None, int]) -> tuple[str, str, Tally, str]:
    """One case x format (a worker's task): its tally and whether every element was compared."""
    name, fname, sizes, seed = task
    case = next(c for c in load_cases() if c.name == name)
    fmt = FORMATS[fname]
    inp = linear_inputs(case, fmt, seed=seed)
    if not case.runs_on("cpu"):
        # A full-size GPU case: a few tokens' per-token references at the full weight (every
        # token's logits in Python integers would take hours).
        rng = np.random.default_rng(seed)
        live = [i for i in range(inp.tokens) if int(inp.target[i]) != inp.ignore_index]
        tokens = [live[0]] + [live[k] for k in _seeded(rng, len(live), GPU_TOKENS - 1, {0})]
        sub = token_subcase(inp, sorted(tokens))
        dy = np.asarray(upstream(case, fmt, (sub.tokens,), seed=seed)).astype(np.float64)
        grads = sub.vocabulary * sub.hidden_size <= GPU_GRADIENT_ELEMENTS
        tally = compare_case(sub, fmt, dy, GPU_SAMPLE, seed=seed, gradients=grads)
        return name, fname, tally, f"tokens {sorted(tokens)} alone" + ("" if grads else ", losses only")
    dy = upstream(case, fmt, (inp.tokens,) if inp.reduction == "none" else (), seed=seed)
    dy = np.asarray(dy).astype(np.float64)
    chosen = None if sizes is None or (sizes is FULL_SAMPLE and full_size(inp)) else sizes
    tally = compare_case(inp, fmt, dy, chosen, seed=seed)
    return name, fname, tally, "every element" if chosen is None else "sample"


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
    ap.add_argument("--gpu-cases", action="store_true",
                    help="also the full-size cases (devices = [\"cuda\"]): per-token references of "
                         f"{GPU_TOKENS} tokens each (needs about 16 GB of memory)")
    ap.add_argument("--jobs", type=int, default=1, help="case x format pairs checked at once (processes)")
    ap.add_argument("--show", type=int, default=5, help="disagreements listed per case x format")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL_SAMPLE if args.full else DEFAULT
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or args.jobs < 1:
        ap.error(f"unknown format {unknown[0]!r}" if unknown else "--jobs takes 1 or more")
    names = None if args.cases is None else {c.strip() for c in args.cases.split(",")}
    cases = sorted((c for c in load_cases() if c.linear and (names is None or c.name in names)), key=lambda c: c.name)
    missing = sorted((names or set()) - {c.name for c in cases})
    if missing:
        ap.error(f"no linear_cross_entropy case named {missing[0]!r} (softaudit cases lists them)")
    t0 = time.perf_counter()
    total = bad = unc = 0
    head = " ".join(f"{n:>9}" for n in TENSORS)
    print(f"{'case':24} {'format':9} {head} {'disagree':>8} {'uncert':>6} {'seconds':>8}")
    for case in cases:
        if not case.runs_on("cpu") and not args.gpu_cases:
            print(f"{case.name:24} skipped: devices = {list(case.devices)} (a GPU-only case: --gpu-cases)")
    tasks = [(c.name, f, sizes, args.seed) for c in cases if args.gpu_cases or c.runs_on("cpu")
             for f in formats if c.applies_to_format(f)]
    with multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(check_one, tasks) if pool is not None else map(check_one, tasks)
        for name, fname, tally, scope in results:
            n = sum(tally.compared.values())
            total, bad, unc = total + n, bad + len(tally.bad), unc + tally.uncertified
            counts = " ".join(f"{tally.compared[x]:>9}" for x in TENSORS)
            print(f"{name:24} {fname:9} {counts} {len(tally.bad):>8} {tally.uncertified:>6} "
                  f"{tally.seconds:>8.1f}  {scope}", flush=True)
            for line in tally.bad[: args.show]:
                print(f"    {line}")
    print(f"\n{total} elements, {bad} disagreements ({unc} uncertified, {time.perf_counter() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
