"""The commands over results files, as a user types them: run --json/--html/--md/--junit, report,
repro and compare, with their exit codes and their refusals (bad input: one line, exit 2, nothing
of the user's overwritten). The run that makes the results file is a subprocess; the commands over
it run the CLI's entry point in this process (test_cli.run_cli_in_process)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_cli import run_cli, run_cli_in_process

ARGS = ["builtin:naive", "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32", "--direction", "forward"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """One small audit with FAILs (naive) and PASSes (shifted), its JSON and its reports."""
    tmp = tmp_path_factory.mktemp("reports")
    p = run_cli(["run", *ARGS, "--json", "r.json", "--html", "run.html", "--md", "run.md", "--junit", "run.xml"], tmp)
    assert p.returncode == 1, p.stderr
    assert "Written: r.json, run.html, run.md, run.xml" in " ".join(p.stdout.split())
    return tmp / "r.json"


def test_report_writes_the_same_files_as_run(results):
    tmp = results.parent
    p = run_cli_in_process(["report", "r.json", "--html", "r.html", "--md", "r.md", "--junit", "r.xml"], tmp)
    assert p.returncode == 0, p.stderr
    for ext in ("md", "xml"):
        assert (tmp / f"r.{ext}").read_text() == (tmp / f"run.{ext}").read_text().replace("run.", "r."), ext
    html = (tmp / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "http://" not in html and "https://" not in html
    suites = ET.parse(tmp / "r.xml").getroot()
    doc = json.loads(results.read_text())
    assert int(suites.get("tests")) == len(doc["results"])
    assert int(suites.get("failures")) == doc["summary"]["fail"] > 0


def test_report_refuses_bad_input_without_touching_anything(results):
    tmp = results.parent
    before = results.read_bytes()
    for args, message in [
        (["report", "r.json"], "nothing to write"),
        (["report", "missing.json", "--md", "x.md"], "missing.json: no such file"),
        (["report", "r.json", "--md", "r.json"], "would overwrite the results file"),
        (["report", "r.json", "--md", "nodir/x.md"], "does not exist"),
        (["report", "r.json", "--md", "same.md", "--junit", "same.md"], "name the same file"),
    ]:
        p = run_cli_in_process(args, tmp)
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    (tmp / "broken.json").write_text('{"results": [', encoding="utf-8")
    p = run_cli_in_process(["report", "broken.json", "--md", "x.md"], tmp)
    assert p.returncode == 2 and "not valid JSON" in p.stderr and "Traceback" not in p.stderr
    assert results.read_bytes() == before and not (tmp / "x.md").exists()


def test_repro_writes_a_script_that_prints_the_recorded_values(results):
    tmp = results.parent
    doc = json.loads(results.read_text())
    rec = next(r for r in doc["results"] if r["verdict"] == "FAIL" and (r["first_mismatch"] or r["worst"]))
    p = run_cli_in_process(["repro", "r.json", rec["id"], "-o", "repro_case.py"], tmp)
    assert p.returncode == 0, p.stderr
    done = subprocess.run([sys.executable, "repro_case.py"], cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={**_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    loc = rec["first_mismatch"] or rec["worst"]
    assert f"exact:          {loc['exact']}" in done.stdout
    # An existing file is never overwritten without --force; an unknown id is bad input.
    p = run_cli_in_process(["repro", "r.json", rec["id"], "-o", "repro_case.py"], tmp)
    assert p.returncode == 2 and "exists" in p.stderr
    p = run_cli_in_process(["repro", "r.json", "nobody/softmax/forward/float32/x"], tmp)
    assert p.returncode == 2 and "no record" in p.stderr


def _env() -> dict:
    import os

    return dict(os.environ)


def test_compare_exits_1_on_regression_and_0_on_the_same(results):
    tmp = results.parent
    assert run_cli_in_process(["compare", "r.json", "r.json"], tmp).returncode == 0
    # The same kernel, renamed: shifted's records now come from the naive algorithm.
    doc = json.loads(results.read_text())
    shifted = {r["id"].replace("builtin:shifted", "X"): r for r in doc["results"] if r["candidate"] == "builtin:shifted"}
    naive = [r for r in doc["results"] if r["candidate"] == "builtin:naive"]
    worse = dict(doc, results=[dict(r, candidate="builtin:shifted", target="builtin:shifted",
                                    id=r["id"].replace("builtin:naive", "builtin:shifted")) for r in naive])
    assert len(shifted) == len(naive)
    base = dict(doc, results=[r for r in doc["results"] if r["candidate"] == "builtin:shifted"])
    (tmp / "base.json").write_text(json.dumps(base), encoding="utf-8")
    (tmp / "new.json").write_text(json.dumps(worse), encoding="utf-8")
    p = run_cli_in_process(["compare", "base.json", "new.json", "--json", "cmp.json"], tmp)
    assert p.returncode == 1, p.stdout
    assert "regression" in p.stdout and "builtin:shifted/softmax/forward/float32/offset-plus-1e3" in p.stdout
    assert json.loads((tmp / "cmp.json").read_text())["regressions"]
    p = run_cli_in_process(["compare", "new.json", "base.json"], tmp)
    assert p.returncode == 0 and "improvement" in p.stdout
    p = run_cli_in_process(["compare", "base.json", "new.json", "--factor", "0.5"], tmp)
    assert p.returncode == 2 and "--factor" in p.stderr
