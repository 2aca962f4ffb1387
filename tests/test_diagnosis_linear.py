"""The diagnosis of linear_cross_entropy (softaudit/diagnosis/linear.py): the planted bfloat16
weight-gradient accumulation and torch's eager bfloat16 logits are named, the textbook gets none.
Audited on one small fixture case (tests/fixtures/linear_cases) in bfloat16 to stay fast."""

from __future__ import annotations

import json
from pathlib import Path

import softaudit
from softaudit.diagnosis import Subject, diagnose
from softaudit.diagnosis.evidence import tensor_ratios
from softaudit.diagnosis.experiments import load_subject

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "fixtures" / "linear_cases"


def _diagnose(target: str, tmp_path: Path, directions: list[str]) -> list:
    subject = Subject(name="cand", target=target)
    report = softaudit.audit(load_subject(subject), name="cand", ops="linear_cross_entropy", directions=directions,
                             dtypes="bfloat16", cases=["lce-diag-small"], cases_dirs=[str(CASES)])
    records = json.loads(Path(report.to_json(tmp_path / "r.json")).read_text())["results"]
    return diagnose(records, subject)


def test_bf16_weight_accumulation_is_named(tmp_path: Path) -> None:
    [d] = _diagnose(str(ROOT / "examples" / "bf16_weight_grad_linear_ce.py"), tmp_path, ["forward", "backward"])
    top = d.causes[0]
    assert (d.direction, top.class_id, top.settled_by) == ("backward", "weight-gradient-16bit-accumulation",
                                                           "token-count")
    assert "weight" in top.finding and top.evidence and top.fix


def test_torch_eager_bf16_logits_are_named(tmp_path: Path) -> None:
    [d] = _diagnose("builtin:torch-linear-ce", tmp_path, ["backward"])
    assert d.causes[0].class_id == "logits-rounded-16bit"
    assert d.causes[0].confidence >= 0.85


def test_textbook_gets_no_diagnosis(tmp_path: Path) -> None:
    assert _diagnose("builtin:torch-chunked-linear-ce", tmp_path, ["forward", "backward"]) == []


def test_tensor_ratios_read_the_reasons() -> None:
    r = {"verdict": "FAIL", "direction": "backward", "reasons": [
        "weight gradient: 3 / 8 elements exceed 4x the stability envelope; worst at row 1: 9 ulp against an "
        "envelope of 1 ulp (ratio 9)", "bias gradient: 1 / 2 elements have the wrong class: +inf"]}
    assert tensor_ratios(r) == {"weight": 9.0, "bias": float("inf")}
    assert tensor_ratios(dict(r, verdict="PASS")) == {}
