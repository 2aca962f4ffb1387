"""Inputs: exact, deterministic, identical across formats up to one correct rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from softaudit.cases import Case, load_cases
from softaudit.formats import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, FORMATS, round_float64_array
from softaudit.inputs import NotApplicable, float64_values, generate


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {c.name: c for c in load_cases()}


def _user_case(tmp_path: Path, body: str, name: str = "u") -> Case:
    d = tmp_path / name
    d.mkdir()
    (d / "c.toml").write_text(f'[[case]]\nname = "{name}"\nfamily = "user"\ndescription = "d"\n{body}',
                              encoding="utf-8")
    (case,) = load_cases([d], include_default=False)
    return case


def test_whole_library_generates(cases):
    """Every shipped case yields a proper array, or is not applicable only for a stated, expected reason."""
    for case in cases.values():
        for fmt in FORMATS.values():
            if not case.applies_to_format(fmt.name):
                with pytest.raises(NotApplicable):
                    generate(case, fmt)
                continue
            try:
                x = generate(case, fmt)
            except NotApplicable as exc:
                assert fmt is FLOAT16 and "beyond float16's range" in exc.reason, (case.name, exc.reason)
                continue
            assert x.dtype == fmt.np_dtype and x.shape == (case.rows, case.n), case.name
            assert x.flags.c_contiguous


def test_seed_example_values_are_exact(cases):
    case = cases["seed-softmax-1000-to-5000"]
    for fmt in (FLOAT64, FLOAT32, FLOAT16):
        x = generate(case, fmt)
        assert x.astype(np.float64).tolist() == [[1000.0, 2000.0, 3000.0, 4000.0, 5000.0]]
    # bfloat16 holds 8 bits: 3000 and 5000 round (ties to even) to 3008 and 4992.
    assert generate(case, BFLOAT16).astype(np.float64).tolist() == [[1000.0, 2000.0, 3008.0, 4000.0, 4992.0]]


def test_deterministic_and_seed_dependent(cases):
    case = cases["offset-plus-1e3"]
    a, b = generate(case, FLOAT32, seed=3), generate(case, FLOAT32, seed=3)
    assert a.tobytes() == b.tobytes()
    c = generate(case, FLOAT32, seed=4)
    assert a.tobytes() != c.tobytes()
    const = cases["zeros"]
    assert generate(const, FLOAT32, seed=1).tobytes() == generate(const, FLOAT32, seed=2).tobytes()


def test_known_values_pin_the_random_stream(cases):
    """Same bytes on every machine: a change to the generator order breaks stored findings."""
    x = generate(cases["seed-uniform-plus-1e5"], FLOAT64)
    assert ((x >= 1e5) & (x < 1e5 + 1)).all()
    rng = np.random.default_rng(np.random.SeedSequence([0, cases["seed-uniform-plus-1e5"].seed]))
    assert np.array_equal(x, rng.random((8, 100)) + 1e5)


@pytest.mark.parametrize("name", ["offset-plus-1e3", "near-uniform-4096", "mask-neg-1e4-add", "confident-0.999",
                                  "gap-88.7", "ties-two", "mask-finfo-min-add-causal", "ramp-0-to-minus-120"])
@pytest.mark.parametrize("fmt", [FLOAT32, FLOAT16, BFLOAT16], ids=lambda f: f.name)
def test_one_correct_rounding_of_the_float64_values(cases, name, fmt):
    case = cases[name]
    x64, _ = float64_values(case, fmt, seed=7)
    expected = round_float64_array(x64, fmt)
    got = generate(case, fmt, seed=7)
    assert got.tobytes() == expected.tobytes()
    if case.param("mask_value") != "finfo.min":  # the only format-dependent parameter here
        assert np.array_equal(x64, float64_values(case, FLOAT64, seed=7)[0])


def test_bfloat16_is_rounded_once_not_through_float32(tmp_path):
    # 1 + 2^-8 + 2^-24 rounds to 1 + 2^-7 in bfloat16 directly, but to 1.0 via float32 (1 + 2^-8, a tie).
    case = _user_case(tmp_path, 'values = "explicit"\ndata = [[1.0039063096046448, -1.0039063096046448]]\n')
    x = generate(case, BFLOAT16).astype(np.float64)
    assert x.tolist() == [[1.0078125, -1.0078125]]


def test_offset_beyond_float16_is_not_applicable(cases):
    with pytest.raises(NotApplicable) as info:
        generate(cases["offset-plus-1e38"], FLOAT16)
    assert info.value.reason == "offset 1e38 is beyond float16's range (max 65504)"
    generate(cases["offset-plus-1e38"], BFLOAT16)  # within bfloat16's range


def test_restricted_formats_are_not_applicable(cases):
    case = cases["long-zeros-65536"]
    with pytest.raises(NotApplicable, match="restricted to float16, bfloat16"):
        generate(case, FLOAT32)
    x = generate(case, FLOAT16)
    assert x.dtype == np.float16 and x.shape == (1, 65536) and not x.any()


def test_finfo_min_mask_is_minus_max_finite(cases):
    case = cases["mask-finfo-min-set"]
    for fmt in FORMATS.values():
        x = generate(case, fmt).astype(np.float64)
        assert (x[:, 64:] == -fmt.max_finite).all() and (x[:, :64] > -100).all()


def test_fully_masked_rows_are_all_minus_inf(cases):
    x = generate(cases["mask-fully-masked-rows"], FLOAT16).astype(np.float64)
    full = [1, 4, 6]
    assert np.isneginf(x[full]).all()
    assert np.isfinite(np.delete(x, full, axis=0)).all()


def test_add_mode_adds_the_mask_to_the_scores(tmp_path):
    body = "rows = 4\nn = 16\nseed = 5\nscale = 2.0\n"
    plain = _user_case(tmp_path, body, "plain")
    added = _user_case(tmp_path, body + 'mask = "prefix"\nmask_value = -1e4\nmask_mode = "add"\n', "added")
    x0, _ = float64_values(plain, FLOAT16)
    x1, _ = float64_values(added, FLOAT16)
    assert np.array_equal(x1[:, :8], x0[:, :8] - 1e4)
    assert np.array_equal(x1[:, 8:], x0[:, 8:])
    assert np.array_equal(generate(added, FLOAT16), round_float64_array(x0 + np.where(np.arange(16) < 8, -1e4, 0.0),
                                                                        FLOAT16))


def test_add_mode_overflow_is_not_applicable(tmp_path):
    case = _user_case(tmp_path, 'n = 4\nvalues = "constant"\nvalue = -100.0\nmask = "all"\n'
                                'mask_value = "finfo.min"\nmask_mode = "add"\n')
    with pytest.raises(NotApplicable, match="beyond float16's range"):
        generate(case, FLOAT16)
    assert (generate(case, FLOAT32).astype(np.float64) == -FLOAT32.max_finite).all()


def test_special_values_land_where_asked(cases):
    x = generate(cases["mask-nan-in-fully-masked-row"], BFLOAT16).astype(np.float64)
    assert np.isnan(x[2, 5]) and np.isnan(x).sum() == 1
    assert np.isneginf(np.delete(x[2], 5)).all() and np.isfinite(x[[0, 1, 3]]).all()
    z = generate(cases["negative-zeros"], FLOAT16).astype(np.float64)
    assert (z == 0).all() and np.signbit(z).all()
    inf = generate(cases["posinf-several"], FLOAT32)
    assert (np.isposinf(inf).sum(axis=1) == 3).all()


def test_confident_gap_and_ties_shapes(cases):
    x, _ = float64_values(cases["confident-0.999"], FLOAT64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.allclose(p.max(axis=1), 0.999, rtol=0, atol=1e-12)
    g, _ = float64_values(cases["gap-88.7"], FLOAT64)
    top2 = np.sort(g, axis=1)[:, -2:]
    assert np.allclose(top2[:, 1] - top2[:, 0], 88.7, atol=1e-9)
    t = generate(cases["ties-many"], FLOAT32)
    assert ((t == t.max(axis=1, keepdims=True)).sum(axis=1) == 32).all()
