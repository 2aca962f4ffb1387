"""`softaudit repro`: scripts written for real records rebuild the input, call the candidate and
print the exact, rounded and computed values the results show; records with nothing to
reproduce are refused with one line."""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from softaudit.formats import FORMATS
from softaudit.judging.metrics import Location
from softaudit.judging.verdicts import describe, fmt_value
from softaudit.options import AuditOptions, CacheOptions, WorkerOptions
from softaudit.repro import repro_script
from softaudit.results.document import ResultsDocument, ResultsError, rerun_command
from softaudit.results.schema import document_of
from softaudit.runner.loop import run_audit

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ROOT / "tests" / "fixtures" / "faults"

FORWARD_FAIL = "builtin:naive/softmax/forward/float32/gap-87.3"
"""Naive softmax: exp overflows on 2 of 256 elements (NaN), and subnormal results flush to 0: a worst element."""
LARGE_INPUT = "builtin:naive/softmax/forward/float32/sum-overflow-float32"
"""1 x 8192: above the embedding limit, so the script regenerates its input."""
BACKWARD = "builtin:shifted/softmax/backward/float32/gap-87.3"
LOSS_FORWARD = "builtin:naive/cross_entropy/forward/float32/ce-offset-plus-1e8"
"""Every per-row loss is NaN: the finding is a first class mismatch, not a worst element."""
LOSS_BACKWARD = "builtin:naive/cross_entropy/backward/float32/gap-87.3"
SKIPPED = "builtin:naive/cross_entropy/forward/float32/ce-smoothing-0.1-finfo-min-mask"


RAISES = FAULTS / "raises.py"
"""Its log_softmax raises: a FAIL record without values."""
IMPORT_ERROR = FAULTS / "import_error.py"


@pytest.fixture(scope="module")
def audit(softaudit_cache_dir: Path) -> ResultsDocument:
    """One small float32 audit of the naive and shifted built-ins and two faulty files, as a results document."""
    options = AuditOptions(case_patterns=["gap-87.3", "sum-overflow-float32", "ce-offset-plus-1e8",
                                          "ce-smoothing-0.1-finfo-min-mask"],
                           formats=[FORMATS["float32"]], worker=WorkerOptions(isolated=False),
                           cache=CacheOptions(directory=softaudit_cache_dir))
    targets = ["builtin:naive", "builtin:shifted", str(RAISES), str(IMPORT_ERROR)]
    return document_of(run_audit(targets, options))


