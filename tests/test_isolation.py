"""Robust execution: crashes, hangs, exceptions and contract breaches are findings, never the end of the audit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softaudit.candidates.calling import CallRequest
from softaudit.cases.inputs import LossInputs
from softaudit.formats import FORMATS
from softaudit.ops import LOSS_KEYWORDS, SOFTMAX_FAMILY
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.isolation import InProcessExecutor, WorkerExecutor
from softaudit.runner.loop import run_audit

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "fixtures" / "faults"
SLOW = REPO / "tests" / "fixtures" / "slow" / "slow.py"
LOSS_NP = REPO / "tests" / "fixtures" / "loss_np.py"


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(COLUMNS="300", NO_COLOR="1", **extra)
    return env


def _cli(args, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softaudit", *map(str, args)], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


EXPECTED = {
    # fixture: (op, text the one-line cause must contain)
    "segfault": ("softmax", "softmax crashed with SIGSEGV"),
    "raises": ("log_softmax", "log_softmax raised RuntimeError: kernel not implemented for this shape"),
    "hangs": ("logsumexp", "logsumexp timed out after 2 s"),
    "memory_hog": ("logsumexp", "MemoryError"),
    "exits": ("softmax", "softmax exited the process with status 3"),
    "wrong_shape": ("softmax", "softmax returned shape (4, 255) but (4, 256) was expected"),
    "mutates": ("softmax", "softmax modified its input"),
    "import_error": ("import", "import_error.py:6: raised IndexError: index 10 is out of bounds"),
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    out = tmp / "faults.json"
    p = _cli(["run", FAULTS, "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32",
              "--timeout", "2", "--memory-limit", "2", "--findings", "30", "--json", out], tmp)
    return p, json.loads(out.read_text())


def test_every_fault_is_a_fail_record_naming_its_cause(fault_run):
    p, doc = fault_run
    assert p.returncode == 1, p.stderr
    assert doc["complete"] is True
    by_candidate = {}
    for r in doc["results"]:
        by_candidate.setdefault(r["candidate"], []).append(r)
    for fixture, (op, cause) in EXPECTED.items():
        (rec,) = [r for r in by_candidate[fixture] if r["op"] == op and r["direction"] == "forward"]
        assert rec["verdict"] == "FAIL", (fixture, rec)
        assert cause in rec["reasons"][0], (fixture, rec["reasons"])
        assert cause.split(":")[0] in p.stdout  # the terminal report names it too
    assert doc["summary"]["worker_restarts"] >= 3  # segfault, hang, exit: each took a worker down


def test_other_candidates_in_the_same_run_are_judged_normally(fault_run):
    _, doc = fault_run
    shifted = [r for r in doc["results"] if r["candidate"] == "builtin:shifted"]
    # builtin:shifted defines the softmax family, not linear_cross_entropy: no records for the latter.
    assert sorted((r["op"], r["direction"]) for r in shifted) == sorted(
        (op, direction) for op in SOFTMAX_FAMILY for direction in ("forward", "backward"))
    assert all(r["verdict"] == "PASS" and r["max_ratio"] <= 1 for r in shifted)
    # Numpy fixtures without backward functions: their backward records are SKIPs saying why.
    (skipped,) = [r for r in doc["results"] if r["candidate"] == "segfault" and r["direction"] == "backward"]
    assert skipped["verdict"] == "SKIP"
    assert skipped["reasons"] == ["numpy candidate without softmax_backward(y, dy): audited forward only"]


def test_tolerated_oddities_are_reported_not_failed(fault_run):
    _, doc = fault_run
    forward = [r for r in doc["results"] if r["direction"] == "forward"]
    (lst,) = [r for r in forward if r["candidate"] == "returns_list"]
    assert lst["verdict"] == "PASS" and lst["output_dtype"] == "list"
    (junk,) = [r for r in forward if r["candidate"] == "prints_junk"]
    assert junk["verdict"] == "PASS"
    assert any(n.startswith("printed 1 line(s) during the call (first: 'DEBUG shape") for n in junk["notes"])


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_keeps_a_valid_partial_json(tmp_path, signum, code):
    out = tmp_path / "partial.json"
    out.write_text('{"previous": "results"}\n')
    marker = tmp_path / "calls.log"
    md = tmp_path / "partial.md"
    proc = subprocess.Popen(
        [sys.executable, "-m", "softaudit", "run", str(SLOW), "builtin:shifted", "--dtype", "float32",
         "--case", "offset-*", "--json", str(out), "--md", str(md)],
        cwd=tmp_path, env=_env(SOFTAUDIT_TEST_MARKER=str(marker)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not marker.exists() or marker.read_text().count("call") < 3):
        time.sleep(0.2)
    assert marker.exists(), "the audit never reached the slow candidate"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert 3 <= len(doc["results"]) < 16 * 2  # some, not all: slow alone has 16 offset cases x 2 directions
    assert doc["summary"]["records"] == len(doc["results"])
    assert doc["summary"]["exit_code"] == code  # the reports state the real exit code
    assert f"incomplete: interrupted (exit {code})" in md.read_text().splitlines()[0]
    assert [line for line in stdout.splitlines() if line.startswith("Result:")] == [
        f"Result: incomplete: interrupted (exit {code})"], stdout
    assert "exit 0" not in stdout
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_directory_targets_skip_helper_modules_and_need_one_candidate(tmp_path):
    d = tmp_path / "kernels"
    d.mkdir()
    (d / "helpers.py").write_text("SCALE = 2.0\n")
    (d / "_private.py").write_text("raise SystemExit('never imported')\n")
    (d / "mine.py").write_text((REPO / "examples" / "seed_numpy.py").read_text())
    # The CLI's entry point in this process, the candidates too: directories, not isolation, are
    # what this test is about.
    from test_cli import run_cli_in_process

    p = run_cli_in_process(["run", d, "--case", "offset-plus-1e3", "--dtype", "float32", "-q", "--no-isolation",
                            "--json", tmp_path / "o.json"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert {c["name"] for c in json.loads((tmp_path / "o.json").read_text())["candidates"]} == {"mine"}
    (d / "mine.py").unlink()
    p = run_cli_in_process(["run", d, "--no-isolation"], tmp_path)
    assert p.returncode == 2 and "defines softmax, log_softmax, logsumexp, cross_entropy or linear_cross_entropy" in p.stderr


def test_without_isolation_the_same_audit_runs_in_process():
    opts = AuditOptions(case_patterns=["offset-plus-1e3"], formats=[FORMATS["float32"]], worker=WorkerOptions(isolated=False))
    records = run_audit([str(FAULTS / "raises.py"), "builtin:shifted"], opts).records
    (raised,) = [r for r in records if r.candidate == "raises" and r.direction == "forward"]
    assert raised.verdict == "FAIL" and raised.error.startswith("raised RuntimeError")


def test_a_hung_candidate_leaves_no_process_behind(tmp_path):
    token = f"softaudit-orphan-{uuid.uuid4().hex}"  # unique: unrelated processes never match
    impl = tmp_path / "spawner.py"
    impl.write_text(
        "import subprocess, sys, time\n"
        "import numpy as np\n"
        "def softmax(x):\n"
        "    if x.shape[-1] <= 3:  # the loader's probe: answer it, so the hang is the audit's call's\n"
        "        e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
        "        return e / e.sum(axis=-1, keepdims=True)\n"
        f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])\n"
        "    time.sleep(3600)\n"
    )
    p = _cli(["run", impl, "--case", "offset-plus-1e3", "--dtype", "float32", "--timeout", "2"], tmp_path)
    assert p.returncode == 1 and "timed out after 2 s" in p.stdout
    assert not _processes_running(token), "the candidate's child outlived the audit"


def _processes_running(text: str) -> list[str]:
    """Command lines (from /proc) that contain ``text``; ignores zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


