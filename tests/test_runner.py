"""The audit loop through the Python API: every failure of a candidate is a record, never a crash."""

from pathlib import Path

from softaudit.formats import FORMATS
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.loop import run_audit

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = AuditOptions(case_patterns=["offset-plus-1e3", "mask-prefix"], formats=[FORMATS["float32"]])


def _records(target, options=SMALL):
    """Forward records by (op, case) (these numpy fixtures have no backward pass: those are SKIPs)."""
    return {(r.op, r.case): r for r in run_audit([str(target)], options).records if r.direction == "forward"}


def test_a_candidate_that_modifies_its_input_fails_even_with_right_values():
    records = _records(FIXTURES / "mutating.py")
    for r in records.values():
        assert r.verdict == "FAIL" and r.input_modified
        assert r.reasons[0] == "softmax modified its input"


def test_exceptions_and_wrong_shapes_become_fail_records_and_other_ops_are_still_judged(tmp_path):
    impl = tmp_path / "half_broken.py"
    impl.write_text(
        "import numpy as np\n"
        "def softmax(x):\n    raise ValueError('not implemented for ' + str(x.dtype))\n"
        "def log_softmax(x):\n    return np.zeros(3)\n"
        "def logsumexp(x):\n"
        "    a = x.max(-1)\n    return a + np.log(np.exp(x - a[:, None]).sum(-1))\n"
    )
    records = _records(impl)
    sm = records[("softmax", "offset-plus-1e3")]
    assert sm.verdict == "FAIL" and sm.error == "raised ValueError: not implemented for float32"
    ls = records[("log_softmax", "offset-plus-1e3")]
    assert ls.verdict == "FAIL" and "shape (3,)" in ls.error
    assert records[("logsumexp", "offset-plus-1e3")].verdict == "PASS"


def test_seed_changes_random_inputs_and_is_reproducible():
    opts = AuditOptions(case_patterns=["offset-plus-1e3"], formats=[FORMATS["float32"]], ops=["softmax"],
                        worker=WorkerOptions(isolated=False))  # in this process: seeds, not isolation
    a = run_audit(["builtin:torch"], opts).records[0].metrics
    b = run_audit(["builtin:torch"], opts).records[0].metrics
    c = run_audit(["builtin:torch"], AuditOptions(case_patterns=["offset-plus-1e3"], formats=[FORMATS["float32"]],
                                                  ops=["softmax"], seed=7, worker=WorkerOptions(isolated=False))).records[0].metrics
    assert a.worst.input == b.worst.input and a.max_ulp == b.max_ulp
    assert c.worst.input != a.worst.input


def test_backward_only_cases_alone_are_audited_not_nothing_to_audit():
    """The "nothing to audit" check counts a case by the directions asked for: the backward-only
    gradients family, selected alone, is audited (it once raised NothingToAudit)."""
    result = run_audit(["builtin:naive"], AuditOptions(ops=["log_softmax"], formats=[FORMATS["float32"]],
                                                       case_patterns=["gradients"], jobs=1, worker=WorkerOptions(isolated=False)))
    assert result.records and {r.direction for r in result.records} == {"backward"}


def test_a_candidate_writing_into_its_input_spoils_no_later_call_on_the_same_unit(tmp_path):
    """The worker holds a unit's input once (IsolatedExecutor._shipped) and gives each call a copy:
    softmax zeroing its input in place FAILs, and log_softmax, called next on the same unit in the
    same worker, still gets the true input and PASSes."""
    impl = tmp_path / "zeroes_then_honest.py"
    impl.write_text(
        "import numpy as np\n"
        "def softmax(x):\n"
        "    e = np.exp(x - x.max(-1, keepdims=True))\n    y = e / e.sum(-1, keepdims=True)\n"
        "    x[...] = 0\n    return y\n"
        "def log_softmax(x):\n"
        "    z = x - x.max(-1, keepdims=True)\n    return z - np.log(np.exp(z).sum(-1, keepdims=True))\n"
    )
    records = _records(impl)
    assert all(r.verdict == "FAIL" and r.input_modified for (op, _), r in records.items() if op == "softmax")
    assert all(r.verdict == "PASS" for (op, _), r in records.items() if op == "log_softmax")
