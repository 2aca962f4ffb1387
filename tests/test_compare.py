"""softaudit compare: matching, regressions, improvements, warnings, options, output."""

from __future__ import annotations

import copy
import json
import math

import pytest
from rich.console import Console

from softaudit.formats import get_format
from softaudit.judging.metrics import RecordMetrics
from softaudit.judging.verdicts import FAIL, PASS, SKIP, WARN
from softaudit.options import AuditOptions, CacheOptions, WorkerOptions
from softaudit.reports.compare import CompareOptions, compare, comparison_dict, matching_names, render_comparison
from softaudit.reports.json_report import write_json
from softaudit.results.document import ResultsDocument, ResultsError
from softaudit.results.records import Record, SpeedRecord
from softaudit.results.schema import document_of, load_results
from softaudit.runner.loop import run_audit


def rec(case: str = "c1", *, candidate: str = "impl", target: str = "impl.py", op: str = "softmax",
        direction: str = "forward", verdict: str = PASS, max_ulp: float | None = 0.5, max_ratio: float | None = 0.1,
        class_mismatches: int = 0, reasons: list[str] | None = None,
        undefined_rows: dict | None = None, metrics: bool = True) -> Record:
    """A hand-built record; metrics consistent enough for compare (which reads only these fields)."""
    m = RecordMetrics(elements=64, judged=64, class_mismatches=class_mismatches,
                      mismatch_kinds={"finite->nan": class_mismatches} if class_mismatches else {},
                      nan_out=class_mismatches, max_ulp=max_ulp, max_ratio=max_ratio,
                      undefined_rows=dict(undefined_rows or {})) if metrics else None
    return Record(candidate=candidate, target=target, op=op, direction=direction, dtype="float32", case=case,
                  family="f", verdict=verdict, reasons=list(reasons or []), metrics=m)


def sp(median_s: float | None, shape: tuple[int, int] = (1024, 32000), *, candidate: str = "impl",
       skipped: str | None = None) -> SpeedRecord:
    """A hand-built speed record (compare reads its median time)."""
    figures = None if median_s is None else {"median_s": median_s, "pct_copy_bandwidth": 50.0}
    return SpeedRecord(candidate, "impl.py", "softmax", "forward", "float32", shape, figures, skipped)


def doc(*records: Record, seed: int = 0, source: str = "", complete: bool = True,
        speed: list[SpeedRecord] | None = None) -> ResultsDocument:
    return ResultsDocument(records=list(records), speed=list(speed or []),
                           environment={"seed": seed, "machine": "x86_64", "platform": "p"},
                           options={"seed": seed, "ratio_limit": 4.0, "undefined_policy": "nan-or-zero"},
                           complete=complete, softaudit_version="0.1.0", source=source)


def kinds(changes) -> list[str]:
    return [c.kind for c in changes]


def test_identical_documents_have_no_change():
    base = doc(rec("a"), rec("b", verdict=FAIL, max_ulp=1e4, max_ratio=40.0, reasons=["ratio 40"]),
               rec("c", verdict=WARN, max_ratio=2.0, max_ulp=9.0), rec("d", verdict=SKIP, metrics=False),
               rec("-", op="import", verdict=FAIL, metrics=False, reasons=["import raised"]),
               rec("e"), speed=[sp(1e-4), sp(None, (8, 8), skipped="no backward")])
    c = compare(base, copy.deepcopy(base))
    assert (c.regressions, c.improvements, c.changes, c.added, c.removed, c.warnings) == ([], [], [], [], [], [])
    assert c.matched == 6 and c.exit_code == 0


def test_new_fail_is_a_regression_with_news_reason():
    c = compare(doc(rec(verdict=WARN, max_ratio=2.0)),
                doc(rec(verdict=FAIL, max_ratio=2.0, reasons=["crashed with SIGSEGV"])))
    assert c.exit_code == 1 and kinds(c.regressions) == ["new-fail"]
    ch = c.regressions[0]
    assert (ch.base, ch.new, ch.id) == (WARN, FAIL, "impl/softmax/forward/float32/c1")
    assert ch.message == "WARN → FAIL: crashed with SIGSEGV"


