"""The CI gate: [tool.softaudit] configuration, per-op/format limits, --strict, --max-ulp and the
relative rule (--relative-to)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_cli import run_cli_in_process as run_cli  # the CLI entry point, in this process

from softaudit.config import ConfigError, find_config, load_config
from softaudit.judging.metrics import Location, RecordMetrics
from softaudit.judging.verdicts import FAIL, PASS, WARN, Gate, Limits, apply_relative_rule, decide
from softaudit.results.records import Record

SHIFTED_NUMPY = """import numpy as np
def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""

NAIVE_NUMPY = """import numpy as np
def softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
"""


def _metrics(max_ulp: float, ratio: float) -> RecordMetrics:
    loc = Location(row=0, col=1, input=1.0, computed=0.5, rounded_exact=0.25, exact="0.25",
                   err_ulp=max_ulp, envelope_ulp=max_ulp / ratio if ratio else math.inf, ratio=ratio)
    return RecordMetrics(elements=4, judged=4, class_mismatches=0, max_ulp=max_ulp, max_ratio=ratio, worst=loc,
                         above_envelope=int(ratio > 1), above_limit=0)


def _record(candidate: str, max_ulp: float, ratio: float, case: str = "c", verdict: str = PASS) -> Record:
    return Record(candidate=candidate, target=candidate, op="softmax", dtype="float32", case=case, family="f",
                  verdict=verdict, metrics=_metrics(max_ulp, ratio))


# --------------------------------------------------------------------------
# Verdicts


def test_limits_most_specific_wins_field_by_field():
    gate = Gate(ratio_limit=4.0, max_ulp=None, limits=(
        ("bfloat16", Limits(max_ulp=8.0)), ("softmax", Limits(ratio=16.0)),
        ("softmax.bfloat16", Limits(ratio=32.0)), ("logsumexp", Limits(max_ulp=2.0))))
    assert gate.for_record("softmax", "bfloat16").ratio_limit == 32.0
    assert gate.for_record("softmax", "bfloat16").max_ulp == 8.0  # from the format: the op sets no max_ulp
    assert gate.for_record("softmax", "float32").ratio_limit == 16.0
    assert gate.for_record("logsumexp", "bfloat16").max_ulp == 2.0  # the op beats the format
    assert gate.for_record("log_softmax", "float32") == Gate(ratio_limit=4.0)


def test_max_ulp_fails_a_record_inside_the_envelope():
    m = _metrics(max_ulp=6.0, ratio=0.5)
    assert decide(m, Gate()) == (PASS, [])
    verdict, reasons = decide(m, Gate(max_ulp=4.0))
    assert verdict == FAIL and reasons[0].startswith("max error 6 ulp exceeds the limit of 4 ulp")


def test_strict_turns_warn_into_fail():
    m = _metrics(max_ulp=6.0, ratio=2.0)
    assert decide(m, Gate())[0] == WARN
    verdict, reasons = decide(m, Gate(strict=True))
    assert verdict == FAIL and reasons[0].startswith("strict: ")


def test_relative_rule_compares_stability_ratios_on_the_same_case():
    records = [_record("torch", 100.0, 0.5), _record("mine", 300.0, 1.2),  # 1.2 < 2 x 0.5 + 0.5: kept
               _record("torch", 10.0, 0.1, case="d"), _record("mine", 10.0, 0.9, case="d"),  # 0.9 > 0.7: FAIL
               _record("mine", 10.0, 3.0, case="only-mine")]  # no baseline record: not judged
    assert apply_relative_rule(records, "torch", factor=2.0, slack=0.5) == 1
    assert [r.verdict for r in records] == [PASS, PASS, PASS, FAIL, PASS]
    assert "exceeds 2x the baseline torch's 0.1 + 0.5 on the same input" in records[3].reasons[0]


def test_relative_rule_never_fails_the_baseline_itself():
    records = [_record("torch", 1e6, 100.0, verdict=FAIL), _record("mine", 1.0, 0.1)]
    apply_relative_rule(records, "torch", 2.0, 0.5)
    assert records[0].reasons == [] and records[1].verdict == PASS


# --------------------------------------------------------------------------
# Configuration


