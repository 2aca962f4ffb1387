"""The case library: loading, validation, selection, and what the shipped library covers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from softaudit.cases import (
    FAMILIES,
    OPS,
    PARAM_DEFAULTS,
    Case,
    CaseError,
    default_cases_dir,
    load_cases,
    select_cases,
)
from softaudit.formats import FORMATS

ELEMENT_BUDGET = 1_200_000
"""Per-format input elements of the default library: a full cold audit must stay minutes long."""


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
        total = sum(c.elements for c in library if c.applies_to_format(fmt))
        assert total <= ELEMENT_BUDGET, (fmt, total)


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
