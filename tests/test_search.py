"""softaudit search: planted bugs the case library lacks are found and shrunk; the corpus, the JSON,
the reproducer and bad input.

Documented sizes (README, docs/search.md), each with the default seed 0 on this machine:
* tests/fixtures/planted/multiple_of_seven.py (wrong when n % 7 == 0 and max > 50): found in a few
  seconds, shrunk to 1 x 7, [64.0, 0.0 x6].
* examples/tiled_softmax.py (the remainder tile of an online softmax forgets to rescale when the
  max rises there): found in about 10 seconds, shrunk to 1 x 1025, 1024 zeros then 1.0.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from softaudit.cases.corpus import case_toml, default_corpus_dir, project_root, save_case
from softaudit.cases.inputs import generate
from softaudit.cases.reader import load_cases
from softaudit.cli import app
from softaudit.formats import FORMATS
from softaudit.options import AuditOptions, WorkerOptions
from softaudit.runner.loop import run_audit
from softaudit.search.engine import SearchOptions, case_table, search
from softaudit.search.mutations import Trial
from softaudit.search.shrink import complexity, shrink, simpler_values

REPO = Path(__file__).resolve().parents[1]
SEVEN = REPO / "tests" / "fixtures" / "planted" / "multiple_of_seven.py"
TILED = REPO / "examples" / "tiled_softmax.py"
BACKWARD = REPO / "tests" / "fixtures" / "planted" / "backward_divides.py"
F32 = FORMATS["float32"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import run_cli, run_cli_in_process  # noqa: E402  (the CLI as a subprocess, and in this process)


def options(tmp_path: Path, **kw) -> SearchOptions:
    kw.setdefault("op", "softmax")
    kw.setdefault("budget", 60.0)
    return SearchOptions(save_to=tmp_path / "corpus", worker=WorkerOptions(isolated=False), **kw)


# --------------------------------------------------------------------------
# Planted bugs


def test_tail_tile_bug_is_found_and_shrunk_to_one_row_just_over_a_tile(tmp_path):
    result = search(str(TILED), options(tmp_path, patience=50))
    assert result.found and result.failure == "ratio"
    x = result.minimal.trial.x
    assert x.shape == (1, 1025)  # one full tile of 1024 and a remainder of one: the smallest trigger
    assert np.all(x[0, :1024] == x[0, 0]) and x[0, 1024] > x[0, 0]  # the max rises in the last tile


@pytest.mark.slow
def test_the_case_library_misses_both_planted_bugs():
    """Why search is needed: every shipped case passes both (ratio <= the limit, no FAIL)."""
    result = run_audit([str(SEVEN), str(TILED)], AuditOptions(ops=["softmax"], worker=WorkerOptions(isolated=False)))
    assert result.exit_code == 0, [r.id for r in result.records if r.verdict == "FAIL"]


def test_a_stable_candidate_gives_no_failure_and_saves_nothing(tmp_path):
    result = search("builtin:shifted", options(tmp_path, budget=2.0))
    assert not result.found and result.exit_code == 0
    assert result.worst is not None and result.worst.score < 4
    assert result.evaluations > 10
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("signum, code", [(None, 130), (15, 143)])
def test_an_interrupted_search_states_its_real_exit_code(tmp_path, signum, code):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same stop) mid-search: the JSON's exit_code
    and the last line say "incomplete: interrupted (exit 130)" (143), never a PASS's exit 0."""
    from rich.console import Console

    from softaudit.reports.search_report import render_search, search_json

    calls = []

    def stop_after_a_few(*_args) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    result = search("builtin:shifted", options(tmp_path, budget=30.0), progress=stop_after_a_few)
    result.interrupted_by = signum
    assert not result.complete and not result.found and len(calls) == 5
    assert result.exit_code == code and json.loads(search_json(result))["exit_code"] == code
    console = Console(record=True, width=200)
    render_search(result, console)
    assert console.export_text().strip().splitlines()[-1] == f"Result: incomplete: interrupted (exit {code})"


