"""The diagnosis: ranked causes per candidate x op x direction with a FAIL or WARN.

``diagnose(records, candidate)`` reads the records (plain dicts of the results document),
groups them by candidate x op x direction, and for every group with a FAIL or WARN scores each
class of the catalogue (classes.py) from the pattern of its records (evidence.py). Where the
records leave two classes open, it runs a small experiment (experiments.py) through the public
``softaudit.audit`` API and lets it decide; the cause says which experiment settled it. Nothing
keys on the candidate's file or function names. A group whose failures match no class gets one
``no-known-cause`` with its worst records; a group without failures gets no diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from softaudit.diagnosis import experiments as X
from softaudit.diagnosis.classes import NO_KNOWN_CAUSE
from softaudit.diagnosis.evidence import EXP_OVERFLOW, SIXTEEN_BIT, RecordView, group_records, worst_first
from softaudit.diagnosis.grouping import MAX_EVIDENCE, Group, fraction, make_cause, run_info
from softaudit.diagnosis.linear import LINEAR_RULES
from softaudit.ops import LINEAR_CROSS_ENTROPY
from softaudit.results.diagnoses import Cause, Diagnosis, ExperimentRun

MIN_CONFIDENCE = 0.3
"""Causes below this confidence are not reported."""

_Group = Group
_cause = make_cause
_run_info = run_info
_fraction = fraction

Rule = Callable[[Group], "Cause | list[Cause] | None"]
RULES: list[Rule] = []
"""The softmax family's rules; linear_cross_entropy's are linear.LINEAR_RULES."""


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


# --- records alone ----------------------------------------------------------------------------

@rule
def _input_mutation(g: _Group) -> Cause | None:
    hit = [v for v in g.failing if v.input_modified]
    if not hit:
        return None
    return _cause("input-mutation", 0.99, f"the input was modified in {len(hit)} record(s)", hit,
                  settled_by="records (input_modified)")


@rule
def _undefined_policy(g: _Group) -> Cause | None:
    hit = [v for v in g.failing if v.undefined_only]
    if not hit:
        return None
    share = _fraction(len(hit), len(g.failing))
    return _cause("undefined-row-policy", 0.35 + 0.6 * share,
                  f"{len(hit)} of {len(g.failing)} failing record(s) differ only on undefined rows", hit,
                  settled_by="records (undefined rows; defined elements within the envelope)")


@rule
def _nan_swallowed(g: _Group) -> Cause | None:
    hit = g.fails(lambda v: v.nan > 0 and v.kind("nan->") > 0)
    if not hit:
        return None
    conf, runs, settled = 0.8, [], None
    res = g.run(X.nan_at_max, g.dtype_for(hit))
    if res is not None:
        r = res.records.get("nan") or {}
        swallowed = any(k.startswith("nan->") for k in (r.get("mismatch_kinds") or {}))
        runs.append(_run_info(res, "NaN at the max gave finite values" if swallowed else "NaN propagated"))
        if swallowed:
            conf, settled = 0.97, "nan-at-max"
        else:
            conf = 0.5
    return _cause("nan-swallowed", conf, f"finite output where the exact value is NaN in {len(hit)} record(s)",
                  hit, runs, settled or "records (nan->finite)")


@rule
def _zero_times_neginf(g: _Group) -> Cause | None:
    if g.op != "cross_entropy":
        return None
    hit = g.fails(lambda v: v.params.get("target_kind") == "probability" and v.neg_inf > 0
                  and v.kind("finite->nan") > 0)
    if not hit:
        return None
    clean = g.passes(lambda v: v.params.get("target_kind") == "probability" and v.neg_inf == 0)
    return _cause("zero-times-neginf", 0.9 if clean else 0.8,
                  "NaN loss with probability targets against -inf logits"
                  + (f"; {len(clean)} unmasked probability-target record(s) pass" if clean else ""),
                  hit, settled_by="records (probability targets, masked logits)")


@rule
def _gradient_rounded_early(g: _Group) -> Cause | None:
    if g.direction != "backward":
        return None
    hits: dict[str, list[RecordView]] = {}
    for v in g.failing:
        if v.hard or v.dtype == "bfloat16":
            continue
        own = v.error_in(v.dtype)
        if own is None or own < 16:
            continue
        for lower in ("bfloat16", "float16"):
            if lower == v.dtype:
                continue
            e = v.error_in(lower)
            if e is not None and 0.1 <= e <= 1.5:
                hits.setdefault(lower, []).append(v)
                break
    if not hits:
        return None
    lower, hit = max(hits.items(), key=lambda kv: len(kv[1]))
    share = _fraction(len(hit), len([v for v in g.failing if v.dtype != lower]))
    return _cause("gradient-rounded-early", 0.2 + 0.7 * share,
                  f"the gradient's error is within ~1 ulp of {lower} in {len(hit)} record(s)", hit,
                  settled_by=f"gradient error measured in {lower} ulps (records)")


@rule
def _downcast(g: _Group) -> Cause | None:
    f64 = g.fails(lambda v: v.dtype == "float64" and not v.hard)
    if not f64:
        return None
    twins_ok = {v.case for v in g.passes(lambda v: v.dtype == "float32")}
    near = [v for v in f64 if 0.05 <= (v.error_in("float32") or math.inf) <= 4 and (v.error_in("float64") or 0) > 1e3
            and (v.max_ratio or 0) > 100]
    twin = [v for v in f64 if v.case in twins_ok and (v.max_ratio or 0) > 100]   # fine in float32, not in float64
    if not near:
        return None
    f32_ok = g.passes(lambda v: v.dtype == "float32")
    f32_bad = g.fails(lambda v: v.dtype == "float32")
    share = _fraction(len(set(map(id, near)) | set(map(id, twin))), len(f64))
    conf = 0.35 + 0.6 * share - (0.3 if len(f32_bad) > len(f32_ok) else 0.0)
    return _cause("downcast-working-precision", conf,
                  f"float64 errors are within 4 float32 ulps in {len(near)} record(s)"
                  f"; float32 passes {len(f32_ok)} record(s)", near,
                  settled_by="error measured in float32 ulps (records)")


@rule
def _smoothing(g: _Group) -> Cause | None:
    if g.op != "cross_entropy":
        return None
    hit = g.fails(lambda v: float(v.params.get("label_smoothing") or 0) > 0 and not v.kind("finite->nan"))
    if not hit:
        return None
    plain = g.passes(lambda v: float(v.params.get("label_smoothing") or 0) == 0 and v.params.get("reduction") == "none")
    conf, runs, settled = 0.45 + (0.15 if plain else 0.0), [], None
    res = g.run(X.smoothing, g.dtype_for(hit))
    if res is not None:
        a, b, c = res.failed("eps-0.3"), res.failed("eps-0"), res.failed("eps-0.1-finfo-min")
        runs.append(_run_info(res, f"eps 0.3 {'fails' if a else 'passes'}, eps 0.1 over finfo.min logits "
                                   f"{'fails' if c else 'passes'}, eps 0 {'fails' if b else 'passes'}"))
        if c and a is False and not b:  # only the masked rows fail: the sum overflows, eps is right
            return _cause("smoothing-sum-overflow", 0.92, f"{len(hit)} smoothed record(s) fail; smoothing "
                          "alone passes, over finfo.min-masked logits it fails", hit, runs, "smoothing")
        if a and not b:
            conf, settled = 0.92, "smoothing"
        elif a is False and not c:
            conf = 0.2
    return _cause("smoothing-normalisation", conf, f"{len(hit)} smoothed record(s) fail"
                  + (f", {len(plain)} unsmoothed pass" if plain else ""), hit, runs, settled or "records")


@rule
def _ignored_mean(g: _Group) -> Cause | None:
    if g.op != "cross_entropy":
        return None
    hit = g.fails(lambda v: v.params.get("reduction") == "mean" and not v.hard)
    if not hit:
        return None
    conf, runs, settled = 0.4, [], None
    res = g.run(X.ignored_mean, g.dtype_for(hit))
    if res is not None:
        a, b = res.failed("mean"), res.failed("none")
        runs.append(_run_info(res, f"mean {'fails' if a else 'passes'}, none {'fails' if b else 'passes'}"))
        if a and not b:
            conf, settled = 0.9, "ignored-mean"
        elif a is False:
            conf = 0.1
    return _cause("ignored-rows-in-mean", conf, f"{len(hit)} record(s) with reduction mean fail", hit, runs,
                  settled or "records")


# --- overflow and shifts ----------------------------------------------------------------------

def _overflowish(v: RecordView) -> bool:
    """A hard failure on a row with nothing special in it (no -inf, no NaN) and a large magnitude."""
    return (v.neg_inf == 0 and v.nan == 0 and v.kind("finite->") > 0
            and (v.offset >= 9.0 or v.family in ("offsets", "dynamic-range", "seed-examples")))


@rule
def _shift(g: _Group) -> list[Cause] | None:
    hit = g.fails(_overflowish)
    if not hit or g.op == "cross_entropy" and all(v.params.get("target_kind") == "probability" for v in hit):
        return None
    dtype = g.dtype_for(hit)
    runs: list[ExperimentRun] = []
    no_shift, fixed, settled = 0.6, 0.35, None
    finding = f"NaN/inf on finite inputs with large magnitudes in {len(hit)} record(s)"
    res = g.run(X.offset_ladder, dtype)
    if res is not None:
        first_fail = last_pass = None
        for o in X.LADDER:
            r = res.ratio(f"off-{o:g}")
            if r == math.inf:
                first_fail = o
                break
            if r is not None:
                last_pass = o
        if first_fail is None:
            runs.append(_run_info(res, "no hard failure up to offset 1000"))
            no_shift, fixed = 0.2, 0.15
        else:
            at_limit = [name for name, lim in (("float16", EXP_OVERFLOW["float16"]), ("float32", EXP_OVERFLOW["float32"]),
                                               ("float64", EXP_OVERFLOW["float64"]))
                        if (last_pass is None or last_pass + 0.3 < lim) and first_fail + 0.3 > lim - math.log(X.LADDER_N)]
            if at_limit:
                runs.append(_run_info(res, f"first failure at offset {first_fail:g} (last pass {last_pass}): "
                                           f"exp's {at_limit[0]} overflow"))
                no_shift, fixed, settled = 0.95, 0.1, "offset-ladder"
                finding += f"; overflow starts at exp's {at_limit[0]} limit"
            else:
                lim = max((v for v in EXP_OVERFLOW.values() if v < first_fail), default=0.0)
                runs.append(_run_info(res, f"first failure at offset {first_fail:g} (last pass {last_pass}): "
                                           f"not at exp's limit (shift ~{first_fail - lim:.0f}?)"))
                no_shift, fixed, settled = 0.15, 0.92, "offset-ladder"
                finding += f"; overflow starts at offset {first_fail:g}, not at exp's limit"
    return [_cause("no-max-shift", no_shift, finding, hit, runs, settled or "records"),
            _cause("fixed-shift", fixed, finding, hit, runs, settled or "records")]


# --- absorption ------------------------------------------------------------------------------

@rule
def _absorbed(g: _Group) -> Cause | None:
    if g.direction != "forward" or g.op not in ("log_softmax", "cross_entropy", "softmax"):
        return None
    hit = g.fails(lambda v: not v.hard and v.offset >= 500 and v.neg_inf == 0 and v.family in (
        "offsets", "seed-examples", "cross-entropy", "dynamic-range"))
    if not hit:
        return None
    small = g.passes(lambda v: v.offset < 100 and v.neg_inf == 0 and v.nan == 0)
    cls = "division-free-on-offsets" if g.op == "softmax" else "absorbed-log-sum"
    # float64 alone failing on offsets while float32 passes them is the float32 working format's doing
    only_f64 = all(v.dtype == "float64" for v in hit) and bool(g.passes(lambda v: v.dtype == "float32" and v.offset >= 500))
    conf, runs, settled = (0.55 + (0.1 if small else 0.0)) * (0.5 if only_f64 else 1.0), [], None
    dtype = g.dtype_for(hit)
    res = g.run(X.shift_invariance, dtype)
    if res is not None:
        r = [res.ratio(f"shift-{i}") for i in range(3)]
        runs.append(_run_info(res, "ratios " + ", ".join("-" if x is None else f"{x:.3g}" for x in r)))
        if r[0] is not None and r[2] is not None and r[2] != math.inf:
            if r[2] > 4 and r[1] is not None and r[2] > 20 * max(r[1], 0.05) and r[2] > 20 * max(r[0], 0.05):
                conf, settled = 0.93 if not only_f64 else 0.6, "shift-invariance"
            elif r[2] <= 4:
                conf = 0.2
    return _cause(cls, conf, f"finite errors that grow with the offset in {len(hit)} record(s)", hit, runs,
                  settled or "records")


# --- far below the max: -inf, saturation -----------------------------------------------------

@rule
def _far_below(g: _Group) -> list[Cause] | None:
    if g.direction != "forward":
        return None
    logop = g.op in ("log_softmax", "cross_entropy")
    neg = g.fails(lambda v: v.neg_inf == 0 and v.nan == 0 and (v.range or 0) > 9 and v.n > 1
                  and v.kind("finite->-inf", "finite->+inf") > 0) if logop else []
    sat = []
    for v in g.failing:
        if v.hard or v.nan or (logop and v.neg_inf):
            continue
        w = v.worst_values()
        if w is None:
            continue
        c, e = w
        if logop and c - e > 0.5 and e < -5:
            sat.append(v)
        if not logop and g.op == "softmax" and c > 0 and (e <= 0 or c > 2 * e) and ((v.range or 0) > 9 or v.neg_inf):
            sat.append(v)
    if logop:  # finite where the exact value is infinite: a floor under the log
        sat += [v for v in g.failing if v not in sat and v.kind("-inf->finite", "+inf->finite") > 0]
    if not neg and not sat:
        return None
    out: list[Cause] = []
    runs: list[ExperimentRun] = []
    res = g.run(X.gap_ladder, g.dtype_for(neg or sat))
    saturated = minus_inf = False
    if res is not None:
        vals = [(gp, res.worst(f"gap-{gp:g}"), res.records.get(f"gap-{gp:g}") or {}) for gp in X.GAPS]
        minus_inf = any(any(k.startswith("finite->") and ("inf" in k) for k in (r.get("mismatch_kinds") or {}))
                        for _, _, r in vals)
        tail = [w for _, w, r in vals if w is not None and r.get("verdict") in ("FAIL", "WARN")
                and math.isfinite(w[0]) and w[0] != 0][-3:]
        if len(tail) >= 2:
            comp = [c for c, _ in tail]
            lo, hi = min(comp), max(comp)
            ex = [e for _, e in tail]
            if logop:
                saturated = hi - lo <= 1e-3 * max(abs(hi), abs(lo)) and max(ex) - min(ex) > 1
            else:
                saturated = lo > 0 and hi / lo < 1.01 and (min(ex) <= 0 or max(ex) / min(ex) > 10)
        runs.append(_run_info(res, "-inf/+inf far below the max" if minus_inf else
                              ("the far value saturates at a constant" if saturated else "no saturation")))
    if neg:
        conf = 0.7 if res is None else (0.95 if minus_inf else 0.25)
        out.append(_cause("log-of-softmax", conf, f"log-probabilities of -inf (loss +inf) for scores far below "
                          f"the max in {len(neg)} record(s)", neg, runs,
                          "gap-ladder" if minus_inf else "records"))
    if sat:
        cls = "eps-in-log" if logop else "exp-clamp"
        conf = 0.6 if res is None else (0.93 if saturated else 0.35)
        out.append(_cause(cls, conf, f"{'log-probabilities' if logop else 'probabilities'} too large far below "
                          f"the max in {len(sat)} record(s)", sat, runs, "gap-ladder" if saturated else "records"))
    return out


# --- masking -------------------------------------------------------------------------------------

@rule
def _masked_nan(g: _Group) -> list[Cause] | None:
    hit = g.fails(lambda v: v.neg_inf > 0 and v.nan == 0 and v.kind("finite->nan", "-inf->nan") > 0)
    inf_rows = g.fails(lambda v: v.kind("+inf->nan") > 0 and v.nan == 0)
    if g.op == "cross_entropy":
        hit = [v for v in hit if v.params.get("target_kind") != "probability"]
    if not hit and not inf_rows:
        return None
    partial = [v for v in hit if v.kind("finite->nan") > 0]
    runs: list[ExperimentRun] = []
    online, unguarded, settled = (0.6 if partial else 0.35), (0.3 if partial else 0.6), None
    res = g.run(X.first_tile_masked, g.dtype_for(hit or inf_rows))
    if res is not None:
        lf, sf = res.ratio("long-prefix"), res.ratio("short-prefix")
        runs.append(_run_info(res, f"long masked prefix {'NaN/inf' if lf == math.inf else 'fine'}, "
                                   f"short prefix {'NaN/inf' if sf == math.inf else 'fine'}"))
        if lf == math.inf and sf != math.inf:
            online, unguarded, settled = 0.95, 0.2, "first-tile-masked"
        elif lf != math.inf:
            online = 0.1
            unguarded = 0.85 if (inf_rows or any(v.kind("-inf->nan") for v in hit)) else 0.3
            settled = "first-tile-masked"
    ev = hit + inf_rows
    return [_cause("online-rescale-from-neginf", online, f"NaN on masked rows in {len(hit)} record(s)", ev, runs,
                   settled or "records"),
            _cause("unguarded-infinite-max", unguarded, f"NaN where the exact value is ±inf in "
                   f"{len(ev)} record(s)", ev, runs, settled or "records")]


# --- summation -------------------------------------------------------------------------------

@rule
def _summation(g: _Group) -> list[Cause] | None:
    long_fail = g.fails(lambda v: v.n >= 512 and v.neg_inf == 0 and v.nan == 0 and v.offset < 100)
    if not long_fail:
        return None
    out: list[Cause] = []
    sixteen = [v for v in long_fail if v.dtype in SIXTEEN_BIT]
    wide = [v for v in long_fail if v.dtype not in SIXTEEN_BIT]
    overflow = [v for v in sixteen if v.dtype == "float16" and v.n >= 65536]
    low = [v for v in sixteen if v not in overflow]
    if overflow:
        bf_ok = g.passes(lambda v: v.dtype == "bfloat16" and v.n >= 65536)
        conf, runs, settled = 0.6 + (0.15 if bf_ok else 0.0), [], None
        res = g.run(X.sum_overflow, "float16")
        if res is not None:
            runs.append(_run_info(res, f"49152 zeros {'fail' if res.failed('zeros-49152') else 'pass'}, "
                                       f"98304 zeros {'fail' if res.failed('zeros-98304') else 'pass'}"))
            if res.failed("zeros-98304") and not res.failed("zeros-49152"):
                conf, settled = 0.93, "sum-overflow"
            elif not res.failed("zeros-98304"):
                conf = 0.25
        out.append(_cause("denominator-overflow-16bit", conf, f"float16 rows of n >= 65536 fail in {len(overflow)} "
                          f"record(s)" + (f"; bfloat16 passes {len(bf_ok)}" if bf_ok else ""), overflow, runs,
                          settled or "records"))
    for cls, views in (("low-precision-accumulation", low), ("sequential-summation", wide)):
        if not views:
            continue
        kinds = {v.dtype for v in views}
        short_ok = [v for v in g.views if v.passing and v.dtype in kinds and v.n <= 128]
        conf, runs, settled = 0.45 + (0.1 if short_ok else 0.0), [], None
        dtype = g.dtype_for(views, ("bfloat16", "float16") if cls == "low-precision-accumulation"
                            else ("float32", "float64"))
        res = g.run(X.length_scaling, dtype)
        if res is not None:
            r: list[tuple[int, float]] = []
            for n in X.LENGTHS:
                x = res.ratio(f"len-{n}")
                if x is not None:
                    r.append((n, x))
            runs.append(_run_info(res, "ratios by n: " + ", ".join(f"{n}:{x:.3g}" for n, x in r)))
            fin = [(n, x) for n, x in r if math.isfinite(x)]
            first_bad = next((n for n, x in r if x > 1), None)
            by_n = dict(fin)
            if cls == "sequential-summation" and 1024 in by_n and 65536 in by_n:
                x0, x1 = by_n[1024], by_n[65536]
                if x1 > 1 and x1 > 3 * max(x0, 0.05):   # growing with n (a pairwise sum's error barely does)
                    conf, settled = 0.9, "length-scaling"
                elif x1 <= 1 or x1 < 1.5 * x0:
                    conf = 0.25
            if cls == "low-precision-accumulation":
                if first_bad is not None and first_bad <= 4096:
                    conf, settled = 0.9, "length-scaling"
                elif first_bad is None:
                    conf = 0.25
        out.append(_cause(cls, conf, f"long rows fail in {len(views)} {'16-bit' if cls[0] == 'l' else 'float32/64'} "
                          f"record(s)" + ("; short rows pass" if short_ok else ""), views, runs, settled or "records"))
    return out


# --- exp accuracy ----------------------------------------------------------------------------

@rule
def _approx_exp(g: _Group) -> Cause | None:
    plain = g.fails(lambda v: not v.hard and v.n <= 1024 and v.neg_inf == 0 and v.nan == 0 and v.dtype == "float32")
    if not plain or g.op == "cross_entropy":
        return None
    dtype = g.dtype_for(plain)
    conf, runs, settled = 0.25, [], None   # soft float32 failures alone say little: the experiment decides
    res = g.run(X.exp_accuracy, dtype)
    if res is not None:
        r = res.ratio("ramp")
        w = res.worst("ramp")
        rel = abs(w[0] - w[1]) / abs(w[1]) if w and w[1] else None
        runs.append(_run_info(res, f"ratio {r if r is None else f'{r:.3g}'} on rows of 8 at offset 0"
                                   + (f", relative error {rel:.2g}" if rel is not None else "")))
        if r is not None and r != math.inf and r > 1 and rel is not None and 2 ** -26 < rel < 2 ** -12:
            conf, settled = 0.85, "exp-accuracy"
        else:
            conf = 0.15
    return _cause("approximate-exp", conf, f"ordinary short rows at small offsets fail in {len(plain)} {dtype} "
                  f"record(s)", plain, runs, settled or "records")


# --------------------------------------------------------------------------------------------

SHARED_RULES: tuple[Rule, ...] = (_input_mutation, _downcast)
"""The softmax family's rules that read nothing of its own: applied to linear_cross_entropy too."""

