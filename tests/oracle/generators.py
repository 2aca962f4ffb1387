"""Seeded adversarial inputs: rows whose outputs sit within a tiny fraction of an ulp of a rounding
midpoint, decided by terms far below the row's maximum; and one planted input per failure class of
issue 17. Everything is deterministic (numpy Generator seeded by the caller).

Construction (all formats): with c a format value of ulp 2^k and h = 2^(k-1), the difference
-c - h of the two format values -c and h is a midpoint of the format (it needs one more bit). A
row [h, -c, far...] gives log_softmax and cross-entropy outputs equal to that midpoint plus
log1p(T), T = exp(-c - h) + (terms far below): the side is decided by T alone. The VJPs get
midpoints from their rational parts (sums of dy, dy differences over tied maxima, dy / k0 in the
subnormal range) with the same far tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .rounding import FORMATS, rne_float

OPS = ("softmax", "log_softmax", "logsumexp", "cross_entropy")


@dataclass
class Item:
    """One input for the oracle and softaudit: an op and direction with its arguments."""

    op: str
    direction: str
    x: np.ndarray
    dy: np.ndarray | None = None
    loss: dict | None = None
    """LossInputs fields (target, target_kind, weight, label_smoothing, ignore_index, reduction)."""
    note: str = ""
    tags: tuple = field(default_factory=tuple)


def _fv(v: float, fmt: str) -> float:
    return rne_float(float(v), FORMATS[fmt])


def _ulp_exp(c: float, fmt: str) -> int:
    f = FORMATS[fmt]
    return max(math.frexp(abs(c))[1] - 1, f.emin) - f.p + 1


def _max_c(fmt: str) -> float:
    return {"float64": 1e15, "float32": 1e7, "float16": 3e4, "bfloat16": 1e30}[fmt]


def midpoint_row(fmt: str, c: float, tail: list[float]) -> np.ndarray:
    """[h, -c, tail...] with -c - h a midpoint of fmt (c rounded into fmt first)."""
    c = _fv(c, fmt)
    h = math.ldexp(1.0, _ulp_exp(c, fmt) - 1)
    return np.array([h, -c] + [_fv(t, fmt) for t in tail])


def tuned_items(fmt: str, op: str, count: int, seed: int) -> list[Item]:
    """``count`` rows for ``op`` (both directions; cross_entropy: loss and gradient) near midpoints."""
    rng = np.random.default_rng([seed, list(FORMATS).index(fmt), OPS.index(op)])
    f = FORMATS[fmt]
    out: list[Item] = []
    for _ in range(count):
        c = math.exp(rng.uniform(math.log(30), math.log(_max_c(fmt))))
        base = midpoint_row(fmt, c, [])
        far = []
        for _ in range(int(rng.integers(0, 4))):
            kind = rng.random()
            if kind < 0.25:
                far.append(-math.inf)
            else:
                far.append(-(abs(float(base[1])) + math.exp(rng.uniform(math.log(1e2), math.log(1e4)))))
        x = np.concatenate([base, [_fv(v, fmt) if np.isfinite(v) else v for v in far]])
        x[~np.isfinite(x) & (x > 0)] = -math.inf
        x[np.abs(x) > float(f.max_finite)] = -math.inf
        perm = rng.permutation(x.size) if rng.random() < 0.5 else np.arange(x.size)
        x = x[perm]
        pos = int(np.flatnonzero(perm == 1)[0])  # where -c went
        top = int(np.flatnonzero(perm == 0)[0])  # where h went
        n = x.size
        if op in ("log_softmax", "logsumexp"):
            out.append(Item(op, "forward", x[None, :], note="midpoint row"))
        if op == "softmax":
            out.append(Item(op, "forward", softmax_near_midpoint(fmt, rng)[None, :], note="p_max near 1 - 2^-(p+1)"))
        if op == "log_softmax":
            # sum(dy) = -(1 + 3 * 2^-p) except at the max: the max's gradient is a midpoint + far terms
            dy = np.zeros(n)
            dy[pos] = 1.0
            dy[top] = 0.0
            others = [j for j in range(n) if j not in (pos, top)]
            if others:
                dy[others[0]] = math.ldexp(3.0, -f.p)
            else:
                dy[pos] = 1.0
            out.append(Item(op, "backward", x[None, :], (dy * (1 if rng.random() < 0.5 else -1))[None, :]))
        elif op == "softmax":
            # two tied maxima whose dy differ by a midpoint; the rest far below
            xt = np.concatenate([[x[top], x[top]], np.delete(x, top)])
            dy = np.zeros(xt.size)
            dy[0] = 1.0
            dy[1] = -math.ldexp(3.0, -f.p)
            dy[2:] = rng.choice([-1.0, 1.0, 0.5], size=xt.size - 2)
            out.append(Item(op, "backward", xt[None, :], dy[None, :]))
        elif op == "logsumexp":
            # dy / 2 a midpoint of the subnormal range (two tied maxima)
            xt = np.concatenate([[x[top]], x])
            dy = np.array([math.ldexp(float(2 * rng.integers(0, 8) + 1), f.qmin) * rng.choice([-1, 1])])
            out.append(Item(op, "backward", xt[None, :], dy))
        elif op == "cross_entropy":
            smoothing = 0.0 if rng.random() < 0.7 else float(rng.choice([0.1, 0.25]))
            # label smoothing puts weight on masked classes (+inf): keep it for unmasked rows only
            if np.isinf(x).any():
                smoothing = 0.0
            weight = None
            if rng.random() < 0.3:
                weight = np.array([_fv(v, fmt) for v in rng.uniform(0.25, 2.0, size=n)])
            loss = dict(target=np.array([pos]), target_kind="index", weight=weight,
                        label_smoothing=smoothing, ignore_index=None, reduction="none")
            out.append(Item(op, "forward", x[None, :], loss=loss))
            q = np.zeros(n)
            q[top] = 0.25
            q[pos] = 0.5
            rest = [j for j in range(n) if j not in (pos, top) and np.isfinite(x[j])]
            if rest:
                q[rest[0]] = math.ldexp(3.0, -(f.p + 1))
            ploss = dict(target=q[None, :], target_kind="probability", weight=None, label_smoothing=0.0,
                         ignore_index=None, reduction=str(rng.choice(["none", "sum", "mean"])))
            red = ploss["reduction"]
            dy = np.array([1.0]) if red == "none" else np.array(1.0)
            out.append(Item(op, "backward", x[None, :], dy, ploss))
            out.append(Item(op, "forward", x[None, :], loss=ploss))
    return out


def planted(fmt: str) -> list[Item]:
    """One small input per failure class of issue 17 (where the class applies to ``fmt``)."""
    f = FORMATS[fmt]
    p = f.p
    items: list[Item] = []
    # (1) exact midpoint + an infinitesimal: loss, log_softmax, VJPs, CE gradient at the max.
    big = float(2 ** (p - 1) + 4)  # -(big + 1/2) is a midpoint (ulp 1), rounds to even big as a tie
    x1 = np.array([[0.5, -big, -big]])
    for red in ("none", "mean", "sum"):
        items.append(Item("cross_entropy", "forward", x1,
                          loss=dict(target=np.array([1]), target_kind="index", reduction=red), tags=("1",)))
    items.append(Item("log_softmax", "forward", x1, tags=("1",)))
    xf = np.array([[0.0, -1000.0, -1000.0]])
    items.append(Item("log_softmax", "backward", xf, np.array([[0.0, 1.0, math.ldexp(3.0, -p)]]), tags=("1",)))
    items.append(Item("softmax", "backward", np.array([[0.0, 0.0, -1000.0]]),
                      np.array([[1.0, -math.ldexp(3.0, -p), 1.0]]), tags=("1",)))
    q = np.array([[0.25, 0.5, math.ldexp(3.0, -(p + 1))]])
    items.append(Item("cross_entropy", "backward", np.array([[0.0, -1000.0, -1000.0]]), np.array([1.0]),
                      dict(target=q, target_kind="probability", reduction="none"), tags=("1",)))
    items.append(Item("logsumexp", "backward", np.array([[0.0, 0.0, -1000.0]]),
                      np.array([math.ldexp(3.0, f.qmin)]), tags=("1",)))
    if fmt == "float64":
        # (2) VJPs of subnormal size on midpoints: m 2^-1074 over k tied maxima is m/k ulps of 0, a
        # midpoint for odd m and even k, less an infinitesimal from the far entry (bounds of that
        # size times 2^-118 underflowed to 0, and the midpoint was rounded as a tie)
        tiny = math.ldexp(1.0, -1074)
        for k, m in ((6, 3), (6, 9), (6, 15), (12, 9), (4, 3)):
            xk = np.array([[0.0] * k + [-800.0, -1e5]])
            items.append(Item("logsumexp", "backward", xk, np.array([m * tiny]), tags=("2",)))
            items.append(Item("log_softmax", "backward", xk, np.array([[m * tiny] + [0.0] * (k + 1)]), tags=("2",)))
        # (2) outputs in float64's subnormal range
        gaps = np.array([0.0, -708.25, -709.5, -710.5, -712.0, -720.0, -730.0, -740.0, -744.5, -745.0])
        items.append(Item("softmax", "forward", gaps[None, :], tags=("2",)))
        for op in ("softmax", "log_softmax"):
            dy = np.array([[1.0, 1e-16, -3e-17, 2e-15, 1.5, -1.0, 1e-10, 0.25, 7.0, -2.0]])
            items.append(Item(op, "backward", gaps[None, :], dy, tags=("2",)))
        items.append(Item("logsumexp", "backward", gaps[None, :], np.array([1e-14]), tags=("2",)))
        # (3) within e^-1400 of a midpoint, decided far below the max
        x3 = np.array([[1.0, -2.0 ** 53, -2.0 ** 53 - 1400.0 * 0 - 2.0 ** 40]])
        items.append(Item("log_softmax", "forward", x3, tags=("3",)))
        items.append(Item("logsumexp", "forward", np.array([[0.0, -0.5, -1400.0]]), tags=("3",)))
        items.append(Item("softmax", "forward", np.array([[0.0, 0.0, -1400.0, -1400.5]]), tags=("3",)))
        # (4) weighted probability targets, w * q not exact in float64
        items.append(Item("cross_entropy", "backward", np.array([[0.9365587173065452, 0.9365587173065452]]),
                          np.array([0.8519616330454137]),
                          dict(target=np.array([[0.2966647792973231, 0.7033352207026768]]),
                               target_kind="probability", weight=np.array([0.5343569742163228, 0.4610659074238441]),
                               reduction="none"), tags=("4",)))
        rng = np.random.default_rng(4)
        xw = np.round(rng.normal(size=(3, 5)), 1)
        qw = rng.random((3, 5))
        qw /= qw.sum(axis=1, keepdims=True)
        ww = rng.random(5) + 0.1
        for red, dy in (("none", rng.normal(size=3)), ("mean", np.array(1.0)), ("sum", np.array(1.0))):
            lw = dict(target=qw, target_kind="probability", weight=ww, label_smoothing=0.1, reduction=red)
            items.append(Item("cross_entropy", "backward", xw, dy, lw, tags=("4",)))
            items.append(Item("cross_entropy", "forward", xw, None, lw, tags=("4",)))
    if fmt == "float32":
        items.append(Item("softmax", "forward", np.array([[0.0, 0.0, -1400.0 / 16]]), tags=("3",)))
    return items


def exp_threshold_rows(fmt: str) -> np.ndarray:
    """Rows [0, -g] for gaps g around exp's underflow/overflow thresholds of the format."""
    centres = {"float16": [9.7, 11.09, 16.6, 17.33], "bfloat16": [87.3, 88.7, 92.2, 103.9],
               "float32": [87.3, 88.7, 92.2, 103.9], "float64": [708.4, 709.78, 744.44, 745.13]}[fmt]
    rows = []
    for c in centres:
        for delta in np.linspace(-0.06, 0.06, 13):
            g = _fv(c + delta, fmt)
            rows.append([0.0, -g, _fv(-g / 2, fmt), -g])
    return np.array(rows)