def _pyproject(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "kernels"\n\n' + body, encoding="utf-8")
    return p


def test_pyproject_is_found_from_a_subdirectory_and_paths_are_relative_to_it(tmp_path):
    _pyproject(tmp_path, '[tool.softaudit]\ntargets = ["kernels/softmax.py", "builtin:torch"]\n'
                         'cases_dirs = ["regressions"]\nops = ["softmax"]\nstrict = true\n'
                         '[tool.softaudit.limits]\nratio = 16\n[tool.softaudit.limits.softmax.bfloat16]\nmax_ulp = 4\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = find_config(deep)
    assert found == tmp_path / "pyproject.toml"
    cfg = load_config(found)
    assert cfg.targets == [str(tmp_path / "kernels/softmax.py"), "builtin:torch"]
    assert cfg.cases_dirs == [tmp_path / "regressions"]
    assert cfg.strict is True and cfg.ratio == 16.0
    assert cfg.limits == {"softmax": Limits(), "softmax.bfloat16": Limits(max_ulp=4.0)}


def test_a_pyproject_without_the_table_is_passed_over(tmp_path):
    _pyproject(tmp_path, '[tool.softaudit]\nops = ["softmax"]\n')
    inner = tmp_path / "pkg"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n', encoding="utf-8")
    assert find_config(inner) == tmp_path / "pyproject.toml"


@pytest.mark.parametrize("body, message", [
    ('[tool.softaudit]\nopz = ["softmax"]\n', "tool.softaudit.opz: unknown key"),
    ('[tool.softaudit]\nformats = ["float8"]\n', "tool.softaudit.formats: unknown value 'float8'"),
    ('[tool.softaudit]\nundefined = "ignore"\n', "tool.softaudit.undefined: unknown policy 'ignore'"),
    ('[tool.softaudit]\nseed = -1\n', "tool.softaudit.seed: must be an integer 0 or more"),
    ('[tool.softaudit]\nstrict = "yes"\n', "tool.softaudit.strict: must be true or false"),
    ('[tool.softaudit]\nbench = 1\n', "tool.softaudit.bench: must be true or false"),
    ('[tool.softaudit]\nshapes = ["1024"]\n', "tool.softaudit.shapes: shape '1024' is not ROWSxN"),
    ('[tool.softaudit]\nrelative_factor = 0.5\n', "tool.softaudit.relative_factor: must be a finite number of at least 1"),
    ('[tool.softaudit.limits]\nratio = 1\n', "tool.softaudit.limits.ratio: must be a finite number greater than 1"),
    ('[tool.softaudit.limits.softmax]\nmaxulp = 3\n', "tool.softaudit.limits.softmax.maxulp: unknown key"),
    ('[tool.softaudit.limits.float32.softmax]\nratio = 8\n', "tool.softaudit.limits.float32.softmax: unknown key"),
    ('[tool.softaudit\n', "not valid TOML"),
])
def test_bad_keys_and_values_name_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=".*".join(map(_escape, message.split("'")))):
        load_config(_pyproject(tmp_path, body))


def _escape(s: str) -> str:
    import re

    return re.escape(s)


def test_bench_and_shapes_are_read(tmp_path):
    cfg = load_config(_pyproject(tmp_path, '[tool.softaudit]\nbench = true\nshapes = ["64x262144", "8 x 100"]\n'))
    assert cfg.bench is True and cfg.shapes == [(64, 262144), (8, 100)]


def test_a_standalone_config_file_takes_top_level_keys(tmp_path):
    p = tmp_path / "gate.toml"
    p.write_text('ops = ["logsumexp"]\nundefined = "nan"\n', encoding="utf-8")
    cfg = load_config(p)
    assert cfg.ops == ["logsumexp"] and cfg.undefined == "nan"


# --------------------------------------------------------------------------
# The command line


def test_run_takes_targets_and_settings_from_pyproject(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "naive.py").write_text(NAIVE_NUMPY, encoding="utf-8")
    _pyproject(tmp_path, '[tool.softaudit]\ntargets = ["kernels/naive.py"]\ncases = ["offset-plus-1e3"]\n'
                         'formats = ["float32"]\n')
    sub = tmp_path / "src"
    sub.mkdir()
    p = run_cli(["run", "--json", "out.json", "--no-isolation"], sub)  # the worker: test_isolation.py
    assert p.returncode == 1, p.stderr
    assert "gate configuration from" in p.stderr and str(tmp_path / "pyproject.toml") in p.stderr
    doc = json.loads((sub / "out.json").read_text())
    assert {(r["candidate"], r["case"], r["dtype"]) for r in doc["results"]} == {("naive", "offset-plus-1e3", "float32")}
    # The command line wins over the file; --no-config ignores it.
    p = run_cli(["run", "builtin:shifted", "--dtype", "float32", "--case", "offset-plus-1e3", "-q", "--no-isolation"], sub)
    assert p.returncode == 0, p.stderr
    p = run_cli(["run", "--no-config"], sub)
    assert p.returncode == 2 and "no TARGET given" in p.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path):
    _pyproject(tmp_path, '[tool.softaudit]\ntargets = ["builtin:shifted"]\n[tool.softaudit.limits.softmax]\nratio = "big"\n')
    p = run_cli(["run"], tmp_path)
    assert p.returncode == 2
    assert "tool.softaudit.limits.softmax.ratio: must be a finite number greater than 1" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_relative_to_fails_a_kernel_much_worse_than_the_baseline(tmp_path):
    """A kernel with a systematic 64-ulp bias stays inside a generous envelope limit (WARN) but is far
    worse than the baseline on the same input: the relative rule FAILs it; a sound kernel passes."""
    (tmp_path / "mine.py").write_text(SHIFTED_NUMPY, encoding="utf-8")
    (tmp_path / "worse.py").write_text(
        "import numpy as np\n"
        "def softmax(x):\n"
        "    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
        "    s = e.sum(axis=-1, keepdims=True)\n"
        "    return (e / s) * np.float32(1 + 2**-17)  # a systematic 64-ulp bias\n", encoding="utf-8")
    args = ["run", "mine.py", "worse.py", "--relative-to", "builtin:shifted", "--case", "offset-plus-1e3",
            "--dtype", "float32", "--direction", "forward", "--json", "r.json", "--limit", "1000", "--no-isolation"]
    p = run_cli(args, tmp_path)
    doc = json.loads((tmp_path / "r.json").read_text())
    verdicts = {r["candidate"]: r["verdict"] for r in doc["results"]}
    assert verdicts["mine"] == PASS
    assert verdicts["worse"] == FAIL, doc["results"]
    worse = next(r for r in doc["results"] if r["candidate"] == "worse")
    assert "the baseline builtin:shifted's" in worse["reasons"][0]
    assert doc["options"]["relative_to"] == "builtin:shifted" and doc["options"]["baseline"] == "builtin:shifted"
    assert p.returncode == 1 and "Relative rule:" in p.stdout


