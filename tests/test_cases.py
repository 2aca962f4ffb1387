"""The case library: loading, validation, selection, and what the shipped library covers."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from softaudit.cases.inputs import NotApplicable, generate
from softaudit.cases.model import FAMILIES, LOSS_KEYS, PARAM_DEFAULTS, Case, CaseError
from softaudit.cases.reader import default_cases_dir, load_cases, select_cases
from softaudit.formats import FORMATS
from softaudit.ops import DIRECTIONS, OPS, SOFTMAX_FAMILY

ELEMENT_BUDGET = 1_400_000
"""Per-format input elements of the default library: a full cold audit must stay minutes long."""

DISTINCT_BUDGET = 240_000
"""Per-format distinct finite values (summed over rows): what the exact reference actually costs."""


@pytest.fixture(scope="module")
def library() -> list[Case]:
    return load_cases()


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[[case]]
name = "my-case"
family = "my-family"
description = "a user case"
n = 8
"""


def _error(tmp_path: Path, text: str) -> str:
    _write(tmp_path / "user", "bad.toml", text)
    with pytest.raises(CaseError) as info:
        load_cases([tmp_path / "user"], include_default=False)
    message = str(info.value)
    assert "\n" not in message
    assert "bad.toml" in message
    return message


# --------------------------------------------------------------------------
# The shipped library


def test_default_library_loads_sorted_with_unique_names(library):
    assert default_cases_dir().is_dir()
    names = [c.name for c in library]
    assert len(names) == len(set(names)) > 50
    assert library == sorted(library, key=lambda c: (c.family, c.name))
    for c in library:
        assert c.description and c.seen_in, c.name
        assert set(c.ops) <= set(OPS) and c.ops
        assert Path(c.source).parent == default_cases_dir()


