"""CUDA errors that leave the worker's CUDA context unusable (issue 19): the call that caused one
is charged, the worker is replaced, and no other record of any candidate is.

On the CPU a fixture simulates the poisoning (tests/fixtures/sticky/poisons_cuda.py: after a
trigger input every later call of the process raises "CUDA error: device-side assert
triggered"); the tests marked ``gpu`` break a real CUDA context: F.cross_entropy with a target out
of range, and a Triton kernel with a planted out-of-bounds store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from softaudit.candidates.calling import CallResult
from softaudit.formats import FORMATS
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner import cuda_errors
from softaudit.runner.isolation import RESTARTED_NOTE, checked
from softaudit.runner.loop import run_audit

REPO = Path(__file__).resolve().parents[1]
STICKY = REPO / "tests" / "fixtures" / "sticky"
POISONS = str(STICKY / "poisons_cuda.py")
TORCH_PLAIN = str(REPO / "tests" / "fixtures" / "torch_plain.py")

ASSERT_CAUSE = "a kernel's device-side assert fired (an index out of range?), which leaves the CUDA context unusable"
TORCH_ASSERT = ("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported at "
                "some other API call, so the stacktrace below might be incorrect.")


# --------------------------------------------------------------------------
# Recognising the errors


@pytest.mark.parametrize(("text", "key"), [
    (TORCH_ASSERT, "device-side assert"),
    ("raised AcceleratorError: CUDA error: an illegal memory access was encountered", "illegal memory access"),
    ("raised RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered", "illegal memory access"),
    ("raised RuntimeError: CUDA error: unspecified launch failure", "unspecified launch failure"),
    ("raised RuntimeError: CUDA error: misaligned address", "misaligned address"),
    ("raised RuntimeError: Triton Error [CUDA]: an illegal instruction was encountered", "illegal instruction"),
])
def test_cuda_texts_name_a_sticky_error(text, key):
    found = cuda_errors.sticky_error(text)
    assert found is not None and found.key == key and found.cause


@pytest.mark.parametrize("text", [
    None, "", "raised IndexError: Target 16 is out of bounds.", "raised MemoryError",
    "raised RuntimeError: CUDA error: out of memory",  # recoverable: the context survives it
    "raised RuntimeError: kernel not implemented for this shape",
])
def test_ordinary_errors_are_not_sticky(text):
    assert cuda_errors.sticky_error(text) is None
    assert cuda_errors.diagnose(text) is None  # and, without CUDA in use, no probe says otherwise


def test_without_cuda_in_use_nothing_is_synchronised_or_probed():
    # This process may have imported torch (other tests), but no test here initialises CUDA.
    assert not cuda_errors.cuda_in_use() or pytest.skip("CUDA is initialised in this process")
    assert cuda_errors.synchronize() is None and cuda_errors.probe() is None


def test_a_call_result_with_a_sticky_error_is_marked():
    raised = CallResult(None, "raised AcceleratorError: CUDA error: device-side assert triggered", False, "", (), 0.0,
                        raised=True)
    result, sticky = checked(raised)
    assert sticky is not None and sticky.key == "device-side assert" and result.cuda_error == "device-side assert"
    fine = CallResult(None, "raised IndexError: Target 16 is out of bounds.", False, "", (), 0.0, raised=True)
    assert checked(fine) == (fine, None) and fine.cuda_error is None


def test_with_cuda_in_use_an_asynchronous_error_is_the_calls_and_a_failing_probe_marks_the_context(monkeypatch):
    """CUDA in use, simulated: this torch has no CUDA, so synchronising and the probe both raise,
    as they do on a GPU after an error that breaks the context (measured on an H200: after
    F.cross_entropy's device-side assert, x.cpu(), torch.zeros(1, device="cuda") + 1 and
    torch.cuda.synchronize() all raise AcceleratorError)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("simulates CUDA where there is none")
    monkeypatch.setattr(cuda_errors, "cuda_in_use", lambda: True)
    found = cuda_errors.diagnose("raised RuntimeError: something CUDA had not said before")
    assert found is not None and found.key == cuda_errors.UNUSABLE_CONTEXT
    assert found.cause.startswith("a trivial CUDA operation raised ") and found.cause.endswith(" after it")
    returned = CallResult(None, None, False, "float32", (), 0.0)
    result, sticky = checked(returned)
    assert result.raised and result.output is None and sticky is not None
    assert result.error.endswith("(reported when the GPU was synchronised after the call)")