def _run(script: str, tmp_path: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """Write the script and run it as a user would: its own process, another directory."""
    path = tmp_path / "repro.py"
    path.write_text(script, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOFTAUDIT_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, str(path), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def script_run(tmp_path_factory, softaudit_cache_dir: Path):
    """run(script): _run's result for a script, run once per module (the same script gives the same
    output: the tests that read a record's script output share one process instead of starting two)."""
    done: dict[str, subprocess.CompletedProcess] = {}

    def run(script: str) -> subprocess.CompletedProcess:
        if script not in done:
            done[script] = _run(script, tmp_path_factory.mktemp("repro"), softaudit_cache_dir)
        return done[script]
    return run


_LABELS = ("exact", "rounded exact", "computed", "error", "reproduced", "in the results", "output")


def _printed(stdout: str) -> dict[str, list[str]]:
    """The script's "label: value" lines, by label, in order."""
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        m = re.match(rf"^({'|'.join(_LABELS)}):\s+(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def _same_float(text: str, value: float) -> bool:
    v = float(text)
    return (math.isnan(v) and math.isnan(value)) or v == value


@pytest.mark.parametrize("record_id", [FORWARD_FAIL, LARGE_INPUT, BACKWARD, LOSS_FORWARD, LOSS_BACKWARD])
def test_the_script_prints_the_values_the_record_shows(audit, record_id, script_run):
    record = audit.record(record_id)
    m = record.metrics
    assert m is not None
    loc = m.first_mismatch or m.worst  # the element the verdict is about first
    assert loc is not None
    if record_id in (FORWARD_FAIL, LARGE_INPUT):
        assert record.verdict == "FAIL" and m.worst is not None
    if record_id == LOSS_FORWARD:
        assert m.worst is None and math.isnan(loc.computed)

    script = repro_script(audit, record_id)
    done = script_run(script)
    assert done.returncode == 0, done.stderr
    printed = _printed(done.stdout)
    assert printed["exact"] == [loc.exact]
    assert printed["rounded exact"] == [fmt_value(loc.rounded_exact)]
    assert _same_float(printed["rounded exact"][0], loc.rounded_exact)
    assert printed["computed"] == [fmt_value(loc.computed)]
    assert _same_float(printed["computed"][0], loc.computed)
    # Error in ulps, envelope and ratio, in the words of the record's reasons.
    assert printed["reproduced"] == [describe(loc)]
    counts = f"{m.elements} value{'' if m.elements == 1 else 's'}: {m.nan_out} NaN, {m.inf_out} inf"
    assert printed["in the results"] == [counts, describe(loc)]
    assert printed["output"][0].startswith(f"{counts} (")


def test_small_inputs_are_embedded_and_large_ones_regenerated(audit):
    small, large = repro_script(audit, FORWARD_FAIL), repro_script(audit, LARGE_INPUT)
    assert "X_HEX = [" in small and 'REPRO["input"]["hex"] = X_HEX' in small
    assert "X_HEX" not in large and '"sha256": ' in large  # regenerated from its case, then checked
    for source in (small, large):
        compile(source, "repro.py", "exec")


@pytest.mark.parametrize("record_id", [FORWARD_FAIL, LOSS_BACKWARD])
def test_the_script_uses_nothing_of_softaudit_but_reproduce(audit, record_id):
    tree = ast.parse(repro_script(audit, record_id))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "argparse", "json", "sys", "softaudit"}
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "softaudit"}
    assert used == {"reproduce"}


def _renamed_copy(tmp_path: Path) -> Path:
    """softaudit copied, with two internal modules renamed and every import of them rewritten: the
    judging package (judging -> judgement) and the module behind reproduce (reproduction -> rerun)."""
    root = tmp_path / "renamed"
    shutil.copytree(ROOT / "softaudit", root / "softaudit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cases", root / "cases")  # the case library, beside the package as in a checkout
    package = root / "softaudit"
    (package / "judging").rename(package / "judgement")
    (package / "reproduction.py").rename(package / "rerun.py")
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        renamed = re.sub(r"\bsoftaudit\.judging\b", "softaudit.judgement", text)
        renamed = re.sub(r"\bsoftaudit\.reproduction\b", "softaudit.rerun", renamed)
        if renamed != text:
            path.write_text(renamed, encoding="utf-8")
    return root


@pytest.mark.parametrize("record_id", [FORWARD_FAIL, LOSS_BACKWARD])
def test_a_saved_script_runs_after_an_internal_rename(audit, record_id, tmp_path, softaudit_cache_dir, script_run):
    """Scripts call only softaudit.reproduce: one written now runs against a softaudit whose
    internal modules have since been renamed, and prints what it printed before."""
    script = repro_script(audit, record_id)
    before = script_run(script)  # against this softaudit (shared with the test above)
    assert before.returncode == 0, before.stderr
    (tmp_path / "repro.py").write_text(script, encoding="utf-8")
    root = _renamed_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root), "SOFTAUDIT_CACHE_DIR": str(softaudit_cache_dir)}
    probe = subprocess.run([sys.executable, "-c", "import softaudit, softaudit.rerun; print(softaudit.__file__)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == str(root / "softaudit" / "__init__.py"), probe.stderr
    after = subprocess.run([sys.executable, str(tmp_path / "repro.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    assert _printed(after.stdout)["reproduced"] == [describe(audit.record(record_id).metrics.first_mismatch
                                                             or audit.record(record_id).metrics.worst)]


def test_the_docstring_names_the_record_its_verdict_first_reason_and_command(audit):
    record = audit.record(FORWARD_FAIL)
    doc = ast.get_docstring(ast.parse(repro_script(audit, FORWARD_FAIL)), clean=False)
    assert doc is not None
    assert doc.startswith(f"Reproduce softaudit record {FORWARD_FAIL}")
    assert f": {record.verdict}\n" in doc
    assert " ".join(record.reasons[0].split()) in " ".join(doc.split())
    assert rerun_command(record, audit) in doc


def test_untrusted_text_cannot_break_out_of_the_script(audit):
    record = audit.record(FORWARD_FAIL)
    evil = 'end """; import os; os._exit(9) # \\ \x1b[31m \u2028 \'\'\''
    forged = dataclasses.replace(record, reasons=[evil], case_description=evil)
    doc = dataclasses.replace(audit, records=[forged])
    tree = ast.parse(repro_script(doc, FORWARD_FAIL))
    docstring = ast.get_docstring(tree, clean=False)
    assert docstring is not None and evil in docstring  # one line each: wrapped, but whole at 92 chars
    # Nothing but the docstring, imports, constants and functions: no statement smuggled in.
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Import", "Assign", "FunctionDef", "If"}
    assert sum(isinstance(node, ast.Expr) for node in tree.body) == 1


def test_a_failed_call_is_reproduced_as_the_failure(audit, tmp_path, softaudit_cache_dir):
    record = audit.record("raises/log_softmax/forward/float32/gap-87.3")
    assert record.verdict == "FAIL" and record.error and record.metrics is None
    done = _run(repro_script(audit, record.id), tmp_path, softaudit_cache_dir)
    assert done.returncode == 0, done.stderr
    printed = _printed(done.stdout)
    assert printed["output"] == [f"the call failed: {record.error}"]
    assert printed["in the results"] == [f"the call failed: {record.error}"]


def test_a_missing_candidate_file_exits_2_with_one_line(audit, tmp_path, softaudit_cache_dir):
    missing = tmp_path / "gone" / "impl.py"
    done = _run(repro_script(audit, FORWARD_FAIL), tmp_path, softaudit_cache_dir, "--target", str(missing))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "not found" in lines[0]


def test_an_unknown_id_is_refused(audit):
    with pytest.raises(ResultsError, match="no record"):
        repro_script(audit, "builtin:naive/softmax/forward/float32/no-such-case")


def test_a_skip_record_is_refused_saying_why(audit):
    record = audit.record(SKIPPED)
    assert record.verdict == "SKIP"
    with pytest.raises(ResultsError, match="skipped") as exc:
        repro_script(audit, SKIPPED)
    assert record.reasons[0] in str(exc.value) and "\n" not in str(exc.value)


def test_an_import_failure_is_refused(audit):
    (record,) = [r for r in audit.records if r.op == "import"]
    assert record.target == str(IMPORT_ERROR)
    with pytest.raises(ResultsError, match="import failure") as exc:
        repro_script(audit, record.id)
    assert "\n" not in str(exc.value)


def _with(doc: ResultsDocument, record_id: str, **changes) -> ResultsDocument:
    return dataclasses.replace(doc, records=[dataclasses.replace(doc.record(record_id), **changes)])


def test_a_case_gone_from_the_library_is_refused(audit):
    doc = _with(audit, FORWARD_FAIL, case="gap-87.3-renamed")
    with pytest.raises(ResultsError, match="not in the case library any more"):
        repro_script(doc, "builtin:naive/softmax/forward/float32/gap-87.3-renamed")


def test_a_candidate_file_gone_is_refused(audit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = _with(audit, FORWARD_FAIL, target="impl.py", candidate="impl")
    with pytest.raises(ResultsError, match="cannot be found"):
        repro_script(doc, "impl/softmax/forward/float32/gap-87.3")


def test_a_case_that_now_generates_another_input_is_refused(audit):
    record = audit.record(FORWARD_FAIL)
    moved = dict(record.input_summary, max=record.input_summary["max"] + 1.0)
    with pytest.raises(ResultsError, match="changed since the run"):
        repro_script(_with(audit, FORWARD_FAIL, input_summary=moved), FORWARD_FAIL)
    assert record.excerpt is not None
    row, (col, value) = record.excerpt["row"], record.excerpt["values"][0]
    shifted = {**record.excerpt, "values": [[col, value + 1.0]] + record.excerpt["values"][1:]}
    with pytest.raises(ResultsError, match=rf"row {row}, col {col}"):
        repro_script(_with(audit, FORWARD_FAIL, excerpt=shifted), FORWARD_FAIL)


def test_describe_words_an_element_as_the_reasons_do(audit):
    record = audit.record(FORWARD_FAIL)
    assert record.metrics is not None and record.metrics.worst is not None
    detail = describe(record.metrics.worst)
    assert any(f"worst at {detail}" in reason for reason in record.reasons)
    mismatch = Location(row=1, col=None, input=2.0, computed=math.nan, rounded_exact=1.5, exact="1.5")
    assert describe(mismatch) == "row 1: max input 2.0, exact 1.5, computed nan"


@pytest.mark.parametrize("cases_dir", ["x'; touch pwned; echo '", 'a "b" \\c $(touch pwned) `touch pwned`'])
def test_the_rerun_line_in_the_file_is_correctly_quoted(audit, tmp_path, cases_dir):
    """A --cases-dir named ``x'; touch pwned; echo '`` reached the docstring as an escaped line
    whose quoting no longer held: pasted into a shell, it ran ``touch``. The line as it stands in the
    file is now the shell-quoted command itself (in a comment where a docstring would escape it)."""
    evil_dir = tmp_path / cases_dir
    evil_dir.mkdir()
    (evil_dir / "extra.toml").write_text('[[case]]\nname = "quoting-extra"\nfamily = "shapes"\n'
                                         'description = "a case of the user\'s"\nrows = 1\nn = 2\n')
    cases_dir = str(evil_dir)
    doc = dataclasses.replace(audit, options={**audit.options, "cases_dirs": [cases_dir]})
    source = repro_script(doc, FORWARD_FAIL)
    expected = rerun_command(doc.record(FORWARD_FAIL), doc)
    lines = [line.strip().lstrip("#").strip() for line in source.splitlines()]
    assert expected in lines  # verbatim, as written to the file
    parsed = subprocess.run(["bash", "-n", "-c", expected], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    printed = subprocess.run(["bash", "-c", "softaudit() { printf '%s\\n' \"$@\"; }; " + expected],
                             cwd=tmp_path, capture_output=True, text=True)
    assert printed.stdout.splitlines()[-1] == cases_dir and printed.stdout.splitlines()[0] == "run"
    assert not (tmp_path / "pwned").exists()
    compile(source, "repro.py", "exec")


def test_reproduce_from_python_takes_a_bare_record_and_judges_as_the_audit(audit, softaudit_cache_dir, monkeypatch):
    import softaudit
    from softaudit.results.schema import record_dict

    monkeypatch.setenv("SOFTAUDIT_CACHE_DIR", str(softaudit_cache_dir))
    record = audit.record(FORWARD_FAIL)
    printed: list[str] = []
    found = softaudit.reproduce(record_dict(record), echo=printed.append)
    assert found.verdict == record.verdict == found.recorded_verdict and found.reasons == record.reasons
    assert found.metrics is not None and record.metrics is not None
    for key in ("elements", "class_mismatches", "mismatch_kinds", "max_ulp", "max_ratio", "above_limit"):
        assert getattr(found.metrics, key) == getattr(record.metrics, key)
    assert found.element is not None and describe(found.element) == describe(record.metrics.first_mismatch)
    assert printed[0].startswith(f"reproducing {FORWARD_FAIL} with ")
    with pytest.raises(ValueError, match="skipped"):
        softaudit.reproduce(record_dict(audit.record(SKIPPED)), echo=None)