SUBSUMES: dict[str, tuple[str, ...]] = {
    # a settled cause whose symptoms include another class's: the other is its consequence
    "eps-in-log": ("sequential-summation", "approximate-exp", "absorbed-log-sum", "downcast-working-precision"),
    "exp-clamp": ("sequential-summation", "approximate-exp"),
    "downcast-working-precision": ("sequential-summation", "absorbed-log-sum", "division-free-on-offsets",
                                   "approximate-exp"),
    "no-max-shift": ("approximate-exp", "absorbed-log-sum", "division-free-on-offsets"),
    "fixed-shift": ("approximate-exp", "absorbed-log-sum", "division-free-on-offsets"),
    "log-of-softmax": ("eps-in-log",),
    "low-precision-accumulation": ("denominator-overflow-16bit",),
    "logits-rounded-16bit": ("weight-gradient-16bit-accumulation",),
}


def _subsume(causes: list[Cause]) -> None:
    strong = {c.class_id for c in causes if c.confidence >= 0.85}
    for c in causes:
        if any(c.class_id in SUBSUMES.get(s, ()) for s in strong if s != c.class_id):
            c.confidence *= 0.5


def _diagnose_group(views: list[RecordView], subject: X.Subject | None, runner: X.Runner | None) -> Diagnosis | None:
    g = _Group(views, subject, runner)
    if not g.failing:
        return None
    causes: list[Cause] = []
    for r in ((*LINEAR_RULES, *SHARED_RULES) if g.op == LINEAR_CROSS_ENTROPY else RULES):
        got = r(g)
        if got is None:
            continue
        causes.extend(got if isinstance(got, list) else [got])
    _subsume(causes)
    best: dict[str, Cause] = {}
    for c in causes:
        if c.confidence >= MIN_CONFIDENCE and (c.class_id not in best or c.confidence > best[c.class_id].confidence):
            best[c.class_id] = c
    ranked = sorted(best.values(), key=lambda c: -c.confidence)
    if not ranked:
        worst = worst_first(g.failing)
        first = worst[0]
        reason = (first.raw.get("reasons") or [""])[0]
        ranked = [_cause(NO_KNOWN_CAUSE, 0.0, f"worst: {first.id}: {reason}"[:300], worst)]
    verdict = "FAIL" if any(v.verdict == "FAIL" for v in g.failing) else "WARN"
    return Diagnosis(views[0].candidate, g.op, g.direction, verdict, len(g.failing), ranked,
                     {(v.dtype, v.case): v.id for v in worst_first(g.failing)})