def test_error_growth_counts_past_factor_and_slack():
    base = doc(rec(verdict=WARN, max_ulp=20.0, max_ratio=2.0))
    grown10 = compare(base, doc(rec(verdict=WARN, max_ulp=200.0, max_ratio=20.0)))
    assert kinds(grown10.regressions) == ["error-grown"] and grown10.exit_code == 1
    ch = grown10.regressions[0]
    assert (ch.metric, ch.base, ch.new, ch.factor) == ("max_ratio", 2.0, 20.0, 10.0)
    assert ch.message == "max ulp 20 → 200 (×10), max ratio 2 → 20 (×10)"
    grown15 = compare(base, doc(rec(verdict=WARN, max_ulp=30.0, max_ratio=3.0)))
    assert grown15.regressions == [] and grown15.changes == [] and grown15.exit_code == 0


def test_half_an_ulp_from_exact_is_not_growth():
    base, new = doc(rec(max_ulp=0.0, max_ratio=0.0)), doc(rec(max_ulp=0.5, max_ratio=0.5))
    assert compare(base, new, CompareOptions(ulp_growth_is_regression=True)).exit_code == 0
    assert compare(base, new).changes == []
    no_slack = CompareOptions(slack_ulp=0.0, slack_ratio=0.0)
    assert kinds(compare(base, new, no_slack).regressions) == ["error-grown"]


def test_ulp_growth_alone_is_informational_unless_asked():
    # the extra ulps sit where the envelope is wide: the stability ratio does not double
    base, new = doc(rec(max_ulp=0.5, max_ratio=0.1)), doc(rec(max_ulp=9.0, max_ratio=0.3))
    c = compare(base, new)
    assert c.exit_code == 0 and kinds(c.changes) == ["ulp-grown"]
    assert c.changes[0].message == "max ulp 0.5 → 9 (×18), max ratio 0.1 → 0.3 (×3)"
    strict = compare(base, new, CompareOptions(ulp_growth_is_regression=True))
    assert kinds(strict.regressions) == ["error-grown"] and strict.regressions[0].metric == "max_ulp"
    back = compare(new, base)
    assert kinds(back.changes) == ["ulp-shrunk"] and back.improvements == []


def test_stability_ratio_growth_alone_is_a_regression():
    # max ulp sits on a cancelled element and does not move; the ratio leaves the envelope
    c = compare(doc(rec(max_ulp=500.0, max_ratio=0.5)), doc(rec(verdict=WARN, max_ulp=500.0, max_ratio=3.0)))
    assert kinds(c.regressions) == ["error-grown"] and c.regressions[0].metric == "max_ratio"
    assert c.regressions[0].message == "PASS → WARN: max ulp 500 → 500 (×1), max ratio 0.5 → 3 (×6)"
    assert c.changes == []


def test_nan_appearing_is_a_regression_even_when_both_fail():
    base = doc(rec(verdict=FAIL, max_ulp=1e5, max_ratio=50.0, reasons=["ratio 50"]))
    new = doc(rec(verdict=FAIL, max_ulp=1e5, max_ratio=50.0, class_mismatches=3, reasons=["3 wrong class"]))
    c = compare(base, new)
    assert kinds(c.regressions) == ["nan-appeared"] and c.exit_code == 1
    assert (c.regressions[0].base, c.regressions[0].new) == (0, 3)
    assert "finite->nan 3" in c.regressions[0].message
    assert kinds(compare(new, base).improvements) == ["nan-gone"]


