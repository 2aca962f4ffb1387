"""End-to-end tests of the command line (``softaudit``).

Most CLI calls run the console-script entry point (softaudit.cli.main) in this process, with its
output captured, the session's reference cache (tests/conftest.py) and a wide, colourless
terminal; a handful of smoke tests (``cli_subprocess``) run ``python -m softaudit`` in a
subprocess, as a user does. Cases and formats are limited with --case/--dtype so the file runs
in seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import softaudit

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ROW_OPS = ("softmax", "log_softmax", "logsumexp")
"""The ops the examples define."""
OPS = ROW_OPS + ("cross_entropy",)
"""The ops the built-ins define."""
VERDICTS = ("PASS", "WARN", "FAIL", "SKIP")

# Offsets that make the naive (no max shift) algorithm overflow / underflow in
# float32 working precision, and that fit every format tested here.
OFFSET_CASES = ("offset-plus-1e3", "offset-minus-1e3")
OFFSET_DTYPES = ("float32", "float16")

# A few small cases exercising ordinary rows, the seed example, a fully masked
# row (undefined outputs) and +inf entries.
EXAMPLE_CASES = ("offset-plus-1e3", "seed-softmax-1000-to-5000", "mask-fully-masked-single", "posinf-one")
EXAMPLE_DTYPES = ("float32", "bfloat16")


# --------------------------------------------------------------------------
# Helpers


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m softaudit ARGS`` from this checkout, output captured as text."""
    assert os.environ.get("SOFTAUDIT_CACHE_DIR"), "the session cache fixture must be active"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "400"  # findings on one line each
    env["NO_COLOR"] = "1"
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "softaudit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run_cli_in_process(args, cwd: Path) -> subprocess.CompletedProcess:
    """``softaudit ARGS`` through its console-script entry point (softaudit.cli.main) in this
    process, from ``cwd``, with the environment run_cli gives a subprocess; stdout, stderr and the
    exit status captured as run_cli returns them. Candidates are still called in the audit's
    worker process unless ARGS say --no-isolation."""
    from softaudit.cli import main

    assert os.environ.get("SOFTAUDIT_CACHE_DIR"), "the session cache fixture must be active"
    argv = ["softaudit", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("COLUMNS", "400")
        mp.setenv("NO_COLOR", "1")
        for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"):
            mp.delenv(var, raising=False)
        mp.setattr(sys, "argv", argv)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(tmp_path):
    """The CLI in this process (run_cli_in_process), from the test's own temporary directory
    (nothing lands in the repo)."""
    return lambda *args: run_cli_in_process(args, tmp_path)


@pytest.fixture
def cli_subprocess(tmp_path):
    """run_cli (``python -m softaudit`` in a subprocess) in the test's own temporary directory."""
    return lambda *args: run_cli(args, tmp_path)


def case_args(cases, dtypes) -> list[str]:
    return [a for c in cases for a in ("--case", c)] + [a for d in dtypes for a in ("--dtype", d)]


def _no_constants(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def load_strict(path: Path) -> dict:
    """Parse a results file, refusing NaN / Infinity (not JSON)."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)


def flat(text: str) -> str:
    """Whitespace collapsed, so a sentence the terminal wrapped reads as one line."""
    return " ".join(text.split())


def without_timing(obj):
    """obj with every "seconds" field and the cache tally removed (they vary run to run)."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in ("seconds", "reference_cache")}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def same_float(text: str, value) -> bool:
    a = float(text)
    b = float(value)  # JSON writes non-finite values as "nan", "inf", "-inf"
    return a == b or (math.isnan(a) and math.isnan(b))


def tokens(text: str) -> set[str]:
    return set(re.split(r"[\s│|;,]+", text))


# --------------------------------------------------------------------------
# Verdicts, findings and exit codes


FINDING = re.compile(
    r"(?P<verdict>FAIL|WARN) (?P<cand>\S+) (?P<op>log_softmax|softmax|logsumexp|cross_entropy) (?P<dtype>\w+) on (?P<case>\S+?): "
    r".*?row (?P<row>\d+)(?:, col (?P<col>\d+))?: (?:max )?input (?P<input>[^\s,]+), "
    r"exact (?P<exact>[^\s,]+), computed (?P<computed>[^\s,;]+)"
)


def test_naive_builtin_fails_offsets_and_explains_the_worst_findings(cli_subprocess, tmp_path):
    cli = cli_subprocess  # a smoke test: python -m softaudit as a user runs it
    out = tmp_path / "naive.json"
    p = cli("run", "builtin:naive", *case_args(OFFSET_CASES, OFFSET_DTYPES), "--direction", "forward", "--json", out)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    text = flat(p.stdout)
    assert "FAIL" in text

    doc = load_strict(out)
    records = {(r["op"], r["dtype"], r["case"]): r for r in doc["results"]}
    assert set(records) == set(itertools.product(OPS, OFFSET_DTYPES, OFFSET_CASES))
    assert all(r["verdict"] == "FAIL" for r in records.values())

    # Each finding sentence names the element and its input, exact and computed
    # values, and they agree with the JSON record it summarises.
    findings = [m.groupdict() for m in FINDING.finditer(text)]
    assert findings, f"no worst-finding sentence in:\n{p.stdout}"
    assert {f["op"] for f in findings} == set(OPS)
    for f in findings:
        assert f["verdict"] == "FAIL" and f["cand"] == "builtin:naive"
        rec = records[(f["op"], f["dtype"], f["case"])]
        loc = rec["first_mismatch"] if rec["first_mismatch"] is not None else rec["worst"]
        assert loc is not None
        assert int(f["row"]) == loc["row"]
        assert (None if f["col"] is None else int(f["col"])) == loc["col"]
        assert (f["col"] is None) == (f["op"] in ("logsumexp", "cross_entropy"))
        assert same_float(f["input"], loc["input"])
        assert same_float(f["computed"], loc["computed"])
        assert Decimal(f["exact"]) == Decimal(loc["exact"])
        # The naive algorithm's failure is non-finite output where the exact value is finite.
        assert not math.isfinite(float(f["computed"]))
        assert Decimal(f["exact"]).is_finite()


def test_shifted_builtin_passes_the_same_offsets(cli, tmp_path):
    out = tmp_path / "shifted.json"
    p = cli("run", "builtin:shifted", *case_args(OFFSET_CASES, OFFSET_DTYPES), "--json", out, "--no-isolation")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = load_strict(out)
    assert len(doc["results"]) == len(OPS) * 2 * len(OFFSET_DTYPES) * len(OFFSET_CASES)  # forward and backward
    assert [r["id"] for r in doc["results"] if r["verdict"] not in ("PASS", "WARN")] == []
    assert all(r["worst"] is not None and r["max_ulp"] is not None for r in doc["results"])


@pytest.mark.parametrize("example, exit_code, backend", [
    ("seed_numpy.py", 0, "numpy"),
    ("torch_impl.py", 0, "torch"),
    ("naive_numpy.py", 1, "numpy"),
])
def test_undecorated_examples(cli, cli_subprocess, tmp_path, example, exit_code, backend):
    isolation: tuple[str, ...] = ("--no-isolation",)  # the worker is tested in test_isolation.py
    if backend == "torch":
        cli = cli_subprocess  # a smoke test: a torch candidate from python -m softaudit, in its worker
        isolation = ()
    out = tmp_path / "out.json"
    p = cli("run", EXAMPLES / example, *case_args(EXAMPLE_CASES, EXAMPLE_DTYPES), "--json", out, *isolation)
    assert p.returncode == exit_code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    doc = load_strict(out)
    stem = example.removesuffix(".py")
    (cand,) = doc["candidates"]
    assert cand["description"]  # the module docstring's first line
    assert {k: v for k, v in cand.items() if k != "description"} == {
        "name": stem, "target": str(EXAMPLES / example), "ops": sorted(ROW_OPS), "backend": [backend]}
    got = {(r["op"], r["dtype"], r["case"]) for r in doc["results"]}
    assert got == set(itertools.product(ROW_OPS, EXAMPLE_DTYPES, EXAMPLE_CASES))
    assert all(r["candidate"] == stem for r in doc["results"])
    fails = [r for r in doc["results"] if r["verdict"] == "FAIL"]
    assert bool(fails) == (exit_code == 1), [(r["id"], r["reasons"]) for r in fails]
    if exit_code == 1:  # naive: the offset case overflows exp
        assert {r["case"] for r in fails} >= {"offset-plus-1e3"}


def test_decorated_example_audits_both_named_candidates(cli, tmp_path):
    out = tmp_path / "out.json"
    p = cli("run", EXAMPLES / "decorated.py", *case_args(EXAMPLE_CASES, EXAMPLE_DTYPES), "--json", out, "--no-isolation")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = load_strict(out)
    assert {c["name"]: c["ops"] for c in doc["candidates"]} == {
        "two-pass": ["logsumexp", "softmax"], "online": ["logsumexp", "softmax"]}
    got = {(r["candidate"], r["op"], r["dtype"], r["case"]) for r in doc["results"]}
    assert got == set(itertools.product(("two-pass", "online"), ("softmax", "logsumexp"),
                                        EXAMPLE_DTYPES, EXAMPLE_CASES))
    table = tokens(p.stdout)
    assert {"two-pass", "online"} <= table


def test_cases_dir_adds_a_user_case(cli, tmp_path):
    d = tmp_path / "my-cases"
    d.mkdir()
    (d / "mine.toml").write_text(
        '[[case]]\nname = "my-big-logits"\nfamily = "mine"\n'
        'description = "two logits near 1000"\nvalues = "explicit"\ndata = [[1000.0, 1001.0]]\n')
    out = tmp_path / "out.json"
    p = cli("run", "builtin:naive", "--cases-dir", d, "--case", "mine", "--dtype", "float32", "--direction", "forward",
            "--json", out, "--no-isolation")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = load_strict(out)
    assert {(r["case"], r["family"], r["verdict"]) for r in doc["results"]} == {("my-big-logits", "mine", "FAIL")}
    assert doc["options"]["cases_dirs"] == [str(d)]


# --------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, no traceback, nothing written


def _syntax_error(tmp: Path) -> list:
    (tmp / "broken_syntax.py").write_text("import numpy as np\n\ndef softmax(x:\n    return x\n")
    return ["run", tmp / "broken_syntax.py"]


def _no_ops(tmp: Path) -> list:
    (tmp / "nothing_here.py").write_text("def soft_max(x):\n    return x\n")
    return ["run", tmp / "nothing_here.py"]


def _bad_toml(tmp: Path) -> list:
    (tmp / "cases").mkdir()
    (tmp / "cases" / "broken.toml").write_text('[[case]]\nname = \n')
    return ["run", "builtin:shifted", "--cases-dir", tmp / "cases"]


def _unknown_case_key(tmp: Path) -> list:
    (tmp / "cases").mkdir()
    (tmp / "cases" / "typo.toml").write_text(
        '[[case]]\nname = "typo"\nfamily = "mine"\ndescription = "d"\nrows = 2\nn = 8\nofset = 1e3\n')
    return ["run", "builtin:shifted", "--cases-dir", tmp / "cases"]


def _not_a_dir(tmp: Path) -> list:
    (tmp / "plain-file").write_text("not a directory\n")
    return ["run", "builtin:shifted", "--cases-dir", tmp / "plain-file"]


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


BAD_INPUTS = {
    # id: (args from the temporary directory, text the error line must contain)
    "syntax-error": (_syntax_error, "broken_syntax.py"),
    "no-ops": (_no_ops, "nothing_here.py"),
    "missing-file": (lambda tmp: ["run", tmp / "does_not_exist.py"], "does_not_exist.py"),
    "unknown-builtin": (lambda tmp: ["run", "builtin:nope"], "nope"),
    "unknown-dtype": (lambda tmp: ["run", "builtin:shifted", "--dtype", "float8"], "float8"),
    "unknown-op": (lambda tmp: ["run", "builtin:shifted", "--op", "softmaxx"], "softmaxx"),
    "unknown-undefined": (lambda tmp: ["run", "builtin:shifted", "--undefined", "maybe"], "maybe"),
    "case-matches-nothing": (lambda tmp: ["run", "builtin:shifted", "--case", "no-such-case-*"], "no-such-case-*"),
    "cases-dir-not-a-dir": (_not_a_dir, "plain-file"),
    "malformed-case-toml": (_bad_toml, "broken.toml"),
    "unknown-case-key": (_unknown_case_key, "ofset"),
    "limit-not-above-1": (lambda tmp: ["run", "builtin:shifted", "--limit", "1"], "--limit"),
    "unknown-option": (lambda tmp: ["run", "builtin:shifted", "--bogus"], "--bogus"),
    "option-value-type": (lambda tmp: ["run", "builtin:shifted", "--seed", "abc"], "--seed"),
    "missing-module": (lambda tmp: ["run", _write(tmp, "needs_x.py", "import no_such_pkg_xyz\ndef softmax(x):\n    return x\n")],
                       "'no_such_pkg_xyz', which is not installed"),
    "unknown-device": (lambda tmp: ["run", "builtin:shifted", "--device", "tpu"], "--device"),
    "uncallable-signature": (lambda tmp: ["run", _write(tmp, "temp.py", "def softmax(x, temperature):\n    return x\n")],
                             "unexpected required parameter 'temperature'"),
    "limit-infinite": (lambda tmp: ["run", "builtin:shifted", "--limit", "inf"], "--limit"),
    "timeout-infinite": (lambda tmp: ["run", "builtin:shifted", "--timeout", "inf"], "--timeout"),
    "memory-limit-infinite": (lambda tmp: ["run", "builtin:shifted", "--memory-limit", "inf"], "--memory-limit"),
    "negative-seed": (lambda tmp: ["run", "builtin:shifted", "--seed", "-1"], "--seed"),
    "bad-shape": (lambda tmp: ["run", "builtin:shifted", "--bench", "--shape", "1024"], "--shape"),
    "shape-without-bench": (lambda tmp: ["run", "builtin:shifted", "--shape", "8x64"], "--bench"),
    "positional-only-dim": (lambda tmp: ["run", _write(tmp, "posdim.py", "def softmax(x, dim, /):\n    return x\n")],
                            "unexpected required parameter 'dim'"),
    "nothing-to-audit": (lambda tmp: ["run", REPO / "tests" / "fixtures" / "two_named.py", "--op", "log_softmax"],
                         "nothing to audit"),
}
if importlib.util.find_spec("cupy") is None:
    # An optional package (triton, cupy) missing: the target is a SKIP with the install hint, and
    # with nothing else to audit that is "nothing to audit".
    BAD_INPUTS["missing-optional-package"] = (
        lambda tmp: ["run", _write(tmp, "needs_cupy.py", "import cupy\ndef softmax(x):\n    return x\n")],
        "needs cupy, which is not installed")
if not _cuda_available():
    BAD_INPUTS["cuda-without-a-gpu"] = (lambda tmp: ["run", "builtin:torch", "--device", "cuda"], "no CUDA device")


def assert_bad_input(p: subprocess.CompletedProcess, must_name: str) -> str:
    """Exit 2, exactly one non-empty line on stderr naming the culprit, no report, no traceback."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert "error" in lines[0].lower()
    assert must_name in lines[0]
    assert p.stdout.strip() == ""
    return lines[0]


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_leaves_json_untouched(cli, tmp_path, name):
    make_args, must_name = BAD_INPUTS[name]
    args = make_args(tmp_path)
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    sentinel = out_dir / "results.json"
    sentinel.write_text('{"sentinel": true}\n')
    before = sentinel.stat().st_mtime_ns
    p = cli(*args, "--case", "offset-plus-1e3", "--dtype", "float32", "--json", sentinel)
    assert_bad_input(p, must_name)
    # The existing results file is not replaced, and no temporary file is left beside it.
    assert sentinel.read_text() == '{"sentinel": true}\n'
    assert sentinel.stat().st_mtime_ns == before
    assert [f.name for f in out_dir.iterdir()] == ["results.json"]


@pytest.mark.parametrize("name", ["unknown-builtin", "unknown-option", "missing-module"])
def test_bad_input_from_a_subprocess_exits_2_with_one_line(cli_subprocess, tmp_path, name):
    """Smoke: the matrix above runs in this process; a few of its cases as a user's shell sees them
    (a target checked before the worker starts, click's usage error, one found by the worker)."""
    make_args, must_name = BAD_INPUTS[name]
    assert_bad_input(cli_subprocess(*make_args(tmp_path), "--case", "offset-plus-1e3"), must_name)


def test_json_into_missing_directory_is_bad_input(cli, tmp_path):
    target = tmp_path / "no-such-dir" / "out.json"
    p = cli("run", "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32", "--json", target)
    assert_bad_input(p, "no-such-dir")
    assert not target.parent.exists()


def test_json_onto_a_directory_is_bad_input(cli, tmp_path):
    p = cli("run", "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32", "--json", tmp_path)
    assert_bad_input(p, "--json")


def test_debug_shows_the_traceback_of_bad_input(cli, tmp_path):
    args = _syntax_error(tmp_path)
    p = cli(*args, "--case", "offset-plus-1e3", "--dtype", "float32", "--debug")
    assert p.returncode == 2
    assert "Traceback (most recent call last)" in p.stderr
    assert "broken_syntax.py" in p.stderr.strip().splitlines()[-1]
    assert p.stdout.strip() == ""


@pytest.mark.parametrize("args, must_name", [
    (["--case", "no-such-case-*"], "no-such-case-*"),
    (["--cases-dir", "plain-file"], "plain-file"),
])
def test_cases_command_bad_input(cli, tmp_path, args, must_name):
    (tmp_path / "plain-file").write_text("x\n")
    assert_bad_input(cli("cases", *args), must_name)


# --------------------------------------------------------------------------
# The JSON results file


JSON_TARGETS = ("builtin:naive", "builtin:shifted")
JSON_CASES = ("offset-plus-1e3", "seed-softmax-1000-to-5000")
JSON_DTYPES = ("float32", "bfloat16")
RECORD_KEYS = {"id", "candidate", "target", "op", "direction", "dtype", "case", "family", "verdict",
               "reasons", "error", "input_modified", "output_dtype", "notes", "seconds", "max_ulp",
               "max_ratio", "worst"}
LOCATION_KEYS = {"row", "col", "input", "exact", "computed"}


def test_json_report_is_strict_complete_and_reproducible(cli_subprocess, tmp_path, softaudit_cache_dir):
    cli = cli_subprocess  # a smoke test, and the subprocess must use $SOFTAUDIT_CACHE_DIR
    args = ["run", *JSON_TARGETS, *case_args(JSON_CASES, JSON_DTYPES), "--seed", "5", "-q"]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    p1 = cli(*args, "--json", first)
    assert p1.returncode == 1, p1.stderr  # builtin:naive fails
    doc = load_strict(first)

    # Top level.
    assert doc["schema_version"] == 1
    assert doc["softaudit_version"] == softaudit.__version__
    assert doc["complete"] is True
    env = doc["environment"]
    assert env["seed"] == 5 and doc["options"]["seed"] == 5
    assert env["softaudit"] == softaudit.__version__
    assert env["numpy"] == np.__version__
    assert env["python"] == platform.python_version()
    for key in ("mpmath", "ml_dtypes", "platform", "machine", "torch"):
        assert key in env
    assert doc["options"]["dtypes"] == list(JSON_DTYPES)
    assert doc["options"]["cases"] == list(JSON_CASES)
    assert [c["name"] for c in doc["candidates"]] == list(JSON_TARGETS)

    # One record per candidate x op x dtype x case.
    results = doc["results"]
    combos = [(r["candidate"], r["op"], r["direction"], r["dtype"], r["case"]) for r in results]
    assert sorted(combos) == sorted(itertools.product(JSON_TARGETS, OPS, ("forward", "backward"), JSON_DTYPES,
                                                      JSON_CASES))
    n_rows = {"offset-plus-1e3": 4, "seed-softmax-1000-to-5000": 1}
    n_cols = {"offset-plus-1e3": 256, "seed-softmax-1000-to-5000": 5}
    for r in results:
        assert RECORD_KEYS <= set(r), r["id"]
        assert r["id"] == "/".join((r["candidate"], r["op"], r["direction"], r["dtype"], r["case"]))
        assert r["target"] == r["candidate"]
        assert r["verdict"] in VERDICTS
        assert r["reasons"] or r["verdict"] == "PASS"
        if r["candidate"] == "builtin:naive":
            # No max shift: every forward op overflows, and so do the gradients it recomputes from x;
            # softmax's and log_softmax's gradients start from the exact y and are fine.
            recomputes = r["direction"] == "forward" or r["op"] in ("logsumexp", "cross_entropy")
            assert (r["verdict"] == "FAIL") == recomputes, r["id"]
        else:
            assert r["verdict"] in ("PASS", "WARN"), (r["id"], r["reasons"])
            assert r["worst"] is not None and isinstance(r["max_ulp"], (int, float)) and r["max_ulp"] >= 0
        for loc in (r["worst"], r.get("first_mismatch")):
            if loc is None:
                continue
            assert LOCATION_KEYS <= set(loc)
            assert 0 <= loc["row"] < n_rows[r["case"]]
            if r["op"] in ("logsumexp", "cross_entropy") and r["direction"] == "forward":
                assert loc["col"] is None
            else:
                assert 0 <= loc["col"] < n_cols[r["case"]]
            assert isinstance(loc["exact"], str) and Decimal(loc["exact"]).is_finite()
            float(loc["input"]), float(loc["computed"])  # numbers, or "nan"/"inf"/"-inf"
    assert len({r["id"] for r in results}) == len(results)

    # The summary agrees with the records and the process.
    summary = doc["summary"]
    counts = Counter(r["verdict"] for r in results)
    assert summary["records"] == len(results)
    assert {v: summary[v.lower()] for v in VERDICTS} == {v: counts.get(v, 0) for v in VERDICTS}
    assert summary["exit_code"] == p1.returncode
    assert summary["reference_cache"]["hits"] + summary["reference_cache"]["misses"] > 0
    assert any(softaudit_cache_dir.iterdir()), "the subprocess did not use $SOFTAUDIT_CACHE_DIR"

    # Same seed again: identical apart from timing, with every reference from the cache.
    p2 = cli(*args, "--json", second)
    assert p2.returncode == p1.returncode
    doc2 = load_strict(second)
    assert without_timing(doc2) == without_timing(doc)
    assert doc2["summary"]["reference_cache"]["hits"] > 0
    assert doc2["summary"]["reference_cache"]["misses"] == 0


def test_quiet_run_prints_nothing_but_still_writes_json(cli, tmp_path):
    out = tmp_path / "out.json"
    p = cli("run", "builtin:shifted", "--case", "seed-softmax-1000-to-5000", "--dtype", "float64", "-q", "--json", out, "--no-isolation")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""
    assert load_strict(out)["summary"]["records"] == len(OPS) * 2  # forward and backward


# --------------------------------------------------------------------------
# `softaudit cases` and --version


def _seed_example_names() -> list[str]:
    with open(REPO / "cases" / "seed_examples.toml", "rb") as fh:
        return [c["name"] for c in tomllib.load(fh)["case"]]


def test_cases_lists_the_whole_library(cli):
    from softaudit.cases.reader import load_cases

    p = cli("cases")
    assert p.returncode == 0, p.stderr
    listed = tokens(p.stdout)
    assert "seed-softmax-1000-to-5000" in _seed_example_names()
    assert set(_seed_example_names()) <= listed
    assert {c.name for c in load_cases([])} <= listed


def test_cases_filter_by_family_and_by_name_pattern(cli):
    seeds = set(_seed_example_names())
    family = tokens(cli("cases", "--case", "seed-examples").stdout)
    assert seeds <= family
    assert "offset-plus-1e3" not in family
    by_name = cli("cases", "--case", "seed-uniform-*")
    assert by_name.returncode == 0
    names = tokens(by_name.stdout)
    assert {"seed-uniform-plus-1e5", "seed-uniform-minus-1e5"} <= names
    assert "seed-softmax-1000-to-5000" not in names


def test_version(cli_subprocess):
    p = cli_subprocess("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"softaudit {softaudit.__version__}"


# --------------------------------------------------------------------------
# The Python API behind `softaudit run`


def test_run_audit_in_process(softaudit_cache_dir):
    from softaudit.formats import get_format
    from softaudit.options import AuditOptions, WorkerOptions
    from softaudit.reference import default_cache_dir
    from softaudit.runner.loop import run_audit

    assert default_cache_dir() == softaudit_cache_dir
    calls = []
    opts = AuditOptions(case_patterns=["offset-plus-1e3", "seed-softmax-1000-to-5000"],
                        formats=[get_format("float32")], worker=WorkerOptions(isolated=False))
    result = run_audit(["builtin:shifted"], opts, progress=lambda *a: calls.append(a))
    assert result.exit_code == 0
    assert len(result.records) == len(OPS) * 2 * 2  # two cases, forward and backward
    assert {r.verdict for r in result.records} <= {"PASS", "WARN"}
    assert {(r.op, r.case) for r in result.records} == set(
        itertools.product(OPS, ["offset-plus-1e3", "seed-softmax-1000-to-5000"]))
    assert all(r.metrics is not None and r.metrics.worst is not None for r in result.records)
    assert calls and calls[-1][0] == calls[-1][1]  # ends at done == total
    assert any(softaudit_cache_dir.iterdir())

    # The seed changes the generated inputs; the same seed reproduces them.
    def worst_inputs(seed):
        o = AuditOptions(ops=["softmax"], case_patterns=["offset-plus-1e3"], formats=[get_format("float32")], seed=seed,
                         worker=WorkerOptions(isolated=False))
        return [r.metrics.worst.input for r in run_audit(["builtin:shifted"], o).records]

    assert worst_inputs(5) == worst_inputs(5)
    assert worst_inputs(5) != worst_inputs(0)


def test_candidates_with_the_same_name_get_distinct_record_ids(cli, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "impl.py").write_text((EXAMPLES / "seed_numpy.py").read_text())
    out = tmp_path / "dup.json"
    p = cli("run", "a/impl.py", "b/impl.py", "builtin:shifted", "builtin:shifted",
            "--case", "offset-plus-1e3", "--dtype", "float32", "--json", out, "-q", "--no-isolation")
    assert p.returncode == 0, p.stderr
    doc = load_strict(out)
    ids = [r["id"] for r in doc["results"]]
    # two files x 3 ops x 2 directions (their backward records are SKIPs: numpy, no *_backward),
    # and the repeated built-in once: 4 ops x 2 directions
    assert len(ids) == 20 and len(set(ids)) == 20
    assert {c["name"] for c in doc["candidates"]} == {"impl@a/impl.py", "impl@b/impl.py", "builtin:shifted"}


def test_a_record_where_every_element_has_the_wrong_class_reports_no_ulp_figure(cli, tmp_path):
    out = tmp_path / "nan.json"
    p = cli("run", "builtin:naive", "--case", "offset-plus-1e3", "--dtype", "float32", "--op", "softmax",
            "--direction", "forward", "--json", out, "-q", "--no-isolation")
    assert p.returncode == 1
    (rec,) = load_strict(out)["results"]
    assert rec["verdict"] == "FAIL" and rec["class_mismatches"] == rec["elements"]
    assert rec["max_ulp"] is None and rec["max_ratio"] is None and rec["worst"] is None
    assert rec["first_mismatch"]["computed"] == "nan"


def test_json_follows_a_symlink_and_gets_ordinary_permissions(cli, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    p = cli("run", "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32", "--json", link, "-q", "--no-isolation")
    assert p.returncode == 0, p.stderr
    assert link.is_symlink() and load_strict(real)["schema_version"] == 1
    assert real.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bench_prints_a_speed_table_and_writes_the_figures(cli, tmp_path):
    out = tmp_path / "r.json"
    p = cli("run", "builtin:shifted", "--op", "logsumexp", "--case", "offset-plus-1e3", "--dtype", "float32",
            "--bench", "--shape", "4x64", "--shape", "2x256", "--json", out, "--no-isolation")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "speed: builtin:shifted" in p.stdout
    speed_part = p.stdout.split("speed: builtin:shifted", 1)[1]
    line = next(line for line in speed_part.splitlines() if line.strip().startswith("logsumexp bwd"))
    assert re.search(r"\d% · [\d.]+ (ms|µs|ns|s)\s+[\d.e-]+% · [\d.]+ (ms|µs|ns|s)$", line.rstrip()), line
    data = json.loads(out.read_text())
    assert data["options"]["bench"] is True and data["options"]["shapes"] == [[4, 64], [2, 256]]
    assert [s["id"] for s in data["speed"]] == [
        "builtin:shifted/logsumexp/forward/float32/4x64", "builtin:shifted/logsumexp/forward/float32/2x256",
        "builtin:shifted/logsumexp/backward/float32/4x64", "builtin:shifted/logsumexp/backward/float32/2x256"]
    assert all(s["median_s"] > 0 and s["pct_copy_bandwidth"] > 0 and s["skipped"] is None for s in data["speed"])


def test_findings_zero_prints_no_findings_section(cli):
    p = cli("run", "builtin:naive", "--op", "softmax", "--case", "offset-plus-1e3", "--dtype", "float32",
            "--findings", "0", "--no-isolation")
    assert p.returncode == 1
    assert "Worst findings" not in p.stdout and "more (all records are in --json)" not in p.stdout
    assert "Result: FAIL (exit 1)" in p.stdout
