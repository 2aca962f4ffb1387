"""Kernels people use through libraries (issue 23): Triton reached through a library is
interpreted on a CPU with the bfloat16 corrections, as Triton imported directly is; errors of
Triton's interpreter itself are labelled as its limitations, not FAILs; builtin:scipy and
builtin:liger. Liger's audits use a few cases (it is slow interpreted); the docs' figures are
from the whole library (docs/real-world-findings.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from softaudit.candidates.errors import CandidateUnavailable
from softaudit.candidates.loading import INTERPRETED_NOTE, load_target
from softaudit.formats import FORMATS
from softaudit.judging.verdicts import INTERPRETER_LIMITATION, interpreter_limitation
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.loop import run_audit

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
VIA_LIBRARY = str(FIXTURES / "via_library" / "impl.py")


def _audit(targets: list[str], cases: list[str], formats: list[str]):
    options = AuditOptions(case_patterns=cases, formats=[FORMATS[f] for f in formats], jobs=1)
    return run_audit(targets, options)


def _cli(*args: str, tmp_path: Path) -> tuple[int, str, dict]:
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "softaudit", "run", *args, "--no-diagnose", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(out.read_text()) if out.exists() else {}


# -- Triton through a library --------------------------------------------------------------------

def test_triton_reached_through_a_library_runs_interpreted_with_no_variable_set(tmp_path):
    """The candidate file imports no triton; its helper module does. With TRITON_INTERPRET unset,
    the worker switches the interpreter on, the functions carry the note, and bfloat16 passes: a
    bfloat16 product kept in bfloat16 (``y * dy``) is computed on values, not bit patterns (without
    the correction Triton 3.9's interpreter gives 2e34 where the exact gradient is -0.0045)."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'softaudit[triton]')")
    pytest.importorskip("torch")
    code, text, doc = _cli(VIA_LIBRARY, "--device", "cpu", "--case", "zeros", "--case", "offset-plus-1e3",
                           "--case", "confident-0.99", "--dtype", "f32", "--dtype", "bf16", tmp_path=tmp_path)
    assert code == 0, text
    records = doc["results"]
    assert {(r["op"], r["direction"], r["dtype"]) for r in records if r["verdict"] == "PASS"} == {
        ("softmax", d, f) for d in ("forward", "backward") for f in ("float32", "bfloat16")}
    assert all(r["notes"][0] == INTERPRETED_NOTE for r in records)


def test_in_process_loading_interprets_a_library_and_leaves_other_files_alone(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'softaudit[triton]')")
    pytest.importorskip("torch")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # so that monkeypatch restores the variable as it was
    monkeypatch.delenv("TRITON_INTERPRET")
    [plain] = load_target(str(REPO / "examples" / "seed_numpy.py"), device="cpu")
    assert "TRITON_INTERPRET" not in os.environ  # a file that never reaches triton changes nothing
    assert INTERPRETED_NOTE not in plain.ops["softmax"].notes
    [cand] = load_target(VIA_LIBRARY, device="cpu")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert cand.ops["softmax"].notes[0] == INTERPRETED_NOTE
    assert cand.backward["softmax"].notes[0] == INTERPRETED_NOTE


# -- interpreter limitations ---------------------------------------------------------------------

def test_which_interpreter_errors_are_its_limitations():
    assert interpreter_limitation("raised InterpreterError: AttributeError(\"'float' object has no attribute 'to'\")")
    assert interpreter_limitation("raised InterpreterError: NotImplementedError('atomic_cas')")
    # what the interpreter wraps from the kernel itself stays the candidate's
    assert not interpreter_limitation("raised InterpreterError: IndexError('index 70000 is out of bounds')")
    assert not interpreter_limitation("raised InterpreterError: IncompatibleTypeErrorImpl('invalid operands')")
    assert not interpreter_limitation("raised AttributeError: 'float' object has no attribute 'to'")
    assert not interpreter_limitation(None)


def test_an_interpreter_limitation_is_a_labelled_skip_shown_apart(tmp_path):
    code, text, doc = _cli(str(FIXTURES / "interpreter_limit.py"), "--case", "zeros", "--dtype", "f32",
                           tmp_path=tmp_path)
    by_op = {r["op"]: r for r in doc["results"] if r["direction"] == "forward"}
    limited = by_op["softmax"]
    assert limited["verdict"] == "SKIP"
    assert limited["reasons"][0].startswith(f"{INTERPRETER_LIMITATION}: softmax raised InterpreterError: AttributeError")
    assert limited["error"].startswith("raised InterpreterError")
    assert by_op["log_softmax"]["verdict"] == "FAIL"  # an index out of bounds is not the interpreter's
    assert code == 1
    assert "1 SKIP(s) are limitations of Triton's CPU interpreter, not findings" in " ".join(text.split())


# -- builtin:scipy -------------------------------------------------------------------------------

def test_builtin_scipy_passes_forward_and_skips_backward_with_the_reason():
    pytest.importorskip("scipy", reason="scipy is not installed (pip install 'softaudit[scipy]')")
    result = _audit(["builtin:scipy"], ["offset-plus-1e10", "mask-fully-masked-rows", "confident-0.999"],
                    ["float64", "float32"])
    forward = [r for r in result.records if r.direction == "forward"]
    assert {r.op for r in forward} == {"softmax", "log_softmax", "logsumexp"}
    assert [r.id for r in forward if r.verdict != "PASS"] == []
    backward = [r for r in result.records if r.direction == "backward"]
    assert backward and all(r.verdict == "SKIP" and "audited forward only" in r.reasons[0] for r in backward)


def test_builtin_scipy_without_scipy_is_unavailable_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "scipy.special", None)
    with pytest.raises(CandidateUnavailable, match=r"needs scipy.*softaudit\[scipy\]"):
        load_target("builtin:scipy")