def test_nan_on_undefined_rows_is_not_a_regression():
    # a fully masked row may be NaN or zero under the default policy: a change of behaviour, not a regression
    base = doc(rec(undefined_rows={"zero": 2}))
    new = doc(rec(undefined_rows={"nan": 2}))
    new.records[0].metrics.nan_out = 128
    c = compare(base, new)
    assert c.exit_code == 0 and kinds(c.changes) == ["undefined-rows"]
    assert c.changes[0].message == "undefined rows (fully masked or +inf) returned zero 2 → nan 2"


def test_speed_is_compared_per_shape_only_when_both_timed_it():
    c = compare(doc(speed=[sp(1e-3)]), doc(speed=[sp(2e-3)]))
    assert kinds(c.regressions) == ["slower"] and c.regressions[0].message == "median time 1 ms → 2 ms (×2)"
    assert c.regressions[0].id == "impl/softmax/forward/float32/1024x32000"
    assert compare(doc(speed=[sp(1e-3)]), doc(speed=[sp(1.4e-3)])).regressions == []
    assert kinds(compare(doc(speed=[sp(2e-3)]), doc(speed=[sp(1e-3)])).improvements) == ["faster"]
    assert compare(doc(speed=[sp(1e-3)]), doc(speed=[sp(2e-3)]), CompareOptions(speed_factor=3)).regressions == []
    # Another shape is another measurement; an audit without --bench compares no speed.
    assert compare(doc(speed=[sp(1e-3, (64, 262144))]), doc(speed=[sp(9e-3)])).regressions == []
    assert compare(doc(speed=[sp(1e-3)]), doc()).regressions == []
    # Timed before, not now: said, not counted.
    c = compare(doc(speed=[sp(1e-3)]), doc(speed=[sp(None, skipped="RuntimeError: boom")]))
    assert c.exit_code == 0 and kinds(c.changes) == ["not-timed"]
    assert c.changes[0].message == "timed in BASE (1 ms), not in NEW: RuntimeError: boom"
    # Timings from two machines are compared, with a warning.
    other = doc(speed=[sp(2e-3)])
    other.environment["machine"] = "aarch64"
    assert any("speed is compared across machines" in w for w in compare(doc(speed=[sp(1e-3)]), other).warnings)
    assert compare(doc(speed=[sp(1e-3)]), doc(speed=[sp(2e-3)])).warnings == []


def test_missing_records_are_listed_and_count_only_on_request():
    base, new = doc(rec("a"), rec("b", verdict=WARN, max_ratio=2.0)), doc(rec("a"))
    c = compare(base, new)
    assert c.exit_code == 0 and c.matched == 1 and kinds(c.removed) == ["missing"]
    assert c.removed[0].id == "impl/softmax/forward/float32/b" and c.removed[0].base == WARN
    strict = compare(base, new, CompareOptions(missing_is_regression=True))
    assert strict.exit_code == 1 and kinds(strict.regressions) == ["missing"]


def test_added_records_are_listed_and_an_added_fail_is_a_regression():
    base = doc(rec("a"))
    c = compare(base, doc(rec("a"), rec("b")))
    assert c.exit_code == 0 and kinds(c.added) == ["added"] and c.added[0].new == PASS
    c = compare(base, doc(rec("a"), rec("b", verdict=FAIL, reasons=["wrong shape"])))
    assert c.exit_code == 1 and kinds(c.regressions) == ["new-fail"] and c.regressions[0].base is None
    assert c.regressions[0].message == "added as FAIL: wrong shape"


def test_candidates_from_different_directories_match():
    base = doc(rec(candidate="impl@a/impl.py", target="a/impl.py"))
    new = doc(rec(candidate="impl@/ci/b/impl.py", target="/ci/b/impl.py", verdict=FAIL, reasons=["x"]))
    c = compare(base, new)
    assert c.matched == 1 and c.regressions[0].id == "impl/softmax/forward/float32/c1"
    assert (c.regressions[0].base_id, c.regressions[0].new_id) == (base.records[0].id, new.records[0].id)


