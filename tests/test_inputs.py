"""Inputs: exact, deterministic, identical across formats up to one correct rounding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from softaudit.cases.inputs import LossInputs, NotApplicable, float64_values, generate, loss_inputs, upstream
from softaudit.cases.model import Case
from softaudit.cases.reader import load_cases
from softaudit.formats import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, FORMATS, round_float64_array


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
    assert any(not c.linear for c in cases.values()) and any(c.linear for c in cases.values())
    for case in cases.values():
        for fmt in FORMATS.values():
            if not case.applies_to_format(fmt.name):
                with pytest.raises(NotApplicable):
                    generate(case, fmt)
                continue
            if case.linear:
                # Its inputs are hidden states and a weight, from their own generator (linear_inputs,
                # tests/test_linear_cross_entropy.py): generate refuses it, saying so.
                with pytest.raises(NotApplicable, match="is a linear_cross_entropy case"):
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


# --------------------------------------------------------------------------
# x must not move: hashes of generate() taken before cross-entropy keys existed

X_HASHES = {
    "offset-plus-1e3": "067d1db96224ab68521b32f70514fe97",
    "confident-0.999": "f958ab44f736153fb6b10bd6dccf35af",
    "confident-vocab-32000": "11d46ee475ce5382d28b9d55335b8235",
    "mask-fully-masked-rows": "8a0bc844535b2a3492ada977f87c0b3b",
    "seed-uniform-plus-1e5": "a93f15d6210233057fd46ca7cde80a3f",
    "gap-88.7": "e9692ee7e44e6a1e91c01bcc16495b8c",
    "ties-many": "3cdf694d5decb5a9bb98f3dbc8414514",
    "vocab-128256": "5e160888fde66a78381da3672ba212d2",
    "n1-specials": "7a08db36559827bf96cb30f06a0cae46",
    "mask-scattered": "274028a0b2aef186e2c7075e230c80b8",
    "mask-finfo-min-add-causal": "0709ad7e8db096679247400e341508c6",
}
"""sha256 (first 32 hex digits) over generate() for seeds 0 and 5 and every format ("NA" when not applicable)."""


def _x_hash(case: Case) -> str:
    h = hashlib.sha256()
    for seed in (0, 5):
        for fmt in FORMATS.values():
            try:
                h.update(generate(case, fmt, seed=seed).tobytes())
            except NotApplicable:
                h.update(b"NA")
    return h.hexdigest()[:32]


@pytest.mark.parametrize("name", sorted(X_HASHES))
def test_existing_inputs_are_unchanged(cases, name):
    assert _x_hash(cases[name]) == X_HASHES[name]


def test_loss_and_backward_keys_do_not_move_x(tmp_path):
    body = "rows = 4\nn = 16\nseed = 11\nscale = 2.0\nmask = \"scattered\"\n"
    plain = _user_case(tmp_path, body, "plain")
    loaded = _user_case(tmp_path, body + 'target_kind = "probability"\nweight = "random"\nlabel_smoothing = 0.1\n'
                                         'reduction = "mean"\nupstream = "ones"\n', "loaded")
    for fmt in FORMATS.values():
        assert generate(plain, fmt, seed=2).tobytes() == generate(loaded, fmt, seed=2).tobytes()


# --------------------------------------------------------------------------
# Cross-entropy's inputs


def _loss(case: Case, fmt=FLOAT32, seed: int = 0) -> LossInputs:
    return loss_inputs(case, fmt, generate(case, fmt, seed=seed), seed=seed)


def test_every_case_has_loss_inputs_and_upstreams(cases):
    for case in cases.values():
        for fmt in FORMATS.values():
            try:
                x = generate(case, fmt)
            except NotApplicable:
                continue
            loss = loss_inputs(case, fmt, x)
            if loss.target_kind == "index":
                assert loss.target.dtype == np.int64 and loss.target.shape == (case.rows,), case.name
            else:
                assert loss.target.dtype == fmt.np_dtype and loss.target.shape == (case.rows, case.n), case.name
            assert loss.reduction == case.param("reduction")
            if case.param("out_of_range") == "none" and not isinstance(case.param("target"), tuple):
                assert not loss.out_of_range, case.name
            for shape in ((case.rows, case.n), (case.rows,), ()):
                dy = upstream(case, fmt, shape)
                assert dy.dtype == fmt.np_dtype and dy.shape == shape and np.isfinite(dy.astype(np.float64)).all()


def test_default_targets_are_random_classes_for_any_case(cases):
    case = cases["offset-plus-1e3"]  # written before cross-entropy existed
    loss = _loss(case)
    rng = np.random.default_rng(np.random.SeedSequence([0, case.seed, 1]))
    assert np.array_equal(loss.target, rng.integers(0, case.n, size=case.rows))
    assert (loss.target_kind, loss.weight, loss.label_smoothing, loss.ignore_index, loss.reduction,
            loss.out_of_range) == ("index", None, 0.0, None, "none", False)
    assert loss.keywords() == {"reduction": "none"}  # passed explicitly: torch's default is "mean"


def test_loss_inputs_are_deterministic_and_the_same_in_every_format(cases):
    for name in ("ce-smoothing-0.1-ignore-weights-mean", "offset-plus-1e3", "ce-prob-random", "confident-0.9"):
        case = cases[name]
        a, b = _loss(case, FLOAT32, seed=3), _loss(case, FLOAT32, seed=3)
        assert a.target.tobytes() == b.target.tobytes()
        assert (a.weight is None) == (b.weight is None)
        if a.weight is not None:
            assert a.weight.tobytes() == b.weight.tobytes()
        ref = _loss(case, FLOAT64, seed=3)
        for fmt in (FLOAT32, FLOAT16, BFLOAT16):
            other = _loss(case, fmt, seed=3)
            if ref.target_kind == "index":
                assert np.array_equal(other.target, ref.target), (name, fmt.name)
            else:  # the float64 rows rounded once into the format
                assert other.target.tobytes() == round_float64_array(ref.target, fmt).tobytes(), (name, fmt.name)
            if ref.weight is not None:
                assert other.weight.tobytes() == round_float64_array(ref.weight, fmt).tobytes(), (name, fmt.name)
    case = cases["offset-plus-1e3"]
    assert not np.array_equal(_loss(case, seed=3).target, _loss(case, seed=4).target)


def test_max_and_min_targets(cases):
    for name in ("confident-0.999", "ce-confident-vocab-128256"):
        for fmt in (FLOAT32, BFLOAT16):
            case = cases[name]
            x = generate(case, fmt).astype(np.float64)
            t = loss_inputs(case, fmt, generate(case, fmt)).target
            assert (x[np.arange(case.rows), t] == x.max(axis=1)).all()
            assert ((x == x.max(axis=1, keepdims=True)).sum(axis=1) == 1).all()  # one max: no tie to break
    case = cases["target-below-max-200"]
    x = generate(case, FLOAT16).astype(np.float64)
    t = _loss(case, FLOAT16).target
    assert np.allclose(x.max(axis=1) - x[np.arange(case.rows), t], 200, atol=2)


def test_max_target_skips_nan(tmp_path):
    case = _user_case(tmp_path, 'values = "explicit"\ndata = [[1, "nan", 3, 3, -1], ["nan", "nan", -2, 0, 5]]\n'
                                'target = "max"\n')
    assert _loss(case).target.tolist() == [2, 4]
    low = _user_case(tmp_path, 'values = "explicit"\ndata = [["nan", -4, 3, -4, -1]]\ntarget = "min"\n', "low")
    assert _loss(low).target.tolist() == [1]


def test_explicit_targets_and_ignored_rows(tmp_path):
    case = _user_case(tmp_path, "rows = 5\nn = 6\ntarget = [0, 5, 3, 7, -100]\nignore_index = -100\n"
                                "ignored_rows = [1, -3]\n")
    loss = _loss(case)
    assert loss.target.tolist() == [0, -100, -100, 7, -100]
    assert loss.out_of_range  # 7 is outside [0, 6) and is not the ignore_index
    assert loss.keywords() == {"ignore_index": -100, "reduction": "none"}
    every = _user_case(tmp_path, "rows = 3\nn = 6\nignore_index = 2\nignored_rows = \"all\"\n", "every")
    loss = _loss(every)
    assert loss.target.tolist() == [2, 2, 2] and loss.ignore_index == 2 and not loss.out_of_range


def test_out_of_range_targets(cases, tmp_path):
    high = _loss(cases["ce-target-out-of-range-high"])
    assert high.out_of_range and high.target[1] == 16 and ((high.target >= 0) & (high.target < 16)).sum() == 3
    neg = _loss(cases["ce-target-out-of-range-negative"])
    assert neg.out_of_range and neg.target[2] == -1 and neg.target[0] == -100 and neg.ignore_index == -100
    assert not _loss(cases["ce-all-ignored-mean"]).out_of_range  # -100 is ignored, not out of range
    inside = _user_case(tmp_path, "rows = 2\nn = 4\ntarget = [3, 0]\n")
    assert not _loss(inside).out_of_range
    edge = _user_case(tmp_path, "rows = 2\nn = 4\ntarget = [4, 0]\n", "edge")
    assert _loss(edge).out_of_range


def test_probability_targets_sum_to_one_and_zeros_are_exact(cases):
    for fmt in FORMATS.values():
        q = _loss(cases["ce-prob-random"], fmt).target.astype(np.float64)
        assert (q > 0).all()
        assert np.allclose(q.sum(axis=1), 1.0, rtol=0, atol=2 * 2.0**-fmt.p * 8), fmt.name
        case = cases["ce-prob-masked"]
        x = generate(case, fmt).astype(np.float64)
        loss = loss_inputs(case, fmt, generate(case, fmt))
        q = loss.target.astype(np.float64)
        assert loss.target.dtype == fmt.np_dtype and loss.target_kind == "probability"
        assert np.isneginf(x).any(axis=1).all()
        assert (q[np.isneginf(x)] == 0).all() and (q[~np.isneginf(x)] > 0).all()
        assert np.allclose(q.sum(axis=1), 1.0, rtol=0, atol=2 * 2.0**-fmt.p * 8), fmt.name
        hot = _loss(cases["ce-prob-one-hot-masked"], fmt)
        x = generate(cases["ce-prob-one-hot-masked"], fmt).astype(np.float64)
        h = hot.target.astype(np.float64)
        assert ((h == 0) | (h == 1)).all() and (h.sum(axis=1) == 1).all()
        assert (x[h == 1] == x.max(axis=1)).all()


def test_fully_masked_row_gets_zero_probabilities(tmp_path):
    case = _user_case(tmp_path, 'rows = 3\nn = 8\nmask = "all"\nmask_rows = [1]\ntarget_kind = "probability"\n'
                                'probability_zeros = "masked"\n')
    q = _loss(case).target.astype(np.float64)
    assert (q[1] == 0).all() and np.allclose(q[[0, 2]].sum(axis=1), 1, atol=1e-6)


def test_weights_are_positive_finite_and_in_the_format(cases, tmp_path):
    case = cases["ce-smoothing-0.9-weights-sum"]
    for fmt in FORMATS.values():
        w = _loss(case, fmt).weight
        assert w is not None and w.dtype == fmt.np_dtype and w.shape == (case.n,)
        w64 = w.astype(np.float64)
        assert np.isfinite(w64).all() and (w64 >= 0.25).all() and (w64 <= 4).all()
        assert np.unique(w64).size > case.n // 2  # random, not constant
    ones = _user_case(tmp_path, 'n = 4\nweight = "ones"\n', "ones")
    assert _loss(ones, BFLOAT16).weight.astype(np.float64).tolist() == [1.0] * 4
    given = _user_case(tmp_path, "n = 4\nweight = [0.0, 1e5, 0.1, 2]\n", "given")
    assert _loss(given, FLOAT32).weight.tolist() == [0.0, 1e5, np.float32(0.1), 2.0]
    with pytest.raises(NotApplicable, match="class weight 1e5 is beyond float16's range"):
        _loss(given, FLOAT16)


def test_keywords_and_parameters(cases):
    loss = _loss(cases["ce-smoothing-0.1-ignore-weights-mean"])
    kw = loss.keywords()
    assert set(kw) == {"label_smoothing", "ignore_index", "weight", "reduction"}
    assert kw["label_smoothing"] == 0.1 and kw["ignore_index"] == -100 and kw["reduction"] == "mean"
    assert kw["weight"] is loss.weight
    assert loss.parameters() == {"target_kind": "index", "label_smoothing": 0.1, "ignore_index": -100,
                                 "weight": "given", "reduction": "mean"}
    prob = _loss(cases["ce-prob-masked-smoothing-0.1"])
    assert prob.keywords() == {"label_smoothing": 0.1, "reduction": "none"}
    assert prob.parameters() == {"target_kind": "probability", "label_smoothing": 0.1, "ignore_index": None,
                                 "weight": "none", "reduction": "none"}
    plain = _loss(cases["n2-rows"])
    assert plain.keywords() == {"reduction": "none"} and plain.parameters()["weight"] == "none"
    import json
    json.dumps(loss.parameters())


def test_loss_inputs_follow_the_case_restrictions(cases):
    case = cases["long-zeros-65536"]
    with pytest.raises(NotApplicable, match="restricted to float16, bfloat16"):
        loss_inputs(case, FLOAT32, np.zeros((1, 65536), dtype=np.float32))
    with pytest.raises(NotApplicable, match="restricted"):
        upstream(case, FLOAT32, (1,))
    with pytest.raises(ValueError, match="shape"):
        loss_inputs(cases["n2-rows"], FLOAT32, np.zeros((2, 6), dtype=np.float32))


# --------------------------------------------------------------------------
# Upstream gradients


def test_upstream_is_normal_rounded_once_and_one_for_a_scalar(cases):
    case = cases["offset-plus-1e3"]
    rng = np.random.default_rng(np.random.SeedSequence([0, case.seed, 2]))
    g64 = rng.standard_normal((4, 256))
    for fmt in FORMATS.values():
        dy = upstream(case, fmt, (4, 256))
        assert dy.tobytes() == round_float64_array(g64, fmt).tobytes()
        assert upstream(case, fmt, (4, 256)).tobytes() == dy.tobytes()
        assert upstream(case, fmt, (4, 256), seed=1).tobytes() != dy.tobytes()
        scalar = upstream(case, fmt, ())
        assert scalar.shape == () and scalar.dtype == fmt.np_dtype and float(scalar) == 1.0
    rows = upstream(case, FLOAT32, (4,))
    assert np.unique(rows).size == 4 and not np.isin(rows, generate(case, FLOAT32)).any()


def test_upstream_ones(cases):
    case = cases["grad-confident-0.999-ones"]
    for fmt in FORMATS.values():
        for shape in ((4, 1000), (4,), ()):
            dy = upstream(case, fmt, shape)
            assert dy.shape == shape and (dy.astype(np.float64) == 1.0).all()
