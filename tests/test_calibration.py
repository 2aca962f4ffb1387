"""Calibration of the envelope and the default gate (docs/calibration.md).

The textbook-stable built-ins must PASS with margin, the known-bad algorithms
in tests/calibration/ must FAIL on the cases that target them, and torch must
FAIL exactly where it is genuinely wrong. The default run uses a subset of
small cases; `--runslow` runs the whole shipped library (CI does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from softaudit.formats import FORMATS
from softaudit.judging.verdicts import FAIL, PASS, SKIP
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.loop import run_audit

CALIBRATION = Path(__file__).parent / "calibration"
REPO = Path(__file__).resolve().parents[1]

SMALL_CASES = [
    "offset-plus-1e5", "offset-minus-1e5", "offset-plus-1e4", "offset-minus-1e7", "seed-*",
    "gap-88.7", "gap-11.09", "exp-overflow-float16", "mask-prefix", "mask-fully-masked-rows",
    "mask-finfo-min-add-causal", "mask-nan-in-fully-masked-row", "posinf-one", "nan-one-row", "zeros",
    "ties-two", "confident-0.9", "n1-*", "n513-rows", "near-uniform-4096",
]


def _audit(target: str, cases=SMALL_CASES, formats=None, ops=()) -> list:
    opts = AuditOptions(case_patterns=cases, formats=[FORMATS[f] for f in formats] if formats else [], ops=ops,
                        worker=WorkerOptions(isolated=False))  # in this process: calibration is not about isolation
    return run_audit([target], opts).records


def _judged(records):
    return [r for r in records if r.verdict != SKIP]


def _max(records, field="max_ratio"):
    """Largest figure over records that have one (a row of NaN in, NaN out has none)."""
    return max(getattr(r.metrics, field) for r in records
               if r.metrics is not None and getattr(r.metrics, field) is not None)


@pytest.mark.parametrize("target", ["builtin:shifted", "builtin:shifted-f64", "examples/seed_numpy.py"])
def test_textbook_stable_implementations_pass_with_margin(target):
    if target.endswith(".py"):  # from this checkout, wherever pytest runs from
        target = str(REPO / target)
    records = _judged(_audit(target))
    assert records
    bad = [(r.id, r.reasons) for r in records if r.verdict != PASS]
    assert not bad
    worst = _max(records)
    assert worst <= 1.0, worst  # the limit is 4: margin of 4x at least


def test_float64_rounded_once_stays_well_under_the_envelope():
    # Forward records only: a gradient computed from a y already rounded into the format is not
    # rounded once.
    records = [r for r in _judged(_audit("builtin:shifted-f64")) if r.direction == "forward"]
    assert _max([r for r in records if r.dtype != "float64"]) <= 0.51
    # softmax and logsumexp come out correctly rounded in 16-bit formats; log_softmax
    # need not: log(s) in float64 loses s - 1 < 2^-53, which bfloat16 can still show
    # near 0 (an absolute error the envelope allows).
    assert _max([r for r in records if r.dtype in ("float16", "bfloat16") and r.op != "log_softmax"],
                "max_ulp") <= 0.5 + 1e-6


def test_naive_fails_offsets_and_dynamic_range_but_passes_tame_rows():
    records = [r for r in _judged(_audit("builtin:naive")) if r.direction == "forward"]
    by_case = {}
    for r in records:
        by_case.setdefault(r.family, []).append(r.verdict)
    assert all(v == FAIL for v in by_case["offsets"])
    assert FAIL in by_case["dynamic-range"]
    tame = [r for r in records if r.case in ("zeros", "ties-two", "confident-0.9")]
    assert tame and all(r.verdict != FAIL for r in tame)


@pytest.mark.parametrize("module, cases, formats", [
    ("fixed_shift.py", ["offset-plus-1e4", "offset-minus-1e5"], ["float32"]),
    ("absorbed.py", ["offset-plus-1e5", "offset-minus-1e7"], ["float32", "float64"]),
    ("accumulate16.py", ["long-zeros-65536", "long-normal-4096", "near-uniform-4096"], ["float16", "bfloat16"]),
])
def test_known_bad_algorithms_fail_the_cases_that_target_them(module, cases, formats):
    records = _judged(_audit(str(CALIBRATION / module), cases, formats))
    assert records
    failing = {(r.case, r.dtype) for r in records if r.verdict == FAIL}
    for case in cases:
        for fmt in formats:
            if any(r.case == case and r.dtype == fmt for r in records):
                assert (case, fmt) in failing, (module, case, fmt)
    # Failing by far, not by a hair: on every targeted case, some op has a hard
    # failure or a ratio of 10 or more (docs/calibration.md#why-the-limit-is-4: known-bad ones reach >= 10).
    for case in {c for c, _ in failing}:
        worst = [r for r in records if r.case == case and r.verdict == FAIL]
        assert any(r.metrics is not None and (r.metrics.class_mismatches or (r.metrics.max_ratio or 0.0) >= 10)
                   for r in worst), (module, case)


def test_torch_float16_overflow_over_65536_zeros_is_a_fail_explained_in_one_sentence():
    records = _audit("builtin:torch", ["long-zeros-65536"], ["float16"])
    verdicts = {r.op: r for r in records if r.direction == "forward"}
    assert verdicts["softmax"].verdict == PASS
    for op in ("logsumexp", "log_softmax"):
        rec = verdicts[op]
        assert rec.verdict == FAIL
        assert rec.metrics.class_mismatches == rec.metrics.elements
        reason = rec.reasons[0]
        assert "where the exact value is finite" in reason and "\n" not in reason
        assert "exact -11.090354888959125" in reason or "exact 11.090354888959125" in reason


TORCH_SUMMATION_BY_A_HAIR = {("confident-0.9", "float64", "softmax"), ("confident-0.9", "float64", "log_softmax")}
"""Where torch's own float64 summation exceeds the envelope on some machines, by a hair: its
vectorised sum adds the 999 near-equal terms of a row sequentially within each SIMD lane, so its
error grows like (n / lanes) u. On an AVX2 build (4 lanes) the ratio is 4.07-4.16; on AVX-512
machines it stays below 4. A genuine inaccuracy of torch, not of the envelope: a pairwise sum
passes (builtin:shifted, whose numpy sum is pairwise, reaches ratios 0.40 and 0.55 there)."""


def test_torch_passes_where_it_is_right():
    records = _judged(_audit("builtin:torch"))
    bad = [(r.id, r.reasons[0]) for r in records if r.verdict == FAIL
           and not ((r.case, r.dtype, r.op) in TORCH_SUMMATION_BY_A_HAIR and r.direction == "forward"
                    and r.metrics is not None and not r.metrics.class_mismatches and r.metrics.max_ratio < 5)]
    assert not bad


# --------------------------------------------------------------------------
# Cross-entropy and gradients

CE_CASES = ["confident-0.99", "confident-1-minus-2-23", "ce-smoothing-0.1-ignore-none", "ce-smoothing-0.9-ignore-mean",
            "ce-ignore-padding-mean", "ce-prob-random", "ce-prob-masked", "ce-target-min-wide-spread",
            "ce-all-ignored-mean", "mask-prefix", "offset-plus-1e4"]


@pytest.mark.parametrize("target", ["builtin:shifted", "builtin:shifted-f64"])
def test_textbook_cross_entropy_and_its_gradient_pass_with_margin(target):
    records = _judged(_audit(target, CE_CASES, ["float32", "bfloat16"], ops=["cross_entropy"]))
    assert {r.direction for r in records} == {"forward", "backward"}
    assert not [(r.id, r.reasons) for r in records if r.verdict != PASS]
    assert _max(records) <= 1.0


def test_label_smoothing_with_a_wrong_uniform_term_fails():
    records = _judged(_audit(str(CALIBRATION / "smoothing_wrong_uniform.py"), CE_CASES, ["float32"]))
    verdict = {r.case: r.verdict for r in records}
    assert verdict["ce-smoothing-0.1-ignore-none"] == FAIL and verdict["ce-smoothing-0.9-ignore-mean"] == FAIL
    assert verdict["confident-0.99"] == PASS  # no smoothing: the same loss as torch's
    worst = max(r.metrics.max_ratio for r in records if r.case.startswith("ce-smoothing"))
    assert worst >= 1000  # wrong, not imprecise


def test_a_mean_that_counts_ignored_rows_fails():
    records = _judged(_audit(str(CALIBRATION / "mean_counts_ignored.py"), CE_CASES, ["float32"]))
    verdict = {r.case: r for r in records}
    padded = verdict["ce-ignore-padding-mean"]
    assert padded.verdict == FAIL and padded.metrics.max_ratio >= 1000
    assert padded.parameters["reduction"] == "mean" and padded.parameters["ignore_index"] == -100
    assert verdict["confident-0.99"].verdict == PASS  # per-row losses are right


def test_a_gradient_rounded_to_bfloat16_before_the_one_hot_fails_on_confident_rows():
    cases = ["confident-0.9", "confident-0.99", "confident-0.999", "confident-1-minus-2-23"]
    # float32 and float64 inputs: in float16 the envelope of a float16 computation (u = 2^-11,
    # times log2 n + 5) is already as wide as bfloat16's rounding of p.
    records = _judged(_audit(str(CALIBRATION / "grad_bf16_before_onehot.py"), cases, ["float32", "float64"]))
    forward = [r for r in records if r.direction == "forward"]
    backward = [r for r in records if r.direction == "backward"]
    assert forward and all(r.verdict == PASS for r in forward)
    assert len(backward) == 8
    assert all(r.verdict == FAIL and r.metrics.max_ratio >= 10 for r in backward), \
        [(r.id, r.metrics.max_ratio) for r in backward]


# --------------------------------------------------------------------------
# The whole shipped library (CI runs these with --runslow).


@pytest.mark.slow
@pytest.mark.parametrize("target", ["builtin:shifted", "builtin:shifted-f64"])
def test_full_library_textbook_implementations_pass(target):
    records = _judged(_audit(target, cases=()))
    bad = [(r.id, r.reasons) for r in records if r.verdict != PASS]
    assert not bad
    assert _max(records) <= 1.0


@pytest.mark.slow
def test_full_library_torch_fails_only_where_genuinely_wrong():
    records = _judged(_audit("builtin:torch", cases=()))
    fails = [r for r in records if r.verdict == FAIL]
    explained = set()
    # 1. float16 denominators overflow 65504 on rows of 65,536 zeros and longer (docs/calibration.md#what-it-finds-in-torch-213-cpu):
    #    logsumexp, log_softmax and cross_entropy return ±inf, and logsumexp's gradient, computed
    #    from that infinite forward output, comes out 0.
    overflow = [r for r in fails if r.dtype == "float16" and r.family in ("long-rows", "high-entropy")]
    assert {r.case for r in overflow} >= {"long-zeros-65536"}
    for r in overflow:
        assert r.op in ("logsumexp", "log_softmax", "cross_entropy"), r.id
        assert r.metrics.class_mismatches or r.direction == "backward", r.id
    explained.update(r.id for r in overflow)
    # 2. Probability targets with zeros against -inf logits: q * log_softmax gives 0 * (-inf) = NaN
    #    (the exact term is 0); label smoothing over finfo.min-masked logits sums -l_c in the
    #    input's format and overflows to +inf before dividing by C (the exact loss is finite).
    loss_classes = [r for r in fails if r.op == "cross_entropy" and r.direction == "forward"
                    and r.case in ("ce-prob-masked", "ce-prob-one-hot-masked", "ce-smoothing-0.1-finfo-min-mask")]
    assert {r.case for r in loss_classes} == {"ce-prob-masked", "ce-prob-one-hot-masked",
                                              "ce-smoothing-0.1-finfo-min-mask"}
    assert all(r.metrics.class_mismatches for r in loss_classes)
    explained.update(r.id for r in loss_classes)
    # 3. torch's CPU softmax kernels sum exp() lane by lane, sequentially; on rows of many equal
    #    small terms that loses far more than a pairwise sum (its own torch.logsumexp stays
    #    within the envelope on the same rows). softmax, log_softmax and everything built on
    #    them (cross_entropy and the gradients) inherit it, in float32 and float64; the gradients
    #    family's backward-only confident rows too (audited since search's change to the runner).
    summation = [r for r in fails if r.id not in explained]
    for r in summation:
        assert r.op in ("softmax", "log_softmax", "cross_entropy"), r.id
        assert r.dtype in ("float32", "float64") and not r.metrics.class_mismatches, r.id
        assert r.family in ("confident", "shapes", "cross-entropy", "gradients"), r.id
        assert r.case.startswith(("confident", "vocab", "ce-confident", "grad-confident")), r.id
        assert r.family != "gradients" or r.direction == "backward", r.id
    assert _max([r for r in records if r.op == "logsumexp" and r.direction == "forward"
                 and r.verdict != FAIL]) <= 1.0


@pytest.mark.slow
def test_full_library_known_bad_algorithms_fail_by_far():
    naive = _judged(_audit("builtin:naive", cases=("offsets", "dynamic-range", "seed-examples")))
    # Forward, and the gradients it recomputes from x (softmax's and log_softmax's start from y).
    assert all(r.verdict == FAIL for r in naive if r.family == "offsets"
               and (r.direction == "forward" or r.op in ("logsumexp", "cross_entropy")))
    acc16 = _judged(_audit(str(CALIBRATION / "accumulate16.py"), cases=("long-rows",), formats=["float16", "bfloat16"]))
    assert sum(r.verdict == FAIL for r in acc16) >= len(acc16) * 3 // 4