def test_same_named_candidates_match_by_their_shortest_distinct_paths():
    def two(root: str, verdict_a: str) -> ResultsDocument:
        return doc(rec(candidate=f"impl@{root}/a/impl.py", target=f"{root}/a/impl.py", verdict=verdict_a,
                       reasons=["bad"]),
                   rec(candidate=f"impl@{root}/b/impl.py", target=f"{root}/b/impl.py"))
    base, new = two("/ci/1", PASS), two("/ci/2", FAIL)
    assert set(matching_names(new.records).values()) == {"impl@a/impl.py", "impl@b/impl.py"}
    c = compare(base, new)
    assert c.matched == 2 and [r.id for r in c.regressions] == ["impl@a/impl.py/softmax/forward/float32/c1"]


def test_import_failures_match_by_candidate_name():
    base = doc(rec("-", op="import", verdict=FAIL, metrics=False, reasons=["import raised"], target="x/impl.py"))
    new = doc(rec("a", target="y/impl.py"))
    new.records.append(rec("-", op="import", direction="backward", verdict=FAIL, metrics=False,
                           reasons=["import raised"], target="y/impl.py"))
    c = compare(base, new)
    assert c.matched == 1 and c.removed == [] and kinds(c.added) == ["added"]


def test_improvements_are_detected_and_ordered():
    base = doc(rec("shrunk", verdict=WARN, max_ulp=80.0, max_ratio=3.0),
               rec("nan", verdict=FAIL, max_ratio=9.0, class_mismatches=5, reasons=["5 nan"]),
               rec("fixed", verdict=FAIL, max_ulp=900.0, max_ratio=30.0, reasons=["ratio 30"]), speed=[sp(3e-3)])
    new = doc(rec("shrunk", verdict=WARN, max_ulp=8.0, max_ratio=1.2),
              rec("nan", verdict=FAIL, max_ratio=9.0, reasons=["ratio 9"]), rec("fixed", max_ulp=3.0, max_ratio=0.4),
              speed=[sp(1e-3)])
    c = compare(base, new)
    assert c.exit_code == 0 and c.regressions == []
    assert kinds(c.improvements) == ["fixed", "nan-gone", "error-shrunk", "faster"]
    assert c.improvements[0].message == "FAIL → PASS (was: ratio 30)"
    assert kinds(c.improvements[0].also) == ["error-shrunk"]
    assert c.improvements[2].message.startswith("max ulp 80 → 8 (÷10)")


def test_verdict_changes_are_informational():
    c = compare(doc(rec(verdict=WARN)), doc(rec(verdict=PASS)))
    assert c.exit_code == 0 and c.improvements == [] and kinds(c.changes) == ["verdict"]
    assert c.changes[0].message == "WARN → PASS"
    c = compare(doc(rec(verdict=FAIL, reasons=["r"])), doc(rec(verdict=SKIP, metrics=False)))
    assert c.improvements == [] and kinds(c.changes) == ["verdict"]


def test_regressions_sorted_by_severity():
    base = doc(rec("err3", max_ulp=10.0, max_ratio=0.9),
               rec("err100", max_ulp=10.0, max_ratio=0.9), rec("nan", verdict=FAIL, max_ratio=9.0),
               rec("fail"), speed=[sp(1e-3)])
    new = doc(rec("err3", verdict=WARN, max_ulp=30.0, max_ratio=3.0),
              rec("err100", verdict=FAIL, max_ulp=1000.0, max_ratio=90.0, reasons=["ratio 90"]),
              rec("nan", verdict=FAIL, max_ratio=9.0, class_mismatches=2), rec("fail", verdict=FAIL, reasons=["x"]),
              speed=[sp(9e-3)])
    c = compare(base, new)
    assert [r.id.split("/")[-1] for r in c.regressions] == ["err100", "fail", "nan", "err3", "1024x32000"]
    assert kinds(c.regressions) == ["new-fail", "new-fail", "nan-appeared", "error-grown", "slower"]
    assert kinds(c.regressions[0].also) == ["error-grown"]