# --------------------------------------------------------------------------
# The executors carry cross-entropy and backward requests


def _loss(target: np.ndarray, reduction: str, weight: np.ndarray | None = None, smoothing: float = 0.0) -> LossInputs:
    return LossInputs(target=target, target_kind="index", weight=weight, label_smoothing=smoothing,
                      ignore_index=None, reduction=reduction, out_of_range=False)


@pytest.mark.parametrize("isolated", [True, False])
def test_executors_carry_loss_and_backward_requests(isolated):
    executor = WorkerExecutor(timeout=120) if isolated else InProcessExecutor()
    try:
        (torch_info,) = executor.load("builtin:torch")
        (np_info,) = executor.load(str(LOSS_NP))
        (plain_info,) = executor.load(str(REPO / "tests" / "fixtures" / "np_plain.py"))
        # builtin:torch defines the softmax family only (linear_cross_entropy is builtin:torch-linear-ce's).
        assert torch_info.backward == {op: "autograd" for op in SOFTMAX_FAMILY} and torch_info.backward_missing == {}
        assert torch_info.keywords == {"cross_entropy": LOSS_KEYWORDS}
        assert np_info.backward == {"log_softmax": "function", "logsumexp": "function", "cross_entropy": "function"}
        assert np_info.keywords == {"cross_entropy": ("weight", "reduction"), "cross_entropy_backward": ("reduction",)}
        assert np_info.probability_targets["cross_entropy"] is False
        assert np_info.probability_targets["cross_entropy_backward"] is False
        assert np_info.probability_targets["logsumexp"] is True
        assert np_info.notes["cross_entropy_backward"][0].startswith("accepts class-index targets only")
        assert plain_info.backward == {} and set(plain_info.backward_missing) == {"softmax", "logsumexp"}

        rng = np.random.default_rng(0)
        x = rng.normal(size=(4, 6)).astype(np.float32)
        t = rng.integers(0, 6, 4)
        w = (rng.random(6) + 0.5).astype(np.float32)
        xt, tt, wt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(w)

        # Forward cross_entropy with keywords, through the worker.
        res = executor.call(torch_info, CallRequest("cross_entropy", "forward", x, "float32",
                                                    loss=_loss(t, "none", w, 0.1)))
        expected = F.cross_entropy(xt, tt, weight=wt, label_smoothing=0.1, reduction="none")
        assert res.error is None and np.array_equal(res.output, expected.numpy())

        # Backward through autograd: softmax, and a mean-reduced loss with a 0-d dy.
        dy = rng.normal(size=(4, 6)).astype(np.float32)
        res = executor.call(torch_info, CallRequest("softmax", "backward", x, "float32", dy=dy))
        leaf = xt.clone().requires_grad_(True)
        torch.softmax(leaf, -1).backward(torch.from_numpy(dy))
        assert res.error is None and not res.raised and np.array_equal(res.output, leaf.grad.numpy())
        res = executor.call(torch_info, CallRequest("cross_entropy", "backward", x, "float32",
                                                    loss=_loss(t, "mean", w), dy=np.array(1.5, np.float32)))
        leaf = xt.clone().requires_grad_(True)
        F.cross_entropy(leaf, tt, weight=wt).backward(torch.tensor(1.5))
        assert np.array_equal(res.output, leaf.grad.numpy())

        # An explicit backward function, and a backward that cannot be audited.
        y = F.log_softmax(xt.double(), -1).float().numpy()
        res = executor.call(np_info, CallRequest("log_softmax", "backward", x, "float32", dy=dy, y=y))
        np.testing.assert_allclose(res.output, dy - np.exp(y) * dy.sum(-1, keepdims=True), rtol=1e-6)
        res = executor.call(plain_info, CallRequest("softmax", "backward", x, "float32", dy=dy, y=y))
        assert res.unsupported == "numpy candidate without softmax_backward(y, dy): audited forward only"
    finally:
        executor.close()


def test_a_crash_in_a_backward_function_is_a_failed_call(tmp_path):
    impl = tmp_path / "crashy.py"
    impl.write_text(
        "import os\n"
        "import numpy as np\n"
        "def softmax(x):\n"
        "    e = np.exp(x - x.max(-1, keepdims=True))\n"
        "    return e / e.sum(-1, keepdims=True)\n"
        "def softmax_backward(y, dy):\n"
        "    if y.shape[0] > 2:  # not in the 2-row probe\n"
        "        os.abort()\n"
        "    return y * (dy - (y * dy).sum(-1, keepdims=True))\n"
    )
    executor = WorkerExecutor(timeout=60)
    try:
        (info,) = executor.load(str(impl))
        assert info.backward == {"softmax": "function"}
        x = np.zeros((3, 4), np.float32)
        res = executor.call(info, CallRequest("softmax", "backward", x, "float32", dy=x, y=x + 0.25))
        assert res.error == "crashed with SIGABRT" and not res.raised and res.output is None
        assert executor.restarts == 1
        ok = executor.call(info, CallRequest("softmax", "forward", x, "float32"))
        assert ok.error is None and np.allclose(ok.output, 0.25)
    finally:
        executor.close()
