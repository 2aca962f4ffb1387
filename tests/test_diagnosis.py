"""The diagnosis (softaudit/diagnosis): a few planted implementations, audited narrowly, get the
planted cause as their top cause; a correct one gets none; unmatched failures say "no known cause".
The whole corpus is calibrated by benchmarks/diagnosis_calibration.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import softaudit
from softaudit.diagnosis import CLASSES, NO_KNOWN_CAUSE, Subject, diagnose
from softaudit.diagnosis.experiments import load_subject

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "tests" / "diagnosis" / "planted"


def _records(path: Path, tmp_path: Path, **kw) -> tuple[list[dict], Subject]:
    subject = Subject(name="cand", target=str(path))
    report = softaudit.audit(load_subject(subject), name="cand", **kw)
    out = report.to_json(tmp_path / "r.json")
    return json.loads(Path(out).read_text())["results"], subject


def _top(diags) -> str | None:
    best = max((d.causes[0] for d in diags if d.causes), key=lambda c: c.confidence, default=None)
    return None if best is None else best.class_id


@pytest.mark.parametrize("planted, kw", [
    ("no-max-shift/impl_np.py", dict(ops="softmax", directions="forward", dtypes="float32",
                                     cases=["offset-plus-1e3", "exp-overflow-float32"])),
    ("nan-swallowed/impl_torch.py", dict(ops="softmax", directions="forward", dtypes="float32",
                                         cases=["nan-one-row"])),
    ("exp-clamp/impl_np.py", dict(ops="softmax", directions="forward", dtypes="float32", cases=["gap-87.3"])),
])
def test_planted_bug_is_named(planted: str, kw: dict, tmp_path: Path) -> None:
    records, subject = _records(PLANTED / planted, tmp_path, **kw)
    diags = diagnose(records, subject)
    assert _top(diags) == planted.split("/")[0]
    cause = diags[0].causes[0]
    assert cause.evidence and cause.settled_by and cause.fix and cause.explanation
    assert all(r.startswith("cand/") for r in cause.evidence)


def test_correct_implementation_gets_no_diagnosis(tmp_path: Path) -> None:
    records, subject = _records(PLANTED / "correct" / "f64_once.py", tmp_path, ops="softmax", directions="forward",
                                dtypes="float32", cases=["offset-plus-1e3", "exp-overflow-float32", "nan-one-row"])
    assert diagnose(records, subject) == []


def test_unmatched_failure_says_no_known_cause() -> None:
    record = {"id": "c/softmax/forward/float32/zeros", "candidate": "c", "op": "softmax", "direction": "forward",
              "dtype": "float32", "case": "zeros", "family": "special-values", "verdict": "FAIL",
              "reasons": ["2 / 66 elements exceed 4x the stability envelope"], "mismatch_kinds": {},
              "max_ratio": 9.0, "input_summary": {"rows": 2, "n": 33, "offset": 0.0, "range": 0.0},
              "worst": {"computed": 0.031, "exact": "0.030303030303030304"}}
    [d] = diagnose([record], "c", run_experiment=None)
    assert [c.class_id for c in d.causes] == [NO_KNOWN_CAUSE]
    assert d.causes[0].evidence == [record["id"]] and "worst" in d.causes[0].finding
    assert diagnose([dict(record, verdict="PASS")], "c", run_experiment=None) == []


def test_every_class_is_documented() -> None:
    doc = (ROOT / "docs" / "diagnosis.md").read_text()
    documented = set(re.findall(r"^### `([a-z0-9-]+)`", doc, flags=re.M))
    assert documented == set(CLASSES)
    planted = {p.name for p in PLANTED.iterdir() if p.is_dir()} - {"correct"}
    assert planted == set(CLASSES) - {NO_KNOWN_CAUSE}
    assert all(len(list((PLANTED / c).glob("*.py"))) >= 2 for c in planted)