def test_the_shipped_library_is_found_in_an_installed_wheel(tmp_path):
    """A wheel ships the top-level cases/ directory as softaudit/_cases (pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    site = tmp_path / "site"
    shutil.copytree(root / "softaudit", site / "softaudit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "cases", site / "softaudit" / "_cases")
    code = "from softaudit.cases.reader import default_cases_dir, load_cases; print(default_cases_dir(), len(load_cases()))"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert p.returncode == 0, p.stderr
    found, count = p.stdout.split()
    assert Path(found) == site / "softaudit" / "_cases" and int(count) == len(load_cases())


def test_every_family_is_present_and_documented(library):
    families = {c.family for c in library}
    assert families == set(FAMILIES)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cases.md").read_text(encoding="utf-8")
    for family in FAMILIES:
        assert f"`{family}`" in doc, family
    for key in PARAM_DEFAULTS:
        assert f"`{key}`" in doc, key


def test_sizes_cover_one_to_262144(library):
    sizes = {c.n for c in library}
    assert 1 in sizes
    assert any(n >= 131072 for n in sizes)
    assert {2, 3, 513, 1023, 50257, 128256, 262144} <= sizes
    assert any(c.rows >= 8 for c in library)


def test_element_budget_per_format(library):
    for fmt in FORMATS:
        total = sum(c.elements for c in library if c.applies_to_format(fmt) and not c.linear)
        assert total <= ELEMENT_BUDGET, (fmt, total)


def test_distinct_value_budget_per_format(library):
    for fmt in FORMATS.values():
        total = 0
        for c in library:
            if c.linear:
                continue  # hidden states and weights, not logits: tests/test_linear_cross_entropy.py
            try:
                x = generate(c, fmt).astype(np.float64)
            except NotApplicable:
                continue
            total += sum(np.unique(row[np.isfinite(row)]).size for row in x)
        assert total <= DISTINCT_BUDGET, (fmt.name, total)


def test_float16_row_of_65536_zeros_is_present(library):
    hits = [c for c in library if c.n == 65536 and c.param("values") == "constant" and c.param("value") == 0.0
            and c.applies_to("logsumexp", "float16") and c.applies_to("log_softmax", "float16")]
    assert hits


def test_offsets_confidence_and_masks_cover_design(library):
    offsets = {c.param("offset") for c in library if c.family == "offsets"}
    for mag in (1e3, 1e4, 1e5, 1e6, 1e7, 1e10, 1e20, 1e38):
        assert mag in offsets and -mag in offsets, mag
    assert {1e5, -1e5} <= {c.param("offset") for c in library if c.family == "seed-examples"}
    p_max = {c.param("p_max") for c in library if c.family == "confident"}
    assert {0.9, 0.99, 0.999, 1 - 2.0**-23} <= p_max
    patterns = {c.param("mask") for c in library if c.family == "masking"}
    assert {"prefix", "suffix", "scattered", "all-but-one", "all"} <= patterns
    added = {c.param("mask_value") for c in library if c.param("mask_mode") == "add"}
    assert {"finfo.min", -1e4} <= added
    mixed = [c for c in library if c.param("mask") == "all" and c.param("mask_rows") and c.rows > 1]
    assert mixed, "fully masked rows mixed with normal rows"


def test_cross_entropy_list_of_design_is_covered(library):
    """The cross-entropy list (docs/cases.md#cross-entropys-list) and the issue's: each item has a case that applies to cross_entropy."""
    ce = [c for c in library if c.applies_to("cross_entropy", "float32")]
    family = [c for c in library if c.family == "cross-entropy"]
    assert family and all(c.ops == ("cross_entropy",) for c in family)
    # confident rows with the target at the max, p_max 0.9 ... 1 - 2^-23, and vocabulary-wide
    confident = {(c.param("p_max"), c.n) for c in ce if c.param("values") == "confident" and c.param("target") == "max"}
    assert {0.9, 0.99, 0.999, 1 - 2.0**-23} <= {p for p, _ in confident}
    assert {(0.999, 32000), (0.999, 128256)} <= confident
    assert all(c.param("target") == "max" for c in library if c.family == "confident")
    # target far below the max
    assert any(c.param("target") == "min" and c.param("scale") >= 100 for c in ce)
    assert any(c.param("target") == "min" and (c.param("gap") or 0) <= -100 for c in ce)
    # huge offsets, and a format-relative one
    offsets = {c.param("offset") for c in ce}
    assert {1e4, 1e6, 1e8} <= offsets
    assert any(c.param("offset_fraction_of_max") for c in ce)
    # label smoothing 0.1 and 0.9, each with ignore_index and weights, every reduction
    for eps in (0.1, 0.9):
        smoothed = [c for c in ce if c.param("label_smoothing") == eps and c.param("target_kind") == "index"]
        assert any(c.param("ignored_rows") for c in smoothed), eps
        assert any(c.param("weight") != "none" for c in smoothed), eps
        assert {"none", "mean", "sum"} <= {c.param("reduction") for c in smoothed}, eps
    # every row ignored, under each reduction
    assert {"none", "mean", "sum"} <= {c.param("reduction") for c in ce if c.param("ignored_rows") == "all"}
    # probability targets: random, one-hot, zeros against -inf logits with and without smoothing
    prob = [c for c in ce if c.param("target_kind") == "probability"]
    assert {"none", "one-hot", "masked"} <= {c.param("probability_zeros") for c in prob}
    masked = [c for c in prob if c.param("probability_zeros") == "masked"]
    assert all(c.param("mask") != "none" and c.param("mask_value") == -math.inf for c in masked)
    assert {0.0, 0.1} <= {c.param("label_smoothing") for c in masked}
    # vocabularies
    assert {32000, 50257, 128256, 262144} <= {c.n for c in ce if c.rows == 1}
    # out-of-range targets, forward only
    bad = [c for c in ce if c.param("out_of_range") != "none"]
    assert {"high", "negative"} == {c.param("out_of_range") for c in bad}
    assert all(c.directions == ("forward",) for c in bad)


def test_gradient_cases_use_an_upstream_of_ones(library):
    ones = [c for c in library if c.param("upstream") == "ones"]
    assert ones and all(c.applies_to(op, "float32", "backward") for c in ones for op in c.ops)
    assert any(c.applies_to("cross_entropy", "float16", "backward") and c.param("target") == "max" for c in ones)
    assert all("softmax" not in c.ops for c in ones)  # softmax's gradient is exactly 0 for dy = 1


def test_seed_example_is_present(library):
    (case,) = [c for c in library if c.param("data") == ((1000.0, 2000.0, 3000.0, 4000.0, 5000.0),)]
    assert (case.rows, case.n) == (1, 5)


# --------------------------------------------------------------------------
# Case objects


def test_case_applies_to_ops_and_formats(tmp_path):
    _write(tmp_path / "u", "a.toml", GOOD + 'ops = ["softmax"]\nformats = ["fp16", "bf16"]\n')
    (case,) = load_cases([tmp_path / "u"], include_default=False)
    assert case.formats == ("float16", "bfloat16")
    assert case.applies_to("softmax", "float16") and case.applies_to("softmax", "bf16")
    assert not case.applies_to("logsumexp", "float16")
    assert not case.applies_to("softmax", "float32")
    assert case.elements == 8
    hash(case)  # frozen and hashable despite its mapping of params
    with pytest.raises(TypeError):
        case.params["n"] = 3  # type: ignore[index]


def test_directions_and_loss_defaults(tmp_path):
    _write(tmp_path / "u", "a.toml", GOOD)
    (case,) = load_cases([tmp_path / "u"], include_default=False)
    assert case.directions == DIRECTIONS == ("forward", "backward")
    assert case.ops == SOFTMAX_FAMILY and "cross_entropy" in case.ops and "linear_cross_entropy" not in case.ops
    assert case.applies_to("cross_entropy", "float32") and case.applies_to("softmax", "float32", "backward")
    for key in LOSS_KEYS + ("upstream",):
        assert key not in case.params and case.param(key) == PARAM_DEFAULTS[key], key
    assert (case.param("target"), case.param("target_kind"), case.param("weight"), case.param("reduction"),
            case.param("label_smoothing"), case.param("ignore_index"), case.param("upstream")) \
        == ("random", "index", "none", "none", 0.0, None, "normal")

    _write(tmp_path / "v", "a.toml", GOOD.replace("n = 8", "rows = 3\nn = 8") + """directions = ["backward"]
ops = ["softmax", "cross_entropy"]
target = [0, 7, 12]
label_smoothing = 0.25
ignore_index = 12
ignored_rows = [-1]
weight = "random"
reduction = "sum"
out_of_range = "negative"
out_of_range_rows = [1]
upstream = "ones"
""")
    (case,) = load_cases([tmp_path / "v"], include_default=False)
    assert case.directions == ("backward",)
    assert case.applies_to("softmax", "float32", "backward") and not case.applies_to("softmax", "float32")
    assert not case.applies_to("logsumexp", "float32", "backward")
    assert case.param("target") == (0, 7, 12) and case.param("ignored_rows") == (2,)
    assert case.param("out_of_range_rows") == (1,) and case.param("out_of_range") == "negative"
    assert (case.param("label_smoothing"), case.param("ignore_index"), case.param("weight"),
            case.param("reduction"), case.param("upstream")) == (0.25, 12, "random", "sum", "ones")


def test_strings_for_special_values_are_accepted(tmp_path):
    _write(tmp_path / "u", "a.toml", """
[[case]]
name = "specials"
family = "x"
description = "d"
values = "explicit"
data = [["inf", "-inf", "nan", "-0.0", "0.0", "finfo.min", 1e3, -2]]
""")
    (case,) = load_cases([tmp_path / "u"], include_default=False)
    row = case.param("data")[0]
    assert row[0] == math.inf and row[1] == -math.inf and math.isnan(row[2])
    assert math.copysign(1.0, row[3]) == -1.0 and math.copysign(1.0, row[4]) == 1.0
    assert row[5] == "finfo.min" and row[6:] == (1000.0, -2.0)
    assert case.seed == load_cases([tmp_path / "u"], include_default=False)[0].seed  # stable default seed


# --------------------------------------------------------------------------
# Malformed files: one-line CaseError naming file, case and key


def test_malformed_toml(tmp_path):
    message = _error(tmp_path, "[[case]]\nname = \n")
    assert "invalid TOML" in message


def test_unknown_key_is_named(tmp_path):
    message = _error(tmp_path, GOOD + "offest = 1e4\n")
    assert "'my-case'" in message and "'offest'" in message


def test_unknown_key_in_an_injection(tmp_path):
    message = _error(tmp_path, GOOD + 'inject = [{ value = "nan", colums = [1] }]\n')
    assert "'colums'" in message


def test_unknown_top_level_key(tmp_path):
    message = _error(tmp_path, GOOD.replace("[[case]]", "[[cases]]"))
    assert "'cases'" in message


@pytest.mark.parametrize("extra, key", [
    ("rows = 0\n", "rows"),
    ('ops = ["softmax", "sigmoid"]\n', "ops"),
    ('formats = ["float8"]\n', "formats"),
    ('values = "gaussian"\n', "values"),
    ('mask = "diagonal"\n', "mask"),
    ("mask_fraction = 0.5\n", "mask_fraction"),
    ("p_max = 0.9\n", "p_max"),
    ('offset = "lots"\n', "offset"),
    ("offset = inf\n", "offset"),
    ("ties = 9\n", "ties"),
    ("seed = -1\n", "seed"),
    ('inject = [{ value = "nan", columns = [8] }]\n', "inject"),
])
def test_bad_values_are_rejected(tmp_path, extra, key):
    message = _error(tmp_path, GOOD + extra)
    assert f"'{key}'" in message and "'my-case'" in message


ROWS4 = GOOD.replace("n = 8", "rows = 4\nn = 8")


@pytest.mark.parametrize("extra, key, words", [
    ('directions = ["sideways"]\n', "directions", "unknown direction"),
    ("directions = []\n", "directions", "non-empty"),
    ('target = "median"\n', "target", "random, max, min"),
    ("target = [1, 2]\n", "target", "list of 4 class indices"),
    ("target = [1, 2, 3, 1.5]\n", "target", "integer"),
    ("target = [1, 2, 3, -100]\n", "target", "default ignore_index"),
    ('target_kind = "soft"\n', "target_kind", "index, probability"),
    ('probability_zeros = "some"\ntarget_kind = "probability"\n', "probability_zeros", "none, masked, one-hot"),
    ('probability_zeros = "masked"\n', "probability_zeros", "target_kind = 'probability'"),
    ('target_kind = "probability"\ntarget = "max"\n', "target", "one-hot"),
    ('target_kind = "probability"\nprobability_zeros = "one-hot"\ntarget = [0, 1, 2, 8]\n', "target", "[0, 8)"),
    ("label_smoothing = 1.5\n", "label_smoothing", "[0, 1]"),
    ('label_smoothing = "lots"\n', "label_smoothing", "not a number"),
    ("ignore_index = 1.0\n", "ignore_index", "integer"),
    ('ignore_index = -100\ntarget_kind = "probability"\n', "ignore_index", "class-index targets"),
    ("ignored_rows = [0]\n", "ignored_rows", "needs ignore_index"),
    ('ignore_index = -100\nignored_rows = "some"\n', "ignored_rows", "'all'"),
    ("ignore_index = -100\nignored_rows = [4]\n", "ignored_rows", "row index"),
    ('weight = "heavy"\n', "weight", "none, random, ones"),
    ("weight = [1, 2]\n", "weight", "list of 8 numbers"),
    ("weight = [1, 1, 1, 1, 1, 1, 1, -1]\n", "weight", ">= 0"),
    ('weight = [1, 1, 1, 1, 1, 1, 1, "inf"]\n', "weight", "finite"),
    ('reduction = "avg"\n', "reduction", "none, mean, sum"),
    ('out_of_range = "low"\n', "out_of_range", "none, high, negative"),
    ('out_of_range = "negative"\nignore_index = -1\n', "out_of_range", "equals ignore_index"),
    ('out_of_range = "high"\nignore_index = 8\n', "out_of_range", "equals ignore_index"),
    ("out_of_range_rows = [1]\n", "out_of_range_rows", "needs out_of_range"),
    ('out_of_range = "high"\nout_of_range_rows = [9]\n', "out_of_range_rows", "row index"),
    ('out_of_range = "high"\nignore_index = -100\nignored_rows = "all"\n', "out_of_range_rows", "ignored_rows"),
    ('upstream = "zeros"\n', "upstream", "normal, ones"),
    ('upstream = "ones"\ndirections = ["forward"]\n', "upstream", "backward"),
    ('target = "max"\nops = ["softmax", "logsumexp"]\n', "target", "only applies to cross_entropy"),
    ('reduction = "sum"\nops = ["log_softmax"]\n', "reduction", "only applies to cross_entropy"),
])
def test_bad_loss_and_backward_keys_are_rejected(tmp_path, extra, key, words):
    message = _error(tmp_path, ROWS4 + extra)
    assert f"key '{key}'" in message and "'my-case'" in message, message
    assert words in message, message


def test_negative_n_and_missing_required(tmp_path):
    assert "'n'" in _error(tmp_path, GOOD.replace("n = 8", "n = -3"))
    assert "'description'" in _error(tmp_path, GOOD.replace('description = "a user case"\n', ""))


def test_duplicate_names(tmp_path):
    _write(tmp_path / "u", "a.toml", GOOD)
    _write(tmp_path / "u", "b.toml", GOOD)
    with pytest.raises(CaseError, match="duplicate name") as info:
        load_cases([tmp_path / "u"], include_default=False)
    assert "\n" not in str(info.value)


def test_user_case_cannot_shadow_a_shipped_one(tmp_path, library):
    _write(tmp_path / "u", "a.toml", GOOD.replace("my-case", library[0].name))
    with pytest.raises(CaseError, match="duplicate name"):
        load_cases([tmp_path / "u"])


# --------------------------------------------------------------------------
# Directories and selection


def test_user_directories_add_to_the_library(tmp_path, library):
    _write(tmp_path / "u", "a.toml", GOOD)
    both = load_cases([tmp_path / "u"])
    assert len(both) == len(library) + 1 and "my-case" in {c.name for c in both}
    only = load_cases([tmp_path / "u"], include_default=False)
    assert [c.name for c in only] == ["my-case"]
    with pytest.raises(CaseError, match="no such case directory"):
        load_cases([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseError, match="no \\*.toml"):
        load_cases([tmp_path / "empty"])


def test_select_by_name_or_family(library):
    assert select_cases(library, []) == library
    masking = select_cases(library, ["masking"])
    assert masking and all(c.family == "masking" for c in masking)
    names = [c.name for c in select_cases(library, ["offset-plus-1e3*", "mask-prefix"])]
    assert names == sorted(names, key=[c.name for c in library].index)
    assert set(names) == {"offset-plus-1e3", "offset-plus-1e38", "mask-prefix"}
    with pytest.raises(CaseError) as info:
        select_cases(library, ["masking", "x"])
    assert str(info.value) == "no case matches 'x'"