def test_a_hard_failure_stops_exploring_and_keeps_its_class_while_shrinking(tmp_path):
    result = search("builtin:naive", options(tmp_path, format=FORMATS["float16"]))
    assert result.failure == "finite->nan"
    assert result.minimal.trial.shape == (1, 1)
    assert "finite->nan" in result.minimal.classes
    # Found again: the same content hash, nothing rewritten.
    again = search("builtin:naive", options(tmp_path, format=FORMATS["float16"]))
    assert again.case_path == result.case_path and not again.case_new
    assert len(list((tmp_path / "corpus").glob("*.toml"))) == 1


def test_cross_entropy_and_backward_searches_save_cases_that_reproduce(tmp_path):
    ce = search("builtin:naive", options(tmp_path, op="cross_entropy"))
    assert ce.found
    table = load_cases([ce.case_path], include_default=False)[0]
    assert table.param("target") == tuple(ce.minimal.trial.target)
    bwd = search(str(BACKWARD), options(tmp_path, op="softmax", direction="backward", format=FORMATS["float16"]))
    assert bwd.found and bwd.failure == "finite->nan"
    assert bwd.minimal.trial.x.size <= 2  # one entry with probability 0 beside the one that holds it all
    case = load_cases([bwd.case_path], include_default=False)[0]
    assert case.directions == ("backward",) and case.param("upstream") == "ones"
    audit = run_audit([str(BACKWARD)], AuditOptions(ops=["softmax"], directions=["backward"], jobs=1,
                                                    formats=[FORMATS["float16"]], case_patterns=[case.name],
                                                    corpus_dir=tmp_path / "corpus", worker=WorkerOptions(isolated=False)))
    assert [r.verdict for r in audit.records] == ["FAIL"]


# --------------------------------------------------------------------------
# Shrinking and the corpus, without a candidate


def test_shrinking_a_predicate_finds_the_smallest_simplest_input():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(0, 30, (3, 700)), 3).astype(np.float32).astype(np.float64)
    x[1, 500] = 90.123

    def fails(t: Trial) -> bool:
        return t.x.shape[1] % 7 == 0 and float(np.nanmax(t.x)) > 50

    small, stats = shrink(Trial(x), fails, F32, seconds=60)
    assert stats.complete and small.x.shape == (1, 7)
    assert sorted(small.x[0]) == [0.0] * 6 + [64.0]


def test_complexity_orders_values_as_a_reader_would():
    assert complexity(0.0) < complexity(1.0) < complexity(3.0) < complexity(1.5 * 2**-20)
    assert complexity(64.0) < complexity(2.0**112)
    assert complexity(1.0) < complexity(-1.0)
    for v in simpler_values(100.3, F32):
        assert complexity(v) < complexity(100.3)
        assert np.float32(v) == v
    assert simpler_values(100.3, F32)[0] == 0.0


def test_case_files_write_every_value_exactly(tmp_path):
    specials = [math.inf, -math.inf, math.nan, -0.0, 0.0, 2.0**-24, 65504.0, 1 / 3, -1e-300, 2.0**-1074]
    for fmt in FORMATS.values():
        x = np.array([specials], dtype=np.float64).astype(fmt.np_dtype).astype(np.float64)
        table = case_table(Trial(x), "logsumexp", "forward", fmt, f"exact-{fmt.name}", "values written exactly")
        path, new = save_case(table, tmp_path)
        assert new
        case = load_cases([path], include_default=False)[0]
        assert generate(case, fmt).astype(np.float64).tobytes() == x.tobytes()
    text = case_toml({"data": [[-0.0, math.inf, 1e300]]})
    assert "-0.0, inf, 1e+300" in text


def test_the_default_corpus_is_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTAUDIT_CORPUS_DIR")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "src" / "kernels").mkdir(parents=True)
    assert project_root(tmp_path / "src" / "kernels") == tmp_path
    assert default_corpus_dir(tmp_path / "src" / "kernels") == tmp_path / ".softaudit" / "corpus"


