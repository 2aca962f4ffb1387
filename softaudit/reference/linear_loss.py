"""Exact references of the fused linear cross-entropy (op ``linear_cross_entropy``), forward and
backward, certified and correctly rounded into each format.

z = h W^T + b exactly; z' = s tanh(z / s) under a softcap s (else z' = z); per non-ignored token
lse = log sum_c exp(z'_c), loss = (1 - eps)(lse - z'_t) + (eps / V) sum_c (lse - z'_c)
+ z_loss lse^2; G = dL/dz = g [(1 + 2 z_loss lse) p - coef] sech^2(z / s) with
coef_c = (1 - eps)[c = t] + eps / V and g the upstream gradient as the reduction distributes it;
d_hidden = G W, d_weight = G^T h, d_bias = sum_i G_i.

The fast path (engine "auto"), for every format:

1. **Logits, error-free.** reference.exact_dot: the Ozaki splitting makes every float64 BLAS
   product of slices exact whatever its summation order; the slice products and the bias are
   added into a double-double with a bound (0 when no addition rounded).
2. **The loss** in double-double (softaudit.double_double: exp, log, log1p with bounds), as
   the sum of non-negative terms (L - d_t, L - d_c, z_loss lse^2 with d = z' - max, L = log sum
   exp(d)): no cancellation. The logits' own bounds enter each d.
3. **G** in double-double with a bound per element; at the maxima p - coef is formed as
   ((1 - k coef) + 2 z_loss lse - coef t) / s (t the sum of the other exps), so a confident
   token's 1 - p_t keeps its digits. The softcap's sech^2 = 4e / (1 + e)^2, e = exp(-2|z/s|).
4. **The gradients** through exact_dot again: G (hi and lo parts) sliced until its rest is below
   2^-(p + 56) of each row's maximum, the rest and G's bound carried as |.| products into each
   element's bound. Cancellation (d_hidden: sum_c G_ic is ~0) is paid for honestly: the bound
   is relative to sum |G| |W|, and an element it cannot prove goes to mpmath.
5. **Certifying** each element as fast_double_double.certify does (one rounding, one binade,
   known to 2^-16 ulp); the rest goes to the mpmath engine (reference.linear_exact), element by
   element, through Ziv's loop. Mean and sum are added in mpmath from the tokens' values and
   bounds. Inputs the fast path cannot handle (a logit outside double-double's safe range, a
   softcap argument beyond 300) send the whole case to the mpmath engine.

No bound here may be 0 unless the value is exact by construction: each is floored at the
smallest subnormal (exact_dot.TINY).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from softaudit import double_double as dd
from softaudit.cases.linear_inputs import LinearLossInputs
from softaudit.formats import Format, format_of_dtype
from softaudit.reference import exact as mp
from softaudit.reference.engines import ENGINES
from softaudit.reference.exact import MAX_PRECISION, Certifier, Entry, OpReference, op_reference
from softaudit.reference.exact_dot import TINY, Split, fit, product, split_rows
from softaudit.reference.fast_double_double import certify, pairwise_sum, unscaled
from softaudit.reference.fast_path import Certified, cut, cut_term, store_rows
from softaudit.reference.linear_exact import (
    Engine,
    ExactLogits,
    Value,
    add_values,
    base_precision,
    certified,
    certify_value,
    upstream,
)
from softaudit.reference.loss import LossReference

_SAFETY = 2.0
_GROW = 1 + 2.0**-40
"""Bounds summed from first-order terms are doubled (_SAFETY) and nudged up (_GROW)."""
CHUNK_ELEMENTS = 1 << 21
"""Matrices are processed in blocks of about this many elements (memory, and cache)."""
SOFTCAP_RANGE = 300.0
"""|z / s| beyond this sends a case to mpmath: sech^2 would leave double-double's range."""


@dataclass
class LinearGradients:
    """Certified, correctly rounded gradients of one case."""

    hidden: OpReference
    """(T, D)."""
    weight: OpReference
    """(V, D)."""
    bias: OpReference | None
    """(V,), None without a bias."""
    uncertified: int
    """Elements left unproven at the precision cap (expected 0)."""


@dataclass
class LinearStats:
    """Float64 per-token quantities for the envelope (never in a proof)."""

    logits: np.ndarray
    """(T, V) z' (softcapped logits), rounded to float64."""
    lse: np.ndarray
    """(T,) log sum_c exp(z'_c)."""
    p: np.ndarray
    """(T, V) softmax(z')."""
    abs_dot: np.ndarray
    """(T, V) sum_d |h_id w_cd| (+ |b_c|): the scale of each logit's dot product."""
    ignored: np.ndarray
    """(T,) bool."""


# --------------------------------------------------------------------------
# Logits


@dataclass
class Logits:
    """z (or z') as a double-double with a bound, and where the fast path may use it."""

    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    trusted: np.ndarray