def diagnose(records: Iterable[Mapping[str, Any]], candidate: X.Subject | str | None = None, *,
             run_experiment: X.Runner | str | None = "default", cache_dir: str | None = None) -> list[Diagnosis]:
    """Ranked causes for every candidate x op x direction with a FAIL or WARN.

    ``records`` are result records as plain dicts (``json.load(...)["results"]``, or
    ``[r.to_dict() ...]``). ``candidate`` names the candidate to diagnose (a ``Subject``, which
    also says how to re-run it, or a name; None: every candidate in the records).
    ``run_experiment`` runs an experiment on the candidate: ``"default"`` uses
    ``softaudit.audit`` on the imported candidate (experiments.AuditRunner), None diagnoses from
    the records alone, or pass your own callable ``(subject, experiment) -> ExperimentResult``.
    """
    subject = X.Subject(candidate) if isinstance(candidate, str) else candidate
    runner: X.Runner | None
    if run_experiment == "default":
        runner = X.AuditRunner(cache_dir=cache_dir) if subject is not None and (subject.target or subject.impl) else None
    else:
        runner = run_experiment if callable(run_experiment) else None
    records = list(records)
    groups = group_records(records)
    names = {k[0] for k in groups}
    out: list[Diagnosis] = []
    for (cand, _op, _dir), views in groups.items():
        if subject is not None and cand != subject.name and len(names) > 1:
            continue
        d = _diagnose_group(views, subject, runner)
        if d is not None:
            out.append(d)
    _inherit_forward(out)
    return out