def test_the_baselines_own_fails_do_not_set_the_exit_code(tmp_path):
    (tmp_path / "mine.py").write_text(SHIFTED_NUMPY, encoding="utf-8")
    p = run_cli(["run", "mine.py", "--relative-to", "builtin:naive", "--case", "offset-plus-1e3", "--dtype", "float32",
                 "--direction", "forward", "--json", "r.json", "--no-isolation"], tmp_path)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {r["candidate"]: r["verdict"] for r in doc["results"]} == {"mine": PASS, "builtin:naive": FAIL}
    assert p.returncode == 0 and doc["summary"]["exit_code"] == 0


def test_strict_and_max_ulp_on_the_command_line(tmp_path):
    """--max-ulp 0 fails any rounding error at all (the envelope alone PASSes this record); both
    settings show in the JSON options."""
    p = run_cli(["run", "builtin:shifted", "--case", "offset-plus-1e3", "--dtype", "float32", "--direction", "forward",
                 "--op", "softmax", "--max-ulp", "0", "--strict", "--json", "r.json", "--no-isolation"],
                tmp_path)
    doc = json.loads((tmp_path / "r.json").read_text())
    rec = doc["results"][0]
    assert p.returncode == 1 and rec["verdict"] == FAIL and "exceeds the limit of 0 ulp" in rec["reasons"][0]
    assert doc["options"]["max_ulp"] == 0 and doc["options"]["strict"] is True
