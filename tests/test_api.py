"""The pytest API (softaudit.audit / AuditReport): the three forms of impl, numpy and torch,
the failure message a test run shows, strictness, the JSON artifact, and bad arguments."""

from __future__ import annotations

import importlib.util
import inspect
import types
from pathlib import Path

import numpy as np
import pytest

import softaudit
from softaudit.judging.metrics import Location, RecordMetrics
from softaudit.options import AuditOptions
from softaudit.results.records import Record
from softaudit.results.schema import load_results
from softaudit.runner.loop import AuditResult

ROOT = Path(__file__).resolve().parent.parent


def unshifted_softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_in_input_format(x):
    """Max-shifted, but computed in the input's own format: in bfloat16 the sum of 1000 terms
    loses a little more than the envelope allows (a WARN, ratio about 1.5), no FAIL."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def _load_example(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_api_test_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The example's stable kernel and its gradient (one copy, the one users are told to copy).
_KERNELS = _load_example("test_softmax_kernel")
softmax, softmax_backward = _KERNELS.softmax, _KERNELS.softmax_backward


@pytest.fixture(scope="module")
def unshifted_report(softaudit_cache_dir: Path) -> softaudit.AuditReport:
    return softaudit.audit(unshifted_softmax, op="softmax", dtypes=["float32"],
                           cases=["offset-plus-1e3", "mask-prefix"], cache_dir=softaudit_cache_dir)


@pytest.fixture(scope="module")
def warn_report(softaudit_cache_dir: Path) -> softaudit.AuditReport:
    return softaudit.audit(softmax_in_input_format, op="softmax", dtypes="bfloat16", cases="confident-0.9",
                           directions="forward", cache_dir=softaudit_cache_dir)


def test_the_example_test_file_passes() -> None:
    """The copy-paste example: a stable kernel that passes and a broken one caught by pytest.raises.
    Its test functions are called here as pytest would (they take no fixtures)."""
    example = _load_example("test_softmax_kernel")
    tests = {name: fn for name, fn in vars(example).items() if name.startswith("test_") and callable(fn)}
    assert sorted(tests) == ["test_softmax_kernel_is_stable", "test_unshifted_softmax_is_caught"]
    for fn in tests.values():
        assert not inspect.signature(fn).parameters
        fn()


def test_a_broken_kernel_fails_with_the_case_and_the_exact_and_computed_values(unshifted_report) -> None:
    report = unshifted_report
    assert not report.passed
    failing = report.failures
    assert [r.case for r in failing] == ["offset-plus-1e3"]
    assert report.counts()["FAIL"] == 1 and report.counts()["PASS"] == 1
    with pytest.raises(AssertionError) as raised:
        report.assert_ok()
    message = str(raised.value)
    first = failing[0].metrics.first_mismatch
    assert "1 FAIL" in message.splitlines()[0]
    assert "unshifted_softmax/softmax/forward/float32/offset-plus-1e3" in message
    assert f"exact {first.exact}, computed nan" in message
    assert "the case: entries near +1e3" in message


def test_a_passing_audit_says_so(softaudit_cache_dir: Path) -> None:
    report = softaudit.audit(softmax, dtypes=["float32", "bf16"], cases=["offset-plus-1e3"],
                             cache_dir=softaudit_cache_dir)
    assert report.assert_ok() is report and report.passed
    assert report.result.candidates[0].name == "softmax"  # the function's name: a contract name
    assert {(r.dtype, r.direction, r.verdict) for r in report.records} == {
        ("float32", "forward", "PASS"), ("bfloat16", "forward", "PASS"),
        ("float32", "backward", "SKIP"), ("bfloat16", "backward", "SKIP")}
    text = str(report)
    assert text.splitlines()[0].startswith("softaudit audit of softmax: passed; 4 records: 2 PASS")
    assert "softmax bwd: not audited (numpy candidate without softmax_backward" in text


def test_bench_times_the_forward_and_its_backward_at_the_shapes_given(softaudit_cache_dir: Path) -> None:
    report = softaudit.audit({"softmax": softmax, "softmax_backward": softmax_backward}, dtypes="float32",
                             cases="offset-plus-1e3", bench=True, shapes=["8x64", (4, 32)],
                             cache_dir=softaudit_cache_dir)
    timed = {(s.direction, s.shape): s for s in report.speed}
    assert set(timed) == {("forward", (8, 64)), ("forward", (4, 32)), ("backward", (8, 64)), ("backward", (4, 32))}
    for s in timed.values():
        assert s.skipped is None and s.figures["median_s"] > 0 and s.figures["pct_copy_bandwidth"] > 0
    assert timed[("backward", (8, 64))].figures["bytes"] == 3 * 8 * 64 * 4  # read y and dy, write dx


def test_a_mapping_audits_the_forward_function_and_its_explicit_backward(softaudit_cache_dir: Path) -> None:
    report = softaudit.audit({"softmax": softmax, "softmax_backward": softmax_backward},
                             dtypes=["float32"], cases=["mask-prefix"], name="mine", cache_dir=softaudit_cache_dir)
    assert {r.id: r.verdict for r in report.records} == {
        "mine/softmax/forward/float32/mask-prefix": "PASS", "mine/softmax/backward/float32/mask-prefix": "PASS"}
    assert report.result.candidates[0].backward == {"softmax": "function"}


def test_a_module_is_audited_by_its_function_names_and_its_decorated_candidates(softaudit_cache_dir: Path) -> None:
    plain = softaudit.audit(_load_example("seed_numpy"), dtypes="float32", cases="offset-minus-1e3",
                            directions="forward", cache_dir=softaudit_cache_dir)
    assert {r.op for r in plain.records} == {"softmax", "log_softmax", "logsumexp"}
    assert plain.passed and {r.candidate for r in plain.records} == {"_api_test_seed_numpy"}
    decorated = softaudit.audit(_load_example("decorated"), ops="softmax", dtypes="float32", cases="offset-minus-1e3",
                                directions="forward", cache_dir=softaudit_cache_dir)
    assert sorted(r.id for r in decorated.records) == [
        "online/softmax/forward/float32/offset-minus-1e3", "two-pass/softmax/forward/float32/offset-minus-1e3"]


def test_a_torch_callable_is_audited_forward_and_backward_through_autograd(softaudit_cache_dir: Path) -> None:
    torch = pytest.importorskip("torch")

    def softmax(x, dim=-1):
        w = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return torch.softmax(w, dim=dim).to(x.dtype)

    report = softaudit.audit(softmax, dtypes=["float32", "bfloat16"], cases=["offset-plus-1e3"],
                             cache_dir=softaudit_cache_dir)
    assert report.result.candidates[0].backends == ("torch",)
    assert report.result.candidates[0].backward == {"softmax": "autograd"}
    assert sorted((r.direction, r.dtype, r.verdict) for r in report.records) == [
        ("backward", "bfloat16", "PASS"), ("backward", "float32", "PASS"),
        ("forward", "bfloat16", "PASS"), ("forward", "float32", "PASS")]
    # A torch built-in works as it is; its name comes from __name__.
    builtin = softaudit.audit(torch.softmax, op="softmax", dtypes="float32", cases="offset-plus-1e3",
                              directions="forward", cache_dir=softaudit_cache_dir)
    assert builtin.passed and builtin.records[0].candidate == "softmax"


def test_strict_turns_a_warn_into_a_failure(warn_report, softaudit_cache_dir: Path) -> None:
    report = warn_report
    assert [r.verdict for r in report.records] == ["WARN"]
    assert 1.0 < report.warnings[0].metrics.max_ratio < 4.0
    assert report.passed
    report.assert_ok()
    with pytest.raises(AssertionError, match=r"0 FAIL and 1 WARN \(strict\)") as raised:
        report.assert_ok(strict=True)
    assert "WARN softmax_in_input_format/softmax/forward/bfloat16/confident-0.9: " in str(raised.value)
    strict = softaudit.audit(softmax_in_input_format, op="softmax", dtypes="bfloat16", cases="confident-0.9",
                             directions="forward", strict=True, cache_dir=softaudit_cache_dir)
    assert not strict.passed and "FAILED (strict: WARN fails)" in str(strict)
    # Judged as `softaudit run --strict`: the WARN is recorded as a FAIL, in the JSON too.
    (rec,) = strict.records
    assert rec.verdict == "FAIL" and rec.reasons[0].startswith("strict: ")
    with pytest.raises(AssertionError):
        strict.assert_ok()
    with pytest.raises(AssertionError):
        strict.assert_ok(strict=False)


def test_ratio_limit_decides_between_warn_and_fail(warn_report, softaudit_cache_dir: Path) -> None:
    ratio = warn_report.warnings[0].metrics.max_ratio
    tight = softaudit.audit(softmax_in_input_format, op="softmax", dtypes="bfloat16", cases="confident-0.9",
                            directions="forward", ratio_limit=(1.0 + ratio) / 2, cache_dir=softaudit_cache_dir)
    assert [r.verdict for r in tight.records] == ["FAIL"]
    assert tight.result.options.gate.ratio_limit == (1.0 + ratio) / 2


def test_to_json_writes_the_standard_results_file(unshifted_report, tmp_path: Path) -> None:
    path = unshifted_report.to_json(tmp_path / "api.json")
    document = load_results(path)
    assert [r.id for r in document.records] == [r.id for r in unshifted_report.records]
    assert document.counts() == unshifted_report.counts()
    assert document.options["isolated"] is False and document.options["dtypes"] == ["float32"]
    assert document.candidates[0]["target"] == "python:unshifted_softmax"


def _record(case: str, dtype: str, verdict: str, reason: str, ratio: float, op: str = "softmax") -> Record:
    loc = Location(row=0, col=1, input=2.0, computed=0.5, rounded_exact=0.25, exact="0.25000000000000000",
                   err_ulp=ratio, envelope_ulp=1.0, ratio=ratio)
    metrics = RecordMetrics(elements=4, judged=4, class_mismatches=0, mismatch_kinds={}, first_mismatch=None,
                            nan_out=0, inf_out=0, max_ulp=ratio, median_ulp=0.0, p99_ulp=0.0, max_bits=1.0,
                            max_ratio=ratio, worst=loc, above_envelope=1, above_limit=1 if ratio > 4 else 0)
    return Record(candidate="k", target="python:k", op=op, dtype=dtype, case=case, family="f",
                  verdict=verdict, reasons=[reason], metrics=metrics)


def test_the_message_lists_ten_findings_fails_first_each_group_leading_and_escapes_text() -> None:
    records = [_record(f"case-{i}", "float32", "FAIL", f"float32 finding {i}", 10.0 + i) for i in range(11)]
    records += [_record("case-b", "bfloat16", "FAIL", "bfloat16 \x1b[31mred\x1b[0m finding", 5.0, op="logsumexp"),
                _record("case-w", "float32", "WARN", "a warning", 2.0)]
    result = AuditResult(records=records, candidates=[], options=AuditOptions(), environment={}, seconds=0.0,
                         cache_hits=0, cache_misses=0)
    report = softaudit.AuditReport(result, "k")
    with pytest.raises(AssertionError) as raised:
        report.assert_ok()
    lines = str(raised.value).splitlines()
    assert lines[0] == "softaudit audit of k failed: 12 FAIL; 13 records: 0 PASS, 1 WARN, 12 FAIL, 0 SKIP"
    findings = [line for line in lines if line.startswith(("FAIL ", "WARN "))]
    assert len(findings) == 10
    # The worst softmax record, then the logsumexp group's only one, then softmax by ratio.
    assert findings[0].startswith("FAIL k/softmax/forward/float32/case-10: float32 finding 10")
    assert findings[1] == r"FAIL k/logsumexp/forward/bfloat16/case-b: bfloat16 \x1b[31mred\x1b[0m finding"
    assert findings[2].startswith("FAIL k/softmax/forward/float32/case-9:")
    assert "    at row 0, col 1: input 2.0, exact 0.25000000000000000, computed 0.5" in lines
    assert lines[-1].startswith("... and 3 more")
    assert "\x1b" not in str(raised.value)


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((softmax, "softmin"), {}, ValueError, "unknown op 'softmin'"),
    ((softmax,), {"dtypes": ["float8"]}, ValueError, "unknown format 'float8'"),
    ((softmax,), {"dtypes": [int]}, ValueError, "unknown dtype"),
    ((softmax,), {"ops": ["softmin"]}, ValueError, "unknown op 'softmin'"),
    ((softmax,), {"directions": "sideways"}, ValueError, "unknown direction 'sideways'"),
    ((softmax,), {"cases": ["no-such-case"]}, ValueError, "no case matches 'no-such-case'"),
    ((softmax,), {"ops": "logsumexp", "cases": "offset-plus-1e3"}, ValueError, "nothing to audit"),
    ((softmax,), {"ratio_limit": 1.0}, ValueError, "ratio_limit must be a finite number greater than 1"),
    ((softmax,), {"undefined_policy": "nan-only"}, ValueError, "unknown undefined_policy 'nan-only'"),
    ((softmax,), {"seed": -1}, ValueError, "seed must be an int"),
    ((softmax,), {"name": "a/b"}, ValueError, "name must be a non-empty string without '/'"),
    ((unshifted_softmax,), {}, ValueError, "cannot tell which op 'unshifted_softmax' implements: pass op="),
    ((42,), {}, TypeError, "impl must be a callable, a mapping of function names to callables, or a module, not int"),
    (("kernels/my_softmax.py",), {}, TypeError, "run `softaudit run FILE`"),
    (({},), {}, ValueError, "nothing to audit: the mapping is empty"),
    (({"softmaxx": softmax},), {}, ValueError, "unknown function name 'softmaxx'"),
    (({"softmax": "not a function"},), {}, TypeError, "softmax is a str, not a callable"),
    (({"softmax_backward": softmax_backward},), {}, ValueError, "defines softmax_backward but not softmax"),
    ((types.ModuleType("empty"),), {}, ValueError, "defines none of softmax"),
    ((types.ModuleType("empty"), "softmax"), {}, ValueError, "op= names a single callable's role"),
    ((softmax,), {"bench": "yes"}, TypeError, "bench must be True or False"),
    ((softmax,), {"shapes": "8x16"}, ValueError, "pass bench=True as well"),
    ((softmax,), {"bench": True, "shapes": "8by16"}, ValueError, "is not ROWSxN"),
    ((softmax,), {"bench": True, "shapes": [(8, 0)]}, ValueError, "pairs of positive ints"),
])
def test_bad_arguments_raise_with_one_line(args, kwargs, error, words, softaudit_cache_dir: Path) -> None:
    with pytest.raises(error) as raised:
        softaudit.audit(*args, cache_dir=softaudit_cache_dir, **kwargs)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_interrupted_audit_raises_keyboard_interrupt_instead_of_passing(softaudit_cache_dir: Path) -> None:
    """run_audit keeps partial records on Ctrl-C (for the CLI); a test run must stop, not pass."""
    def softmax(x):
        if x.shape != (2, 3):  # the 2x3 probe passes; the audit's first call is "interrupted"
            raise KeyboardInterrupt
        return np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)

    with pytest.raises(KeyboardInterrupt):
        softaudit.audit(softmax, dtypes="float32", cases="mask-prefix", cache_dir=softaudit_cache_dir)


def test_import_softaudit_is_light_and_its_public_names_work():
    """``import softaudit``, the decorator and ``from softaudit import audit, AuditReport`` load
    neither numpy nor ml_dtypes nor torch (the audit machinery comes when audit() is called); a
    fresh interpreter, so this test's own imports do not count."""
    import subprocess
    import sys

    code = ("import sys, softaudit\n"
            "from softaudit import audit, AuditReport, candidate\n"
            "@candidate(name='x')\n"
            "def softmax(x):\n    return x\n"
            "heavy = sorted(m for m in ('numpy', 'ml_dtypes', 'torch', 'mpmath') if m in sys.modules)\n"
            "print(heavy, callable(audit), AuditReport.__name__, softmax.__softaudit_candidate__[0].name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True", "AuditReport", "x"]
    assert softaudit.candidate is importlib.import_module("softaudit.candidates.decorator").candidate
    with pytest.raises(AttributeError):
        softaudit.no_such_name  # noqa: B018
