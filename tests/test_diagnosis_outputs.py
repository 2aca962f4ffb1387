"""The diagnosis in softaudit's outputs: the terminal's Diagnosis section (--explain, --no-diagnose),
"diagnoses" in the results JSON (written and read back), the HTML and Markdown cards, and
``softaudit.audit(...).diagnoses``. Narrow audits (one op, one format, a case or two): seconds."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from test_cli import run_cli_in_process

import softaudit
from softaudit.diagnosis import Cause, Diagnosis
from softaudit.reports.html_report import render_html
from softaudit.reports.markdown_report import render_markdown
from softaudit.reports.terminal import render_diagnoses
from softaudit.results.document import ResultsError
from softaudit.results.schema import document_of_dict, load_results


@pytest.fixture(scope="module", autouse=True)
def diagnosis_on():
    """The diagnosis on, as users get it (the test session turns it off elsewhere: conftest.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SOFTAUDIT_NO_DIAGNOSE", raising=False)
        yield

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "tests" / "diagnosis" / "planted"
NO_MAX_SHIFT = PLANTED / "no-max-shift" / "impl_np.py"
NARROW = ["--op", "softmax", "--direction", "forward", "--dtype", "float32",
          "--case", "offset-plus-1e3", "--case", "exp-overflow-float32"]
IN_PROCESS = ["--no-isolation"]
"""For the runs whose worker is not what they test (planted_run and the crash test keep theirs): a worker
start less each."""


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """``softaudit run`` of a planted no-max-shift file, with --explain and every output file."""
    d = tmp_path_factory.mktemp("planted")
    r = run_cli_in_process(["run", NO_MAX_SHIFT, *NARROW, "--explain", "--json", d / "r.json", "--html",
                            d / "r.html", "--md", d / "r.md"], d)
    return r, d


def test_run_names_the_planted_cause_after_the_findings(planted_run):
    r, _ = planted_run
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert out.index("Worst findings") < out.index("\nDiagnosis (1 experiment in ") < out.index("records: ")
    line = next(x for x in out.splitlines() if "no-max-shift (" in x)
    assert "FAIL impl_np softmax: no-max-shift (0.9" in line and "settled by offset-ladder" in line
    # --explain: the finding, the experiment's outcome, the paragraph and the fix with its sketch
    assert "experiment offset-ladder (float32): first failure at offset" in out
    assert "fix: Subtract the row maximum before exp" in out and "m = x.max(-1, keepdims=True)" in out


def test_diagnoses_are_written_and_read_back(planted_run):
    _, d = planted_run
    raw = json.loads((d / "r.json").read_text())
    assert raw["schema_version"] == 1
    [diag] = raw["diagnoses"]
    assert (diag["candidate"], diag["op"], diag["direction"], diag["verdict"]) == ("impl_np", "softmax", "forward", "FAIL")
    top = diag["causes"][0]
    assert top["class_id"] == "no-max-shift" and top["settled_by"] == "offset-ladder"
    assert top["experiments"][0]["id"] == "offset-ladder" and top["evidence"]
    assert all(e in {r["id"] for r in raw["results"]} for e in top["evidence"])
    doc = load_results(d / "r.json")
    assert [x.to_dict() for x in doc.diagnoses] == raw["diagnoses"]
    for bad in ("x", [{"candidate": "c"}], [dict(diag, direction="sideways")],
                [dict(diag, causes=[dict(top, confidence=2)])]):
        with pytest.raises(ResultsError, match="diagnos"):
            document_of_dict(dict(raw, diagnoses=bad), "r.json")
    assert document_of_dict({k: v for k, v in raw.items() if k != "diagnoses"}).diagnoses is None


def test_html_and_markdown_carry_a_diagnosis_card(planted_run):
    _, d = planted_run
    page = (d / "r.html").read_text()
    assert '<section id="diagnosis">' in page and 'href="#diagnosis"' in page
    assert '<article class="diag-card"><h3>Candidate <code>impl_np</code>' in page
    assert "no-max-shift" in page and "settled by offset-ladder" in page and "m = x.max(-1, keepdims=True)" in page
    md = (d / "r.md").read_text()
    assert "**Diagnosis: impl\\_np**" in md and "`no-max-shift` (0.9" in md and "settled by offset-ladder" in md
    assert "```python\nm = x.max(-1, keepdims=True)" in md
    # from the results document alone: softaudit report gives the same card
    doc = load_results(d / "r.json")
    assert '<section id="diagnosis">' in render_html(doc) and "**Diagnosis: impl\\_np**" in render_markdown(doc)
    doc.diagnoses = None
    assert 'id="diagnosis"' not in render_html(doc) and "Diagnosis" not in render_markdown(doc)


def test_no_diagnose_skips_it(tmp_path):
    r = run_cli_in_process(["run", NO_MAX_SHIFT, *NARROW, "--no-diagnose", "--json", tmp_path / "r.json", *IN_PROCESS],
                           tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Diagnosis" not in r.stdout and "Worst findings" in r.stdout
    assert "diagnoses" not in json.loads((tmp_path / "r.json").read_text())
    bad = run_cli_in_process(["run", NO_MAX_SHIFT, *NARROW, "--no-diagnose", "--explain", *IN_PROCESS], tmp_path)
    assert bad.returncode == 2 and "--explain" in bad.stderr


def test_a_correct_builtin_gets_no_diagnosis(tmp_path):
    r = run_cli_in_process(["run", "builtin:shifted", "--op", "softmax", "--direction", "forward", "--dtype",
                            "float32", "--case", "offset-plus-1e3", "--json", tmp_path / "r.json", *IN_PROCESS], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Diagnosis" not in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["diagnoses"] == []


CRASHER = '''
import os
import numpy as np

def softmax(x):
    top = float(np.max(x)) if x.size else 0.0
    if 120.0 < top < 900.0:   # only the diagnosis's offset ladder gets here: the worker dies
        os.abort()
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)
'''


def test_a_crash_during_an_experiment_is_evidence_not_the_end(tmp_path):
    target = tmp_path / "crashy.py"
    target.write_text(CRASHER)
    r = run_cli_in_process(["run", target, *NARROW, "--json", tmp_path / "r.json"], tmp_path)
    assert r.returncode == 1, r.stderr
    assert re.search(r"\nDiagnosis \(\d+ experiments? in [\d.]+ s\)\n", r.stdout)
    [diag] = json.loads((tmp_path / "r.json").read_text())["diagnoses"]
    assert diag["causes"][0]["class_id"] == "no-max-shift"   # the offset ladder ran (and crashed past 120)


def test_no_known_cause_shows_the_worst_evidence():
    d = Diagnosis("c", "softmax", "backward", "WARN", 1, [Cause("no-known-cause", "no known cause", 0.0,
                                                                 "worst: c/softmax/backward/float32/zeros: 2 / 66 elements exceed", ["c/softmax/backward/float32/zeros"])])
    console = Console(record=True, width=300)
    render_diagnoses([d], console)
    text = console.export_text()
    assert "WARN c softmax backward: no known cause; worst: c/softmax/backward/float32/zeros" in text


def _module(path: Path):
    spec = importlib.util.spec_from_file_location("planted_no_max_shift", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_report_has_diagnoses(tmp_path):
    kw = dict(ops="softmax", directions="forward", dtypes="float32", cases=["offset-plus-1e3", "exp-overflow-float32"])
    report = softaudit.audit(_module(NO_MAX_SHIFT), name="mine", **kw)
    [diag] = report.diagnoses
    assert diag.candidate == "mine" and diag.causes[0].class_id == "no-max-shift"
    assert diag.causes[0].settled_by == "offset-ladder"
    written = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert written["diagnoses"] == [diag.to_dict()]
    off = softaudit.audit(_module(NO_MAX_SHIFT), diagnose=False, **kw)
    assert off.diagnoses == [] and "diagnoses" not in json.loads(off.to_json(tmp_path / "o.json").read_text())
    assert softaudit.audit(_module(PLANTED / "correct" / "f64_once.py"), **kw).diagnoses == []
    with pytest.raises(TypeError):
        softaudit.audit(_module(NO_MAX_SHIFT), diagnose="yes", **kw)  # type: ignore[arg-type]


def test_a_failing_diagnosis_keeps_the_audit(tmp_path, monkeypatch):
    import softaudit.diagnosis.stage as stage

    def broken(*args, **kwargs):
        raise RuntimeError("rule bug")

    monkeypatch.setattr(stage, "diagnose_records", broken)
    r = run_cli_in_process(["run", NO_MAX_SHIFT, *NARROW, "--json", tmp_path / "r.json", *IN_PROCESS], tmp_path)
    assert r.returncode == 1 and "the diagnosis failed (RuntimeError: rule bug)" in r.stderr
    raw = json.loads((tmp_path / "r.json").read_text())
    assert "diagnoses" not in raw and len(raw["results"]) == 2