# --------------------------------------------------------------------------
# The command line


def test_multiple_of_seven_is_found_shrunk_saved_reproduced_and_caught_by_the_next_run(tmp_path):
    """The planted bug no shipped case has (n % 7 == 0 and max > 50), end to end from the command line."""
    corpus = tmp_path / "found"
    proc = run_cli(["search", SEVEN, "--op", "softmax", "--budget", "60", "--patience", "50", "--save-to", corpus,
                    "--json", tmp_path / "s.json"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Minimal failing input (float32, 1 x 7; every value exact):" in proc.stdout
    assert "row 0: [64.0, 0.0 ×6]" in proc.stdout
    doc = json.loads((tmp_path / "s.json").read_text())
    assert (doc["op"], doc["direction"], doc["format"], doc["failure"]) == ("softmax", "forward", "float32", "ratio")
    assert doc["input"] == [[64.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] and doc["found"] and doc["exit_code"] == 1
    assert doc["stability_ratio"] > 1000 and doc["error_ulp"] == 262144
    assert Path(doc["case_path"]).parent == corpus and Path(doc["case_path"]).exists()
    # The saved case regenerates the minimal input exactly, whatever --seed a later run uses.
    case = load_cases([Path(doc["case_path"])], include_default=False)[0]
    assert case.family == "found" and case.ops == ("softmax",) and case.formats == ("float32",)
    for seed in (0, 5):
        assert generate(case, F32, seed=seed).astype(np.float64).tolist() == doc["input"]
    # The reproducer printed is a script that runs and shows the computed value.
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Reproducer (softaudit repro)" in line) + 1
    end = next(i for i in range(start, len(lines)) if lines[i] and set(lines[i]) == {"─"})
    (tmp_path / "repro.py").write_text("\n".join(lines[start:end]) + "\n")
    rep = subprocess.run([sys.executable, "repro.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert rep.returncode == 0, rep.stderr
    assert "computed:       1.015625" in rep.stdout
    # The next `softaudit run` catches it from the corpus; --no-corpus leaves it out.
    run = run_cli_in_process(["run", SEVEN, "--dtype", "float32", "--case", "found", "--corpus", corpus, "--no-isolation"],
                             tmp_path)
    assert run.returncode == 1 and doc["case_name"] in run.stdout
    off = CliRunner().invoke(app, ["run", str(SEVEN), "--dtype", "float32", "--case", "found", "--no-corpus"])
    assert off.exit_code == 2 and "no case matches 'found'" in off.output


@pytest.mark.parametrize("args, message", [
    (["builtin:naive", "--op", "softmin"], "unknown op 'softmin'"),
    ([str(SEVEN), "--op", "logsumexp"], "defines no logsumexp (it defines softmax)"),
    (["builtin:naive", "--op", "softmax", "--budget", "0"], "--budget must be a positive number"),
    (["builtin:naive", "--op", "softmax", "--patience", "0"], "--patience must be 1 or more"),
    (["builtin:naive", "--op", "softmax", "--dtype", "float8"], "unknown format"),
    (["builtin:naive", "--op", "softmax", "--direction", "sideways"], "unknown --direction"),
    ([str(REPO / "tests" / "fixtures" / "two_named.py"), "--op", "softmax"], "choose one with --candidate NAME"),
    ([str(REPO / "tests" / "fixtures" / "faults" / "import_error.py"), "--op", "softmax"], "import_error.py"),
    (["builtin:naive", "--op", "softmax", "--save-to", "a-file"], "--save-to: 'a-file' is not a directory"),
    (["builtin:naive", "--op", "softmax", "--repro", "a-file"], "exists (softaudit never overwrites it"),
])
def test_cli_search_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    result = CliRunner().invoke(app, ["search", *args, "--no-isolation"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "a-file").read_text() == "mine"