def softmax_near_midpoint(fmt: str, rng: np.random.Generator, steps: int = 8) -> np.ndarray:
    """A row [0, d1, d2, ...] whose softmax at the maximum, 1 / (1 + T), lies within a tiny
    fraction of an ulp of the midpoint 1 - 2^-(p+1): greedily, each d_k is the format value just
    below log of what T still lacks (every term keeps T below its target), so the residual
    shrinks by about |d| 2^-p per step; the last step may overshoot, so either side occurs."""
    from flint import arb, ctx

    f = FORMATS[fmt]
    saved = ctx.prec
    ctx.prec = 4000
    try:
        mid = 1 - arb(2) ** -(f.p + 1)
        tau = 1 / mid - 1  # the T at which 1/(1+T) is the midpoint
        row = [0.0]
        total = arb(0)
        for k in range(steps):
            r = tau - total
            if not r > 0:
                break
            target = float((r.log()).mid()) if k else float(tau.log().mid())
            if target < -float(f.max_finite) / 2:
                break
            overshoot = k == steps - 1 and rng.random() < 0.5
            d = _fv(target, fmt)
            if (d > target) != overshoot:  # round down (keep below) unless this is the overshoot
                d = float(np.nextafter(np.array(d, dtype=np.float64), -np.inf if not overshoot else np.inf))
                d = _fv(d, fmt) if _fv(d, fmt) != _fv(target, fmt) else _step(d, fmt, -1 if not overshoot else 1)
            row.append(d)
            total += arb(d).exp()
    finally:
        ctx.prec = saved
    return np.array(row)


def _step(v: float, fmt: str, direction: int) -> float:
    """The neighbour of format value v in ``direction``."""
    f = FORMATS[fmt]
    e = max(math.frexp(abs(v))[1] - 1, f.emin) - f.p + 1 if v else f.qmin
    return _fv(v + direction * math.ldexp(1.0, e), fmt)