def test_warnings_for_differing_seeds_gates_and_incomplete_runs():
    c = compare(doc(rec(), seed=0), doc(rec(), seed=7))
    assert c.exit_code == 0 and len(c.warnings) == 1 and "seeds differ (BASE 0, NEW 7)" in c.warnings[0]
    new = doc(rec(), complete=False)
    new.options["ratio_limit"] = 8.0
    c = compare(doc(rec()), new)
    assert any("ratio_limit 4.0 → 8.0" in w for w in c.warnings)
    assert any("NEW is incomplete" in w for w in c.warnings)
    assert any("no record matched" in w for w in compare(doc(rec("a")), doc(rec("b"))).warnings)


@pytest.mark.parametrize("field, value, flag", [
    ("factor", 0.5, "--factor"), ("factor", math.nan, "--factor"), ("slack_ulp", -1.0, "--slack"),
    ("speed_factor", 0.9, "--speed-factor"), ("slack_ratio", -0.1, "--slack-ratio"), ("factor", math.inf, "--factor"),
])
def test_options_are_validated(field, value, flag):
    options = CompareOptions(**{field: value})
    with pytest.raises(ValueError, match=f"^{field} \\({flag}\\) must be"):
        options.check()
    with pytest.raises(ValueError, match=flag):
        compare(doc(rec()), doc(rec()), options)
    CompareOptions(factor=1.0, slack_ulp=0.0, speed_factor=1.0, slack_ratio=0.0).check()


def test_duplicate_ids_are_bad_input():
    with pytest.raises(ResultsError, match="^base.json: two records have the id 'impl/softmax/forward/float32/a'"):
        compare(doc(rec("a"), rec("a"), source="base.json"), doc(rec("a")))


def _rendered(c, limit: int = 50) -> str:
    console = Console(record=True, width=200, color_system=None)
    render_comparison(c, console, limit=limit)
    return console.export_text()


def test_render_headline_lines_and_limit():
    base = doc(*[rec(f"c{i}") for i in range(5)], rec("gone"), seed=1, source="base.json")
    new = doc(*[rec(f"c{i}", verdict=FAIL, reasons=[f"reason {i}"]) for i in range(5)], rec("new"), seed=2,
              source="new.json")
    text = _rendered(compare(base, new), limit=2)
    assert "Warning: the seeds differ (BASE 1, NEW 2)" in text
    assert "5 regressions, 0 improvements across 5 matched records (1 added, 1 removed)" in text
    assert "NEW FAIL     impl/softmax/forward/float32/c0: PASS → FAIL: reason 0" in text
    assert "c2:" not in text and "... and 3 more (all are in --json)" in text
    assert "Result: 5 regressions (exit 1)" in text
    assert "Result: no regression (exit 0)" in _rendered(compare(base, base))


def test_render_shows_untrusted_text_literally():
    name = "[bold red]evil[/bold red]\x1b[31m"
    c = compare(doc(rec(candidate=name)), doc(rec(candidate=name, verdict=FAIL, reasons=["[link=x]y[/link]\nz"])))
    text = _rendered(c)
    assert "[bold red]evil[/bold red]\\x1b[31m/softmax" in text and "\x1b" not in text
    assert "[link=x]y[/link] z" in text