def test_a_failed_call_whose_input_cannot_be_read_back_is_not_said_to_modify_it():
    """After a context-breaking CUDA error the input tensors cannot be read back either: the
    call's error is the finding, not "modified its input" (which would FAIL an out-of-range case)."""
    from softaudit.candidates.running import Run, finish_call

    class Unreadable:
        def modified(self):
            raise RuntimeError("CUDA error: device-side assert triggered")

    run = Run([], "raised AcceleratorError: CUDA error: device-side assert triggered", True, None, 0.0, ())
    result = finish_call(None, run, Unreadable(), FORMATS["float32"], (4,))
    assert (result.error, result.raised, result.input_modified) == (run.error, True, False)
    late = finish_call(None, Run([object()], None, False, None, 0.0, ()), Unreadable(), FORMATS["float32"], (4,))
    assert late.input_modified and late.error.startswith("input could not be read back: raised RuntimeError")


# --------------------------------------------------------------------------
# A simulated poisoning, in the worker


CASES = ["ce-target-out-of-range-high", "ce-target-out-of-range-negative", "ce-smoothing-0.1-ignore-weights-mean",
         "ce-target-below-max-100", "posinf-one", "offset-plus-1e3", "mask-prefix"]
"""Triggers (the two out-of-range cases for cross_entropy, posinf-one for softmax) between
ordinary cases: in the library's order some records come after each trigger."""

TRIGGERS = {("ce-target-out-of-range-high", "cross_entropy", "forward"),
            ("ce-target-out-of-range-negative", "cross_entropy", "forward"),
            ("posinf-one", "softmax", "forward"), ("posinf-one", "softmax", "backward")}
"""The fixture's records whose own inputs trigger the poisoning (softmax's backward goes through
autograd, which calls softmax on the same input)."""


def _sticky_audit(trigger: bool, monkeypatch) -> object:
    monkeypatch.setenv("STICKY_FIXTURE_TRIGGER", "1" if trigger else "0")  # the worker inherits it
    # The clean run needs no worker to replace: in this process (a worker start less), it gives the
    # records every untriggered call of the poisoned run must match.
    options = AuditOptions(ops=["softmax", "cross_entropy"], formats=[FORMATS["float32"]], case_patterns=CASES,
                           jobs=1, worker=WorkerOptions(device="cpu", isolated=trigger))
    return run_audit([POISONS, TORCH_PLAIN], options)


@pytest.fixture(scope="module")
def sticky_runs():
    """The same audit with the trigger and without: (poisoned, clean)."""
    with pytest.MonkeyPatch.context() as mp:
        poisoned = _sticky_audit(True, mp)
        clean = _sticky_audit(False, mp)
    return poisoned, clean


def _figures(rec) -> dict:
    """Everything a record says but its timing, comparable (NaN-safe, through JSON)."""
    d = dataclasses.asdict(rec)
    d.pop("seconds")
    return json.loads(json.dumps(d, default=str))


def test_only_the_triggering_calls_are_charged_and_each_replaces_the_worker(sticky_runs):
    poisoned, clean = sticky_runs
    assert clean.worker_restarts == 0
    assert poisoned.worker_restarts == len(TRIGGERS)
    triggered = {(r.case, r.op, r.direction) for r in poisoned.records
                 if r.candidate == "poisons_cuda" and any(RESTARTED_NOTE in n for n in r.notes)}
    assert triggered == TRIGGERS
    assert [r.id for r in poisoned.records] == [r.id for r in clean.records]
    for rec, ref in zip(poisoned.records, clean.records):
        if rec.candidate == "poisons_cuda" and (rec.case, rec.op, rec.direction) in TRIGGERS:
            continue
        assert _figures(rec) == _figures(ref), rec.id
    assert {r.candidate for r in poisoned.records} == {"poisons_cuda", "torch_plain"}
    assert all(r.verdict == "PASS" for r in poisoned.records if r.candidate == "torch_plain")