def _floats(inp: LinearLossInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    h = np.asarray(inp.hidden).astype(np.float64)
    w = np.asarray(inp.weight).astype(np.float64)
    b = None if inp.bias is None else np.asarray(inp.bias).astype(np.float64)
    return h, w, b


def _logits(inp: LinearLossInputs) -> Logits:
    h, w, b = _floats(inp)
    t, d = h.shape
    v = w.shape[0]
    stored = format_of_dtype(np.asarray(inp.weight).dtype)
    p = stored.p if stored is not None else 53
    hi, lo, err = np.zeros((t, v)), np.zeros((t, v)), np.zeros((t, v))
    trusted = np.ones((t, v), dtype=bool)
    step = max(1, CHUNK_ELEMENTS // 4 // max(d, 1))
    h_splits: dict[int, Split] = {}
    for c0 in range(0, v, step):
        sl = slice(c0, min(v, c0 + step))
        wa, ws = fit(w[sl], d, p)  # the weight as its own exact slice where it fits
        if wa not in h_splits:
            h_splits[wa] = split_rows([h], d, bits=wa)
        pr = product(h_splits[wa], ws, d)
        zh, zl, ze, ok = pr.unscaled()
        if b is not None:
            # The bias as one more term: both additions' errors kept, what the low part drops bounded.
            zh, e = dd.two_sum(zh, np.broadcast_to(b[sl], zh.shape))
            zl, e2 = dd.two_sum(zl, e)
            zh, zl = dd.two_sum(zh, zl)
            ze = ze + np.abs(e2) * _GROW
        hi[:, sl], lo[:, sl], err[:, sl], trusted[:, sl] = zh, zl, ze, ok
    return Logits(hi, lo, err, trusted & (err <= 2.0**-60 * np.maximum(np.abs(hi), 1.0)))


def exact_logits(inp: LinearLossInputs) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) float64 arrays (T, V): z = h W^T + b as an unevaluated sum hi + lo, |lo| <= ulp(hi)/2.

    Exact (hi + lo = z) wherever z fits in 106 bits, which covers every product of bfloat16,
    float16 and float32 values of ordinary range; otherwise within the bound exact_logits_bound
    returns (about 2^-100 |z|).
    """
    lg = _logits(inp)
    return lg.hi, lg.lo


def exact_logits_bound(inp: LinearLossInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, err): |z - (hi + lo)| <= err, err 0 where hi + lo is z exactly."""
    lg = _logits(inp)
    return lg.hi, lg.lo, lg.err


def _softcap(lg: Logits, cap: float) -> tuple[Logits, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """z' = cap tanh(z / cap) and sech^2(z / cap), double-doubles with bounds."""
    xh, xl = dd.div(lg.hi, lg.lo, np.full(lg.hi.shape, cap), np.zeros(lg.hi.shape))
    err_x = lg.err / cap * _GROW + dd.U_DD * np.abs(xh)
    sign = np.where(xh < 0, -1.0, 1.0)
    ah, al = xh * sign, xl * sign
    trusted = lg.trusted & (ah <= SOFTCAP_RANGE)
    ah = np.minimum(ah, SOFTCAP_RANGE)
    al = np.where(ah >= SOFTCAP_RANGE, 0.0, al)
    small = ah <= 2.0**-6
    emh, eml, err_em = np.zeros(ah.shape), np.zeros(ah.shape), np.zeros(ah.shape)
    if small.any():
        h, l_ = dd.expm1_small(-2 * ah[small], -2 * al[small])
        emh[small], eml[small] = h, l_
        err_em[small] = np.abs(h) * dd.REL_EXPM1
    if (~small).any():
        m, eh, el = dd.exp(-2 * ah[~small], -2 * al[~small])
        uh, ul = unscaled(m, eh, el)
        h, l_, e = dd.add_fp(uh, ul, -1.0)
        emh[~small], eml[~small] = h, l_
        err_em[~small] = e + uh * dd.REL_EXP + 2.0**-1070
    err_em = err_em * _GROW
    denh, denl, e_den = dd.add_fp(emh, eml, 2.0)
    th, tl = dd.div(-emh, -eml, denh, denl)
    err_t = 2 * (err_em + e_den) + dd.U_DD * np.abs(th) + err_x
    yh, yl = dd.mul_fp(th * sign, tl * sign, np.full(th.shape, cap))
    err_y = (cap * err_t + dd.U_DD * np.abs(yh)) * _GROW
    nh, nl, e_n = dd.add_fp(emh, eml, 1.0)
    d2h, d2l = dd.mul(denh, denl, denh, denl)
    sh, sl = dd.div(4 * nh, 4 * nl, d2h, d2l)
    err_s = (4 * (err_em + e_n + e_den) + 3 * dd.U_DD * np.abs(sh) + err_x) * _GROW
    return Logits(yh, yl, np.maximum(err_y, np.where(lg.err > 0, TINY, 0.0)), trusted), (sh, sl, err_s)


# --------------------------------------------------------------------------
# Per-token terms, loss and G


@dataclass
class _Tokens:
    """A block of tokens' row terms (double-doubles with bounds), as fast_double_double.Terms."""

    is_max: np.ndarray
    k: np.ndarray
    dh: np.ndarray
    dl: np.ndarray
    ed: np.ndarray
    live: np.ndarray
    m: np.ndarray
    eh: np.ndarray
    el: np.ndarray
    th: np.ndarray
    tl: np.ndarray
    err_t: np.ndarray
    sh: np.ndarray
    sl: np.ndarray
    err_s: np.ndarray
    lh: np.ndarray
    ll: np.ndarray
    err_l: np.ndarray
    lse_h: np.ndarray
    lse_l: np.ndarray
    err_lse: np.ndarray
    p_tail: np.ndarray


def _terms(yh: np.ndarray, yl: np.ndarray, ye: np.ndarray, fmt: Format) -> _Tokens:
    rows, v = yh.shape
    mh = yh.max(axis=1)
    cand = yh == mh[:, None]
    ml = np.where(cand, yl, -np.inf).max(axis=1)
    is_max = cand & (yl == ml[:, None])
    dh, dl, e_add = dd.add(yh, yl, -mh[:, None], -ml[:, None])
    ed = (ye + e_add) * _GROW
    d_cut = cut(fmt, v)
    live = ~is_max & (dh >= d_cut)
    tail = ~is_max & ~live
    m = np.zeros(yh.shape, dtype=np.int64)
    eh = np.where(is_max, 1.0, 0.0)
    el = np.zeros(yh.shape)
    if live.any():
        m[live], eh[live], el[live] = dd.exp(dh[live], dl[live])
    uh, ul = unscaled(m, eh, el)
    th, tl, err_sum = pairwise_sum(np.where(is_max, 0.0, uh), np.where(is_max, 0.0, ul))
    k = is_max.sum(axis=1)
    p_tail = 2 * cut_term(np.full(rows, d_cut))
    ed_max = ed.max(axis=1)
    err_t = (th * (dd.REL_EXP + 1.01 * ed_max) + err_sum + live.sum(axis=1) * 2.0**-1073
             + tail.sum(axis=1) * p_tail + 1.01 * np.where(is_max, ed, 0.0).sum(axis=1)) * _GROW
    sh, sl, e_s = dd.add_fp(th, tl, k.astype(np.float64))
    err_s = err_t + e_s
    lh, ll, err_l = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    small = (k == 1) & (th <= 2.0**-6)
    if small.any():
        h, l_, e = dd.log1p_small(th[small], tl[small])
        lh[small], ll[small] = h, l_
        err_l[small] = e + err_t[small] / np.maximum(1 + th[small] - err_t[small], 0.5)
    if (~small).any():
        h, l_, e = dd.log(sh[~small], sl[~small])
        lh[~small], ll[~small] = h, l_
        err_l[~small] = e + err_s[~small] / np.maximum(sh[~small] - err_s[~small], 0.5)
    err_l = err_l * _GROW
    lse_h, lse_l, e_lse = dd.add(mh, ml, lh, ll)
    return _Tokens(is_max, k, dh, dl, ed, live, m, eh, el, th, tl, err_t, sh, sl, err_s, lh, ll, err_l,
                   lse_h, lse_l, (e_lse + err_l) * _GROW, p_tail)


def _token_losses(tk: _Tokens, target: np.ndarray, eps: float, zl: float, v: int) -> tuple[np.ndarray, ...]:
    """(hi, lo, err) of each token's loss (its target in range)."""
    rows = np.arange(target.size)
    dt_h, dt_l = tk.dh[rows, target], tk.dl[rows, target]
    nh, nl, e = dd.add(tk.lh, tk.ll, -dt_h, -dt_l)
    err_n = e + tk.err_l + tk.ed[rows, target]
    oh, ol = dd.from_fraction(1 - Fraction(eps))
    hi, lo = dd.mul(nh, nl, np.full(nh.shape, oh), np.full(nh.shape, ol))
    err = (oh * 1.01) * err_n + np.abs(hi) * (dd.U_DD + 2.0**-104)
    if eps:
        sp_h, sp_l, e_sp = pairwise_sum(-tk.dh, -tk.dl)
        e_sp = e_sp + tk.ed.sum(axis=1)
        vl_h, vl_l = dd.mul_fp(tk.lh, tk.ll, np.full(tk.lh.shape, float(v)))
        ah, al, e_a = dd.add(vl_h, vl_l, sp_h, sp_l)
        e_a = e_a + v * tk.err_l + e_sp + dd.U_DD * np.abs(vl_h)
        ch, cl = dd.from_fraction(Fraction(eps) / v)
        smh, sml = dd.mul(ah, al, np.full(ah.shape, ch), np.full(ah.shape, cl))
        hi, lo, e2 = dd.add(hi, lo, smh, sml)
        err = err + e2 + ch * 1.01 * e_a + np.abs(smh) * (dd.U_DD + 2.0**-104)
    if zl:
        qh, ql = dd.mul(tk.lse_h, tk.lse_l, tk.lse_h, tk.lse_l)
        qh, ql = dd.mul_fp(qh, ql, np.full(qh.shape, zl))
        e_q = zl * (2 * np.abs(tk.lse_h) * 1.01 * tk.err_lse + tk.err_lse**2) + 3 * dd.U_DD * np.abs(qh)
        hi, lo, e3 = dd.add(hi, lo, qh, ql)
        err = err + e3 + e_q
    return hi, lo, np.maximum(_SAFETY * err * _GROW, TINY)


def _token_gradients(tk: _Tokens, target: np.ndarray, eps: float, zl: float, v: int,
                     g: list[Fraction], sech: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, ...]:
    """(hi, lo, err) of G for a block of tokens (targets in range)."""
    rows, _ = tk.dh.shape
    idx = np.arange(rows)
    on_t = np.zeros(tk.dh.shape, dtype=bool)
    on_t[idx, target] = True
    c_other = Fraction(eps) / v
    c_t = 1 - Fraction(eps) + c_other
    coef_h = np.where(on_t, dd.from_fraction(c_t)[0], dd.from_fraction(c_other)[0])
    coef_l = np.where(on_t, dd.from_fraction(c_t)[1], dd.from_fraction(c_other)[1])
    coef_err = np.abs(coef_h) * 2.0**-104
    # B = 1 + 2 zl lse
    zh, zl_ = dd.mul_fp(tk.lse_h, tk.lse_l, np.full(rows, 2 * zl))
    bh, bl, e_b = dd.add_fp(zh, zl_, 1.0)
    err_b = 2 * zl * tk.err_lse + dd.U_DD * np.abs(zh) + e_b
    s_low = np.maximum(tk.sh - tk.err_s, 0.5)
    gh, gl, ge = np.zeros(tk.dh.shape), np.zeros(tk.dh.shape), np.zeros(tk.dh.shape)
    # Ordinary entries: B p - coef.
    q_h, q_l = dd.div(tk.eh, tk.el, tk.sh[:, None], tk.sl[:, None])
    usable = tk.live & (tk.m >= -960)
    with np.errstate(under="ignore"):
        ph, pl = np.ldexp(q_h, tk.m), np.ldexp(q_l, tk.m)
    ph, pl = np.where(usable, ph, 0.0), np.where(usable, pl, 0.0)
    err_p = ph * (dd.REL_EXP + 1.01 * tk.ed + dd.U_DD + (tk.err_s / s_low)[:, None]) * _GROW
    # Entries not computed: 0 <= p <= p_bound.
    with np.errstate(under="ignore"):
        p_bound = np.where(tk.live, np.maximum(np.ldexp(1.0, tk.m + 2), TINY), tk.p_tail[:, None])
    err_p = np.where(usable | tk.is_max, err_p, p_bound)
    bph, bpl = dd.mul(bh[:, None], bl[:, None], ph, pl)
    vh, vl, e_v = dd.add(bph, bpl, -coef_h, -coef_l)
    ev = (np.abs(bh)[:, None] + err_b[:, None]) * err_p + err_b[:, None] * ph + dd.U_DD * np.abs(bph) + coef_err + e_v
    gh, gl, ge = vh, vl, ev
    # The maxima: ((1 - k coef) + 2 zl lse - coef t) / s.
    if tk.is_max.any():
        k = tk.k
        a0 = [(dd.from_fraction(1 - kk * c_t), dd.from_fraction(1 - kk * c_other)) for kk in k.tolist()]
        a0h = np.where(on_t, np.array([a[0][0] for a in a0])[:, None], np.array([a[1][0] for a in a0])[:, None])
        a0l = np.where(on_t, np.array([a[0][1] for a in a0])[:, None], np.array([a[1][1] for a in a0])[:, None])
        cth, ctl = dd.mul(coef_h, coef_l, tk.th[:, None], tk.tl[:, None])
        nh, nl, e1 = dd.add(a0h, a0l, zh[:, None], zl_[:, None])
        nh, nl, e2 = dd.add(nh, nl, -cth, -ctl)
        e_num = (np.abs(a0h) * 2.0**-104 + (2 * zl * tk.err_lse + dd.U_DD * np.abs(zh))[:, None] + e1 + e2
                 + coef_h * 1.01 * tk.err_t[:, None] + dd.U_DD * np.abs(cth))
        mh_, ml_ = dd.div(nh, nl, tk.sh[:, None], tk.sl[:, None])
        e_m = ((e_num + np.abs(nh) * (tk.err_s / s_low)[:, None]) / s_low[:, None] + dd.U_DD * np.abs(mh_)
               + (np.abs(bh) + err_b)[:, None] * 1.01 * tk.ed / s_low[:, None])
        gh, gl, ge = np.where(tk.is_max, mh_, gh), np.where(tk.is_max, ml_, gl), np.where(tk.is_max, e_m, ge)
    if sech is not None:
        sh, sl, se = sech
        nh2, nl2 = dd.mul(gh, gl, sh, sl)
        ge = ge * (np.abs(sh) + se) + np.abs(gh) * se + dd.U_DD * np.abs(nh2)
        gh, gl = nh2, nl2
    g_pairs = [dd.from_fraction(x) for x in g]
    g_h = np.array([x[0] for x in g_pairs])[:, None]
    g_l = np.array([x[1] for x in g_pairs])[:, None]
    oh, ol = dd.mul(gh, gl, np.broadcast_to(g_h, gh.shape), np.broadcast_to(g_l, gh.shape))
    oe = np.abs(g_h) * 1.01 * ge + np.abs(oh) * (dd.U_DD + 2.0**-104)
    oe = np.where(g_h != 0, np.maximum(_SAFETY * oe * _GROW, TINY), 0.0)
    return oh, ol, oe


# --------------------------------------------------------------------------
# The fast path's case


@dataclass
class _Fast:
    """What the fast path computed for one case."""

    status: np.ndarray
    """(T,) "ignored" | "nan" | "ok"."""
    loss_h: np.ndarray
    loss_l: np.ndarray
    loss_e: np.ndarray
    gh: np.ndarray | None
    gl: np.ndarray | None
    ge: np.ndarray | None
    lse: np.ndarray
    zprime: np.ndarray
    p: np.ndarray
    logits: Logits
    """The unsoftcapped logits z."""


def _status(inp: LinearLossInputs) -> np.ndarray:
    t = np.asarray(inp.target).astype(np.int64)
    ignored = t == inp.ignore_index
    return np.where(ignored, "ignored", np.where((t >= 0) & (t < inp.vocabulary), "ok", "nan"))


def _fast(inp: LinearLossInputs, fmt: Format, g: list[Fraction] | None) -> _Fast | None:
    """The fast path's per-token losses and G (with g), or None where it does not apply."""
    lg = z = _logits(inp)
    sech = None
    if inp.softcap is not None:
        lg, sech = _softcap(z, float(inp.softcap))
    if not lg.trusted.all():
        return None
    status = _status(inp)
    t, v = lg.hi.shape
    target = np.asarray(inp.target).astype(np.int64)
    loss_h, loss_l, loss_e = np.zeros(t), np.zeros(t), np.zeros(t)
    lse = np.full(t, np.nan)
    p = np.zeros((t, v))
    gh = gl = ge = None
    if g is not None:
        gh, gl, ge = np.zeros((t, v)), np.zeros((t, v)), np.zeros((t, v))
    eps, zl = float(inp.label_smoothing), float(inp.z_loss)
    ok = np.flatnonzero(status == "ok")
    step = max(1, CHUNK_ELEMENTS // 4 // max(v, 1))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for r0 in range(0, ok.size, step):
            idx = ok[r0:r0 + step]
            tk = _terms(lg.hi[idx], lg.lo[idx], lg.err[idx], fmt)
            loss_h[idx], loss_l[idx], loss_e[idx] = _token_losses(tk, target[idx], eps, zl, v)
            lse[idx] = tk.lse_h
            p[idx] = np.where(tk.is_max, 1.0, unscaled(tk.m, tk.eh, tk.el)[0]) / tk.sh[:, None]
            if gh is not None and ge is not None and gl is not None and g is not None:
                sc = None if sech is None else tuple(a[idx] for a in sech)
                gh[idx], gl[idx], ge[idx] = _token_gradients(tk, target[idx], eps, zl, v,
                                                             [g[i] for i in idx.tolist()], sc)
    return _Fast(status, loss_h, loss_l, loss_e, gh, gl, ge, lse, lg.hi, p, z)


def _engine(inp: LinearLossInputs, fmt: Format, fast_logits: Logits | None, g: list[Fraction]) -> Engine:
    """The mpmath engine for this case, its exact logits taken from the fast path where exact."""
    cache: dict[int, list[Fraction]] = {}
    exact: list[ExactLogits] = []  # built on first need: it converts the whole weight

    def logits(i: int) -> list[Fraction]:
        if i not in cache:
            if fast_logits is not None and not fast_logits.err[i].any() and fast_logits.trusted[i].all():
                cache[i] = [Fraction(float(a)) + Fraction(float(b)) for a, b in zip(fast_logits.hi[i], fast_logits.lo[i])]
            else:
                if not exact:
                    exact.append(ExactLogits(inp))
                cache[i] = exact[0].row(i)
        return cache[i]

    return Engine(inp, fmt, logits, g)


def _at(fn: Callable[..., Value | str], *args: object) -> Callable[[int], Value | str]:
    """fn(*args, prec) as a function of the precision alone (for Ziv's loop)."""
    return lambda prec: fn(*args, prec)


def _check(inp: LinearLossInputs, engine: str) -> None:
    """The engine is known and the inputs finite (the op's cases are: docs/references.md)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown reference engine {engine!r} (known: {', '.join(ENGINES)})")
    for name, a in (("hidden", inp.hidden), ("weight", inp.weight), ("bias", inp.bias)):
        if a is not None and not np.isfinite(np.asarray(a).astype(np.float64)).all():
            raise ValueError(f"linear_cross_entropy references need finite inputs: {name} is not")


# --------------------------------------------------------------------------
# Forward


def linear_loss_reference(inp: LinearLossInputs, fmt: Format, engine: str = "auto") -> LossReference:
    """none (T,), mean (1,) and sum (1,) references of the loss, certified and correctly rounded
    into ``fmt`` (whatever inp.reduction says: all three are returned)."""
    _check(inp, engine)
    t = inp.tokens
    fast = _fast(inp, fmt, None) if engine == "auto" else None
    eng = _engine(inp, fmt, fast.logits if fast is not None else None, [])
    base = base_precision(fmt, inp)
    entries: list[Entry] = []
    values: list[Value | str] = []
    uncertified = 0
    fast_cert: Certified | None = None
    if fast is not None:
        fast_cert = certify(fast.loss_h, fast.loss_l, fast.loss_e, fmt)
    status = _status(inp)
    for i in range(t):
        if status[i] == "ignored":  # exactly 0
            entries.append(Certifier(fmt).zero_entry)
            values.append(Value(mp.mpf(0), mp.mpf(0), Fraction(0)))
            continue
        if fast is not None and fast_cert is not None and fast.status[i] == "ok" and fast_cert.ok[i]:
            entries.append((float(fast_cert.rounded[i]), int(fast_cert.k[i]), float(fast_cert.hi[i]),
                            float(fast_cert.lo[i])))
            mp.set_precision(base)
            values.append(Value(mp.exact_add(float(fast.loss_h[i]), float(fast.loss_l[i])), mp.mpf(float(fast.loss_e[i]))))
            continue
        entry, ok = certified(_at(eng.loss_token, i), fmt, base)
        entries.append(entry)
        uncertified += 0 if ok else 1
        values.append(eng.loss_token(i, base))
    n = int(np.count_nonzero(status != "ignored"))
    def redo(prec: int) -> list[Value | str]:
        return [eng.loss_token(i, prec) for i in range(t)]

    total, ok_s = _reduce(values, Fraction(1), fmt, base, redo)
    mean, ok_m = _reduce(values, Fraction(n), fmt, base, redo) if n else (None, True)
    uncertified += (not ok_s) + (not ok_m)
    return LossReference(
        none=op_reference("linear_cross_entropy", [[e] for e in entries], (t,)),
        mean=op_reference("linear_cross_entropy", [[mean] if mean is not None else None], (1,)),
        sum=op_reference("linear_cross_entropy", [[total]], (1,)),
        uncertified=uncertified,
    )


def _reduce(values: list[Value | str], denom: Fraction, fmt: Format, base: int,
            redo) -> tuple[Entry, bool]:
    """sum(values) / denom, certified: NaN if a token has no defined loss. Where the tokens' own
    values and bounds cannot prove it, every token is recomputed by mpmath at rising precision
    (``redo(prec)`` gives them)."""
    cert = Certifier(fmt)
    if any(isinstance(x, str) for x in values):
        return cert.special(float("nan")), True
    prec = base + 64
    while True:
        total = add_values([x for x in values if isinstance(x, Value)], prec)
        entry, ok = certify_value(_over(total, denom, prec), fmt)
        if ok or prec >= MAX_PRECISION:
            return entry, ok
        prec *= 2
        values = redo(prec)


def _over(total: Value, denom: Fraction, prec: int) -> Value:
    """total / denom (one-sided remainders stay one-sided: denom > 0)."""
    if denom == 1:
        return total
    mp.set_precision(prec)
    if total.exact is not None:
        q = total.exact / denom
        dm = mp.mpf_of_fraction(denom)
        err = total.err / dm * (1 + 8 * mp.unit_error(prec)) if total.side else total.err / dm + 4 * mp.unit_error(prec) * abs(total.v)
        return Value(mp.mpf_of_fraction(q), err, q, total.side)
    dm = mp.mpf_of_fraction(denom)
    v = total.v / dm
    return Value(v, _SAFETY * (total.err / dm * (1 + 4 * mp.unit_error(prec)) + 4 * mp.unit_error(prec) * abs(v)))


# --------------------------------------------------------------------------
# Backward


def linear_loss_gradient_reference(inp: LinearLossInputs, dy: np.ndarray, fmt: Format,
                                   engine: str = "auto") -> LinearGradients:
    """Certified, correctly rounded d_hidden (T, D), d_weight (V, D) and d_bias (V,) (None without a
    bias) for upstream ``dy`` ((T,) for reduction none, () otherwise), and the uncertified count."""
    _check(inp, engine)
    h, w, _ = _floats(inp)
    t, d = h.shape
    v = w.shape[0]
    status = _status(inp)
    g = upstream(inp, dy)
    n = int(np.count_nonzero(status != "ignored"))
    if (inp.reduction == "mean" and n == 0) or (status == "nan").any():
        # 0 / 0 (every token ignored), or a target with no defined loss: every gradient undefined
        # (d_hidden only on the tokens concerned).
        rows_h = [None if (n == 0 or status[i] == "nan") else [(0.0, fmt.emin - fmt.p + 1, 0.0, 0.0)] * d
                  for i in range(t)]
        none_v: list = [None] * v
        return LinearGradients(op_reference("linear_cross_entropy_backward", rows_h, (t, d)),
                               op_reference("linear_cross_entropy_backward", none_v, (v, d)),
                               None if inp.bias is None else op_reference("linear_cross_entropy_backward",
                                                                          none_v, (v,)), 0)
    fast = _fast(inp, fmt, g) if engine == "auto" else None
    eng = _engine(inp, fmt, fast.logits if fast is not None else None, g)
    base = base_precision(fmt, inp)
    if fast is None:
        return _gradients_mp(eng, fmt, base, inp.bias is not None)
    assert fast.gh is not None and fast.gl is not None and fast.ge is not None
    # The bulk pass: G to 2^-(p + 24) of each row's maximum (2^-16 ulp with 8 bits to spare for
    # cancellation), its low part sliced only where that reaches below it (else it is part of the
    # bound), the products added in float64 for the narrow formats. What it cannot prove is
    # retried as double-double dot products (_retry), then by mpmath.
    stop = min(fmt.p + 24, 100)
    stop_w = min(fmt.p + 20, 100)  # d_weight's retries are cheap (T-term dots): a shorter G
    double = fmt.p > 24
    g_parts = (fast.gh, fast.gl) if stop > 53 else (fast.gh,)
    g_extra = fast.ge if stop > 53 else fast.ge + np.abs(fast.gl)
    gt = (fast.gh, fast.gl, fast.ge)
    uncertified = 0
    # d_hidden = G W: contraction over the vocabulary, in blocks.
    acc_h, acc_l, acc_e = np.zeros((t, d)), np.zeros((t, d)), np.zeros((t, d))
    step_h = 512  # short blocks: fewer bits per product, so the weight fits one slice more often
    for c0 in range(0, v, step_h):
        sl = slice(c0, min(v, c0 + step_h))
        nv = sl.stop - sl.start
        wa, ws = fit(np.ascontiguousarray(w[sl].T), nv, fmt.p)
        # Its truncation is relative to a row's maximum times sum |w| over the vocabulary: V more.
        a = split_rows([x[:, sl] for x in g_parts], nv, stop + v.bit_length(), g_extra[:, sl], bits=wa)
        hi, lo, err, _ = product(a, ws, nv, double).unscaled()
        acc_h, acc_l, e = dd.add(acc_h, acc_l, hi, lo)
        acc_e = acc_e + err + e
    cert_h = certify(acc_h, acc_l, acc_e * _GROW, fmt)
    _retry(cert_h, lambda i, j: (*(x[i] for x in gt), w[:, j].T), fmt)
    hidden, unc = _settle(cert_h, lambda i, j, prec: eng.d_hidden(i, j, prec), fmt, base)
    uncertified += unc
    # d_weight = G^T h and d_bias = 1^T G: contraction over the tokens, in blocks of classes.
    wa, hs = fit(np.ascontiguousarray(h.T), t, fmt.p)
    step = max(1, CHUNK_ELEMENTS // max(d, 1))
    ones = split_rows([np.ones((1, t))], t, bits=1)
    cert_w = Certified(np.zeros((v, d)), np.zeros((v, d), dtype=np.int64), np.zeros((v, d)), np.zeros((v, d)),
                       np.zeros((v, d), dtype=bool))
    cert_b = Certified(np.zeros(v), np.zeros(v, dtype=np.int64), np.zeros(v), np.zeros(v), np.zeros(v, dtype=bool))
    for c0 in range(0, v, step):
        sl = slice(c0, min(v, c0 + step))
        a = split_rows([x[:, sl].T for x in g_parts], t, stop_w, g_extra[:, sl].T, bits=wa)
        hi, lo, err, _ = product(a, hs, t, double).unscaled()
        store_rows(cert_w, np.arange(sl.start, sl.stop), certify(hi, lo, err * _GROW, fmt))
        if inp.bias is not None:
            hi, lo, err, _ = product(ones, a, t, double).unscaled()
            store_rows(cert_b, np.arange(sl.start, sl.stop), certify(hi[0], lo[0], err[0] * _GROW, fmt))
    _retry(cert_w, lambda c, j: (*(x[:, c].T for x in gt), h[:, j].T), fmt)
    if inp.bias is not None:
        _retry(cert_b, lambda c, _j: (*(x[:, c].T for x in gt), np.ones((c.size, t))), fmt)
    weight, unc = _settle(cert_w, lambda c, j, prec: eng.d_weight(c, j, prec), fmt, base)
    uncertified += unc
    bias = None
    if inp.bias is not None:
        bias, unc = _settle(cert_b, lambda c, _j, prec: eng.d_weight(c, None, prec), fmt, base)
        uncertified += unc
    return LinearGradients(hidden, weight, bias, uncertified)


def _retry(c: Certified, rows, fmt: Format) -> None:
    """Recompute the unproven elements of ``c`` as double-double dot products sum_k G_k b_k
    (rows(i, j) gives, for index arrays i and j, G's hi, lo and bound and b, each (elements, K)),
    and keep those now proven. Blocks of elements keep the arrays near CHUNK_ELEMENTS."""
    flat = np.flatnonzero(~c.ok.reshape(-1))
    if not flat.size:
        return
    shape = c.rounded.shape
    at = np.unravel_index(flat, shape)
    i = at[0]
    j = at[1] if len(shape) == 2 else np.zeros(flat.size, dtype=np.int64)
    probe = rows(i[:1], j[:1])
    step = max(1, CHUNK_ELEMENTS // max(probe[0].shape[1], 1))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for s0 in range(0, flat.size, step):
            sl = slice(s0, s0 + step)
            gh, gl, ge, b = rows(i[sl], j[sl])
            ph, pl = dd.mul_fp(gh, gl, b)
            hi, lo, err = pairwise_sum(ph, pl)
            k = gh.shape[1]
            # Each product within U_DD, plus what an underflowing error term may lose.
            err = (err + (ge * np.abs(b)).sum(axis=1) + dd.U_DD * np.abs(ph).sum(axis=1) + k * 2.0**-1070)
            out = certify(hi, lo, _SAFETY * err * _GROW, fmt)
            out.ok &= np.isfinite(hi) & dd.in_range(hi)
            idx = tuple(a[sl][out.ok] for a in at)
            for name in ("rounded", "k", "hi", "lo", "ok"):
                getattr(c, name)[idx] = getattr(out, name)[out.ok]


def _settle(c: Certified, element, fmt: Format, base: int) -> tuple[OpReference, int]:
    """An OpReference from a fast result, each unproven element from the mpmath engine."""
    uncertified = 0
    flat_ok = c.ok.reshape(-1)
    shape = c.rounded.shape
    for pos in np.flatnonzero(~flat_ok).tolist():
        at = np.unravel_index(pos, shape)
        i, j = (int(at[0]), int(at[1])) if len(shape) == 2 else (int(at[0]), 0)
        entry, ok = certified(_at(element, i, j), fmt, base)
        c.rounded[at], c.k[at], c.hi[at], c.lo[at] = entry
        uncertified += 0 if ok else 1
    return OpReference(op="linear_cross_entropy_backward", rounded=c.rounded, k=c.k.astype(np.int32), hi=c.hi,
                       lo=c.lo, undefined=np.zeros(shape[0], dtype=bool)), uncertified


def _gradients_mp(eng: Engine, fmt: Format, base: int, has_bias: bool) -> LinearGradients:
    """Every gradient element from the mpmath engine."""
    t, d = eng.h.shape
    v = eng.w.shape[0]
    unc = 0

    def table(rows: int, cols: int, fn) -> list[list[Entry]]:
        nonlocal unc
        out = []
        for i in range(rows):
            row = []
            for j in range(cols):
                entry, ok = certified(_at(fn, i, j), fmt, base)
                row.append(entry)
                unc += 0 if ok else 1
            out.append(row)
        return out

    hidden = op_reference("linear_cross_entropy_backward", table(t, d, eng.d_hidden), (t, d))
    weight = op_reference("linear_cross_entropy_backward", table(v, d, eng.d_weight), (v, d))
    bias = None
    if has_bias:
        rows = table(v, 1, lambda c, _j, prec: eng.d_weight(c, None, prec))
        bias = op_reference("linear_cross_entropy_backward", [r for r in rows], (v,))
    return LinearGradients(hidden, weight, bias, unc)


# --------------------------------------------------------------------------
# Chosen elements from the pure mpmath engine


class MpmathElements:
    """Chosen reference elements of one case from the pure mpmath engine alone (exact logits from
    formats.exact_dot, no fast path), each certified through Ziv's loop: what the fast path's
    references are checked against where computing every element in mpmath would take too long.
    Each method returns (entry, proven); the entry is None where the reference says undefined."""

    def __init__(self, inp: LinearLossInputs, fmt: Format, dy: np.ndarray | None = None) -> None:
        """The engine for ``inp`` in ``fmt``; ``dy`` (as linear_loss_gradient_reference takes it) for gradients."""
        _check(inp, "mpmath")
        self.inp, self.fmt = inp, fmt
        self.status = _status(inp)
        self.g = [] if dy is None else upstream(inp, dy)
        self.eng = _engine(inp, fmt, None, self.g)
        self.base = base_precision(fmt, inp)
        self.n = int(np.count_nonzero(self.status != "ignored"))

    def loss(self, i: int) -> tuple[Entry, bool]:
        """Token i's loss (reduction none)."""
        if self.status[i] == "ignored":
            return Certifier(self.fmt).zero_entry, True
        return certified(_at(self.eng.loss_token, i), self.fmt, self.base)

    def loss_reduced(self, reduction: str) -> tuple[Entry | None, bool]:
        """The mean or the sum of the tokens' losses (every token's logits are computed)."""
        def redo(prec: int) -> list[Value | str]:
            return [self.eng.loss_token(i, prec) for i in range(self.inp.tokens)]

        if reduction == "mean" and self.n == 0:
            return None, True
        return _reduce(redo(self.base), Fraction(self.n if reduction == "mean" else 1), self.fmt, self.base, redo)

    def _undefined(self) -> bool:
        return (self.inp.reduction == "mean" and self.n == 0) or bool((self.status == "nan").any())

    def d_hidden(self, i: int, j: int) -> tuple[Entry | None, bool]:
        """d_hidden[i, j]."""
        if self._undefined():
            if self.n == 0 or self.status[i] == "nan":
                return None, True
            return Certifier(self.fmt).zero_entry, True
        return certified(_at(self.eng.d_hidden, i, j), self.fmt, self.base)

    def d_weight(self, c: int, j: int) -> tuple[Entry | None, bool]:
        """d_weight[c, j] (every token's logits are computed)."""
        if self._undefined():
            return None, True
        return certified(_at(self.eng.d_weight, c, j), self.fmt, self.base)

    def d_bias(self, c: int) -> tuple[Entry | None, bool]:
        """d_bias[c] (every token's logits are computed)."""
        if self._undefined():
            return None, True
        return certified(lambda prec: self.eng.d_weight(c, None, prec), self.fmt, self.base)


# --------------------------------------------------------------------------
# Envelope statistics


def linear_statistics(inp: LinearLossInputs) -> LinearStats:
    """Float64 per-token quantities the envelope needs (z', lse, p, sum |h w|); no proof rests on them."""
    h, w, b = _floats(inp)
    lg = _logits(inp)
    z = lg.hi
    if inp.softcap is not None:
        z = inp.softcap * np.tanh(z / inp.softcap)
    a = z.max(axis=1, keepdims=True)
    e = np.exp(z - a)
    s = e.sum(axis=1, keepdims=True)
    abs_dot = np.abs(h) @ np.abs(w).T + (0.0 if b is None else np.abs(b)[None, :])
    return LinearStats(logits=z, lse=(a + np.log(s))[:, 0], p=e / s, abs_dot=abs_dot,
                       ignored=np.asarray(inp.target) == inp.ignore_index)


__all__ = ["LinearGradients", "LinearStats", "MpmathElements", "exact_logits", "exact_logits_bound", "linear_loss_gradient_reference",
           "linear_loss_reference", "linear_statistics"]