# -- builtin:liger -------------------------------------------------------------------------------

LIGER_CASES = ["zeros", "offset-plus-1e10", "ce-ignore-padding-mean", "ce-smoothing-0.1-weights-sum"]


@pytest.fixture(scope="module")
def liger_audit():
    pytest.importorskip("triton", reason="triton is not installed (pip install 'softaudit[liger]')")
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install 'softaudit[liger]')")
    return _audit(["builtin:liger"], LIGER_CASES, ["float32", "bfloat16"])


def test_builtin_liger_findings_and_limitations_are_told_apart(liger_audit):
    by_id = {r.id: r for r in liger_audit.records}
    some = next(iter(by_id.values()))
    assert some.notes[0] == INTERPRETED_NOTE
    for fmt in ("float32", "bfloat16"):  # softmax, forward and backward through autograd
        for direction in ("forward", "backward"):
            assert by_id[f"builtin:liger/softmax/{direction}/{fmt}/zeros"].verdict == "PASS"
    # the real finding: float32 cross-entropy as lse - x_t at an offset of 1e10 (docs/real-world-findings.md)
    offset = by_id["builtin:liger/cross_entropy/forward/float32/offset-plus-1e10"]
    assert offset.verdict == "FAIL" and offset.metrics is not None and offset.metrics.max_ratio > 1e5
    # the interpreter's limitation on weighted label smoothing: a labelled SKIP, not a FAIL
    smoothing = by_id["builtin:liger/cross_entropy/forward/float32/ce-smoothing-0.1-weights-sum"]
    assert smoothing.verdict == "SKIP" and smoothing.reasons[0].startswith(INTERPRETER_LIMITATION)
    plain = [r for r in liger_audit.records if r.case == "ce-ignore-padding-mean"]
    assert plain and all(r.verdict == "PASS" and not r.input_modified for r in plain)  # the copy keeps x intact


@pytest.mark.gpu
def test_builtin_liger_compiled_on_a_gpu_judges_what_the_interpreter_cannot_run():
    """On a GPU Liger's kernels are compiled: no interpreter note, and the weighted-smoothing case
    the interpreter cannot run is judged (not a limitation SKIP)."""
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install 'softaudit[liger]')")
    options = AuditOptions(case_patterns=LIGER_CASES, formats=[FORMATS["float32"], FORMATS["bfloat16"]], jobs=1,
                           worker=WorkerOptions(device="cuda"))
    result = run_audit(["builtin:liger"], options)
    by_id = {r.id: r for r in result.records}
    assert all(INTERPRETED_NOTE not in r.notes for r in result.records)
    smoothing = by_id["builtin:liger/cross_entropy/forward/float32/ce-smoothing-0.1-weights-sum"]
    assert smoothing.verdict != "SKIP", smoothing.reasons
    assert by_id["builtin:liger/softmax/forward/bfloat16/zeros"].verdict == "PASS"