def test_a_device_assert_on_an_out_of_range_target_is_the_clear_error_the_case_asks_for(sticky_runs):
    poisoned, clean = sticky_runs
    for run, says in ((poisoned, "device-side assert triggered"), (clean, "IndexError")):
        oor = [r for r in run.records if r.candidate == "poisons_cuda" and r.case.startswith("ce-target-out-of-range")]
        assert len(oor) == 2
        for rec in oor:
            assert rec.verdict == "PASS", (rec.id, rec.reasons)
            assert rec.notes[0].startswith("raised on an out-of-range target, as it should: raised ")
            assert says in rec.notes[0]
    for rec in (r for r in poisoned.records if r.case.startswith("ce-target-out-of-range")):
        assert RESTARTED_NOTE in rec.notes and ASSERT_CAUSE in rec.notes[0]


def test_a_device_assert_elsewhere_fails_its_record_naming_the_cause(sticky_runs):
    poisoned, clean = sticky_runs
    charged = [r for r in poisoned.records if r.case == "posinf-one" and r.candidate == "poisons_cuda"
               and r.verdict != "PASS"]
    assert {(r.op, r.direction) for r in charged} == {("softmax", "forward"), ("softmax", "backward")}
    for rec in charged:
        assert rec.verdict == "FAIL"
        assert "raised AcceleratorError: CUDA error: device-side assert triggered" in rec.reasons[0]
        assert ASSERT_CAUSE in rec.reasons[0]
        assert RESTARTED_NOTE in rec.notes
    assert all(r.verdict == "PASS" for r in clean.records if r.case == "posinf-one")


# --------------------------------------------------------------------------
# On a GPU: real CUDA errors


@pytest.mark.gpu
def test_on_a_gpu_cross_entropy_asserting_on_an_out_of_range_target_replaces_the_worker():
    """torch's CUDA kernel asserts where its CPU code raises IndexError: a PASS (the clear error),
    the worker replaced, and every later record judged as usual (issue 19: 10,821 FAILs)."""
    result = run_audit(["builtin:torch"], AuditOptions(
        ops=["softmax", "cross_entropy"], formats=[FORMATS["float32"], FORMATS["bfloat16"]], jobs=1,
        directions=["forward"], case_patterns=["ce-target-out-of-range-*", "ce-target-below-max-100", "offset-plus-1e3",
                                               "mask-prefix"], worker=WorkerOptions(device="cuda")))
    bad = [f"{r.id}: {r.reasons}" for r in result.records if r.verdict != "PASS"]
    assert bad == []
    oor = [r for r in result.records if r.case.startswith("ce-target-out-of-range")]
    assert len(oor) == 4
    for rec in oor:
        assert rec.notes[0].startswith("raised on an out-of-range target, as it should")
        assert "device-side assert triggered" in rec.notes[0] and RESTARTED_NOTE in rec.notes
    assert result.worker_restarts == 4
    assert {r.op for r in result.records if not r.case.startswith("ce-target-out-of-range")} == {"softmax",
                                                                                                   "cross_entropy"}


@pytest.mark.gpu
def test_on_a_gpu_a_triton_out_of_bounds_store_fails_only_its_own_record(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = run_audit([str(STICKY / "triton_oob_store.py"), "builtin:torch"], AuditOptions(
        ops=["softmax"], directions=["forward"], formats=[FORMATS["float32"]], jobs=1,
        case_patterns=["offset-plus-1e3", "posinf-one", "mask-prefix"], worker=WorkerOptions(device="cuda")))
    records = {(r.candidate, r.case): r for r in result.records}
    assert len(records) == 6
    charged = records.pop(("triton_oob_store", "posinf-one"))
    assert charged.verdict == "FAIL"
    # Every other call ran and was judged on its own output (the fixture's plain tl.exp may cost
    # it ulps; what matters is that no other record is charged with the CUDA error).
    assert all(r.error is None and r.metrics is not None for r in records.values()), \
        [(r.id, r.reasons) for r in records.values()]
    assert all(r.verdict == "PASS" for r in records.values() if r.candidate == "builtin:torch")
    assert RESTARTED_NOTE in charged.notes
    # Measured on an H200: the fault surfaces at the synchronisation as "CUDA error: an illegal
    # memory access was encountered".
    assert "an illegal memory access was encountered" in charged.reasons[0], charged.reasons
    assert "a kernel read or wrote memory out of bounds" in charged.reasons[0]
    assert result.worker_restarts == 1