def _inherit_forward(diags: list[Diagnosis]) -> None:
    """A gradient failing on the same cases and formats as its forward: autograd carried the forward's bug."""
    forward = {(d.candidate, d.op): d for d in diags if d.direction == "forward"}
    # (a forward cause at >= 0.85 also joins a backward group that has causes of its own, at 0.9x)
    for d in diags:
        f = forward.get((d.candidate, d.op))
        if d.direction != "backward" or f is None or not f.causes:
            continue
        top = f.causes[0]
        unknown = d.causes[0].class_id == NO_KNOWN_CAUSE
        if top.class_id == NO_KNOWN_CAUSE or not (unknown or top.confidence >= 0.85):
            continue
        c = _cause(top.class_id, (0.6 if unknown else 0.9) * top.confidence, f"the forward's cause, carried into "
                   f"the gradient ({top.finding})", [], top.experiments, f"forward diagnosis ({top.settled_by})")
        shared = [rid for key, rid in d.failing.items() if key in f.failing]
        if len(shared) < 0.5 * len(d.failing):   # the gradient fails elsewhere: not the forward's doing
            continue
        c.evidence = shared[:MAX_EVIDENCE]
        if any(x.class_id == c.class_id and x.confidence >= c.confidence for x in d.causes):
            continue
        rest = [x for x in d.causes if x.class_id not in (c.class_id, NO_KNOWN_CAUSE)]
        d.causes = sorted([c] + rest, key=lambda x: -x.confidence)