def test_comparison_dict_is_strict_json():
    c = compare(doc(rec(max_ulp=0.0, max_ratio=0.0)), doc(rec(verdict=WARN, max_ulp=50.0, max_ratio=2.0)))
    data = json.loads(json.dumps(comparison_dict(c), allow_nan=False))
    assert data["summary"] == {"matched": 1, "regressions": 1, "improvements": 0, "changes": 0, "added": 0,
                               "removed": 0, "exit_code": 1}
    grown = data["regressions"][0]
    assert (grown["kind"], grown["metric"], grown["base"], grown["new"], grown["factor"]) == \
        ("error-grown", "max_ratio", 0.0, 2.0, "inf")
    assert grown["message"].startswith("PASS → WARN: max ulp 0 → 50 (from 0)")
    assert data["options"] == {"factor": 2.0, "slack_ulp": 1.0, "slack_ratio": 0.5, "speed_factor": 1.5,
                               "missing_is_regression": False, "ulp_growth_is_regression": False}


# ---------------------------------------------------------------------------- real audits, through JSON files

@pytest.fixture(scope="session")
def audit(softaudit_cache_dir):
    """builtin:shifted and builtin:naive, forward softmax and logsumexp on one case (naive FAILs with inf/NaN)."""
    options = AuditOptions(ops=["softmax", "logsumexp"], directions=["forward"], case_patterns=["offset-plus-1e3"],
                           formats=[get_format("float32")], worker=WorkerOptions(isolated=False),
                           cache=CacheOptions(directory=softaudit_cache_dir))
    return run_audit(["builtin:shifted", "builtin:naive"], options)


def _only(data: dict, candidate: str, rename: str) -> dict:
    """One candidate's records from a results object, renamed as ``rename``."""
    data = copy.deepcopy(data)
    data["results"] = [r for r in data["results"] if r["candidate"] == candidate]
    for r in data["results"]:
        r["candidate"] = rename
        r["id"] = r["id"].replace(candidate, rename, 1)
    return data


def test_real_results_round_trip(audit, tmp_path):
    write_json(tmp_path / "a.json", audit)
    write_json(tmp_path / "b.json", audit)
    a, b = load_results(tmp_path / "a.json"), load_results(tmp_path / "b.json")
    for other in (b, document_of(audit)):
        c = compare(a, other)
        assert c.matched == 4 and c.exit_code == 0 and (c.regressions, c.changes, c.warnings) == ([], [], [])


def test_real_regression_through_json_files(audit, tmp_path):
    write_json(tmp_path / "r.json", audit)
    data = json.loads((tmp_path / "r.json").read_text())
    # BASE: the max-shifted softmax; NEW: the naive one under the same name (the shift "removed")
    (tmp_path / "base.json").write_text(json.dumps(_only(data, "builtin:shifted", "impl")))
    (tmp_path / "new.json").write_text(json.dumps(_only(data, "builtin:naive", "impl")))
    c = compare(load_results(tmp_path / "base.json"), load_results(tmp_path / "new.json"))
    assert c.matched == 2 and c.exit_code == 1
    assert kinds(c.regressions) == ["new-fail", "new-fail"]
    assert {a.kind for r in c.regressions for a in r.also} == {"nan-appeared"}
    assert "wrong class" in c.regressions[0].message
    back = compare(load_results(tmp_path / "new.json"), load_results(tmp_path / "base.json"))
    assert back.exit_code == 0 and kinds(back.improvements) == ["fixed", "fixed"]

    # an edited twin: error x10 on one record, a record removed, another seed
    twin = _only(data, "builtin:shifted", "impl")
    ratio = twin["results"][0]["max_ratio"]
    twin["results"][0].update(max_ulp=twin["results"][0]["max_ulp"] * 10, max_ratio=ratio * 10, verdict="WARN")
    del twin["results"][1]
    twin["environment"]["seed"] = twin["options"]["seed"] = 5
    (tmp_path / "twin.json").write_text(json.dumps(twin))
    c = compare(load_results(tmp_path / "base.json"), load_results(tmp_path / "twin.json"))
    assert kinds(c.regressions) == ["error-grown"] and kinds(c.removed) == ["missing"] and c.exit_code == 1
    assert c.regressions[0].factor == pytest.approx(10.0)
    assert any("seeds differ" in w for w in c.warnings)
