"""Tests for softaudit.candidates and the built-in candidates."""

from __future__ import annotations

import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from softaudit.candidates import (
    CandidateImportError,
    OPS,
    CandidateError,
    OpFunction,
    builtin_names,
    call_op,
    candidate,
    load_target,
)
from softaudit.formats import FORMATS, get_format, round_float64_array

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples"
F32, F64, BF16 = get_format("float32"), get_format("float64"), get_format("bfloat16")

# Just above the bfloat16 midpoint between 1 and 1 + 2^-7: correct rounding gives
# 1 + 2^-7, but rounding through float32 first lands on the midpoint and then on 1.
DOUBLE_ROUNDING_TRAP = 1.0 + 2.0**-8 + 2.0**-30


def load_one(path: Path | str, **kwargs: object) -> object:
    """The single candidate a target defines."""
    [cand] = load_target(str(path), **kwargs)
    return cand


def numpy_op(fn, op: str = "softmax", backend: str = "numpy") -> OpFunction:
    """An OpFunction around a bare callable, skipping detection."""
    return OpFunction(op=op, fn=fn, backend=backend, device="cpu", rowwise=False, dim_kw=None)


def exact_ops(x: np.ndarray) -> dict[str, np.ndarray]:
    """softmax, log_softmax and logsumexp in float64 on a well-scaled input."""
    x = x.astype(np.float64)
    lse = np.log(np.sum(np.exp(x - x.max(axis=-1, keepdims=True)), axis=-1)) + x.max(axis=-1)
    return {"softmax": np.exp(x - lse[:, None]), "log_softmax": x - lse[:, None], "logsumexp": lse}


X = np.array([[0.0, math.log(2.0), math.log(3.0)], [-1.0, 0.5, 2.0]])


# --------------------------------------------------------------------------
# Loading and detection


def test_numpy_module_detected_as_numpy() -> None:
    cand = load_one(FIXTURES / "np_plain.py")
    assert cand.name == "np_plain"
    assert cand.description == "Plain numpy candidate: module-level functions, no decorator."
    assert list(cand.ops) == ["softmax", "logsumexp"]
    for opfn in cand.ops.values():
        assert (opfn.backend, opfn.rowwise, opfn.dim_kw, opfn.notes) == ("numpy", False, None, ())


def test_torch_module_detected_as_torch_through_helpers() -> None:
    cand = load_one(FIXTURES / "torch_plain.py")
    assert {op: f.backend for op, f in cand.ops.items()} == {"softmax": "torch", "log_softmax": "torch"}
    result = call_op(cand.ops["log_softmax"], X, F32)
    assert result.error is None and result.output_dtype == "torch.float32 on cpu"
    np.testing.assert_allclose(result.output, exact_ops(X)["log_softmax"], rtol=1e-6)


def test_tensor_methods_without_imports_fall_back_to_torch_with_note() -> None:
    opfn = load_one(FIXTURES / "tensor_methods.py").ops["softmax"]
    assert opfn.backend == "torch"
    assert len(opfn.notes) == 1 and opfn.notes[0].startswith("looked like numpy code")
    assert "AttributeError" in opfn.notes[0]


def test_decorator_defines_two_named_candidates() -> None:
    fast, careful = load_target(str(FIXTURES / "two_named.py"))
    assert (fast.name, list(fast.ops)) == ("fast", ["softmax", "logsumexp"])
    assert (careful.name, list(careful.ops)) == ("careful", ["softmax"])
    assert fast.ops["softmax"].fn.__name__ == "fast_softmax"
    assert (fast.ops["softmax"].backend, careful.ops["softmax"].backend) == ("numpy", "torch")
    assert (fast.description, careful.description) == ("Fast variant.", "Careful variant.")
    assert fast.target == careful.target == str(FIXTURES / "two_named.py")
    for cand in (fast, careful):
        assert call_op(cand.ops["softmax"], X, F32).error is None


def test_decorator_returns_function_and_checks_arguments() -> None:
    def softmax(x: np.ndarray) -> np.ndarray:
        return x

    assert candidate("a")(softmax) is softmax
    assert candidate(softmax) is softmax  # bare @candidate
    with pytest.raises(ValueError, match="not named after an op"):
        candidate("a")(lambda x: x)
    with pytest.raises(ValueError, match="op must be one of"):
        candidate(op="softplus")
    with pytest.raises(ValueError, match="backend must be"):
        candidate(backend="jax")


def test_dim_and_axis_keywords_are_passed_minus_one() -> None:
    cand = load_one(FIXTURES / "dim_axis.py")
    assert (cand.ops["softmax"].dim_kw, cand.ops["softmax"].backend) == ("axis", "numpy")
    assert (cand.ops["log_softmax"].dim_kw, cand.ops["log_softmax"].backend) == ("dim", "torch")
    for op, opfn in cand.ops.items():
        result = call_op(opfn, X, F64)
        assert result.error is None, result.error
        np.testing.assert_allclose(result.output, exact_ops(X)[op], rtol=1e-13)


def test_callable_without_signature_gets_dim_by_trial(tmp_path: Path) -> None:
    impl = tmp_path / "alias.py"
    impl.write_text("import torch\nlogsumexp = torch.logsumexp\n")
    opfn = load_one(impl).ops["logsumexp"]
    assert (opfn.backend, opfn.dim_kw) == ("torch", "dim")
    assert any("found by trial" in note for note in opfn.notes)


def test_one_d_only_functions_detected_as_rowwise_with_note() -> None:
    cand = load_one(FIXTURES / "one_d_only.py")
    for op, opfn in cand.ops.items():
        assert opfn.rowwise
        assert opfn.notes[0].startswith("audited row by row (1-D only)")
        result = call_op(opfn, X, F64)
        assert result.error is None and result.output.shape == exact_ops(X)[op].shape
        np.testing.assert_allclose(result.output, exact_ops(X)[op], rtol=1e-13)
    # softmax raises on 2-D input; logsumexp silently returns one scalar for the whole array.
    assert "ValueError: expected a vector" in cand.ops["softmax"].notes[0]
    assert "returned shape ()" in cand.ops["logsumexp"].notes[0]


def test_rowwise_example_with_wrong_2d_values_detected() -> None:
    cand = load_one(EXAMPLES / "rowwise_1d.py")
    assert all(opfn.rowwise for opfn in cand.ops.values())
    assert "wrong values" in cand.ops["softmax"].notes[0]


def test_rowwise_can_be_requested() -> None:
    cand = load_one(FIXTURES / "np_plain.py", rowwise=True)
    opfn = cand.ops["softmax"]
    assert opfn.rowwise and opfn.notes == ("audited row by row (as requested)",)
    np.testing.assert_allclose(call_op(opfn, X, F64).output, exact_ops(X)["softmax"], rtol=1e-13)


def test_module_without_ops_is_a_one_line_error() -> None:
    target = str(FIXTURES / "no_ops.py")
    with pytest.raises(CandidateError) as info:
        load_target(target)
    assert str(info.value) == f"{target} defines none of softmax, log_softmax, logsumexp"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("import numpy as np\n\ndef softmax(x)\n    return x\n")
    with pytest.raises(CandidateError) as info:
        load_target(str(impl))
    assert str(info.value).startswith(f"{impl}:3: SyntaxError: ")
    assert "\n" not in str(info.value)


def test_missing_import_names_the_module(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("import cupy_not_installed_here as cp\n\ndef softmax(x):\n    return x\n")
    with pytest.raises(CandidateError) as info:
        load_target(str(impl))
    assert str(info.value) == f"{impl} imports 'cupy_not_installed_here', which is not installed"


def test_error_at_import_names_file_and_line(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("SCALE = 1\nSCALE = SCALE / 0\n")
    with pytest.raises(CandidateImportError) as info:
        load_target(str(impl))
    assert str(info.value) == f"{impl}:2: raised ZeroDivisionError: division by zero while importing"


@pytest.mark.parametrize("source, message", [
    ("def softmax(x, temperature):\n    return x\n",
     "softmax(x, temperature): unexpected required parameter 'temperature'"),
    ("def softmax(*, x):\n    return x\n", "softmax(*, x) takes no positional parameter for the input x"),
])
def test_uncallable_signature_is_one_line_naming_the_parameter(tmp_path: Path, source, message) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text(source)
    with pytest.raises(CandidateError) as info:
        load_target(str(impl))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_optional_extra_parameters_are_fine(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("import numpy as np\ndef logsumexp(x, axis=-1, keepdims=False, *, scale=1.0):\n"
                    "    a = x.max(axis)\n    return a + np.log(np.exp(x - a[:, None]).sum(axis))\n")
    (cand,) = load_target(str(impl))
    assert cand.ops["logsumexp"].dim_kw == "axis"


def test_same_op_twice_in_a_named_candidate(tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text(
        "from softaudit import candidate\n"
        "@candidate('a', op='softmax')\ndef f(x): return x\n"
        "@candidate('a', op='softmax')\ndef g(x): return x\n"
    )
    with pytest.raises(CandidateError, match="candidate 'a' has two softmax functions"):
        load_target(str(impl))


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(CandidateError) as info:
        load_target("examples/does_not_exist.py")
    assert str(info.value) == "examples/does_not_exist.py: no such file"
    with pytest.raises(CandidateError) as info:
        load_target("builtin:foo")
    assert str(info.value) == "unknown built-in 'builtin:foo' (known: naive, shifted, shifted-f64, torch)"


@pytest.mark.parametrize("name", ["seed_numpy", "torch_impl", "naive_numpy", "decorated", "rowwise_1d"])
def test_examples_load_and_run(name: str) -> None:
    for cand in load_target(str(EXAMPLES / f"{name}.py")):
        for op, opfn in cand.ops.items():
            result = call_op(opfn, X, F32)
            assert result.error is None and not result.input_modified
            np.testing.assert_allclose(result.output, exact_ops(X)[op], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# call_op


def test_input_mutation_detected_numpy() -> None:
    opfn = load_one(FIXTURES / "mutating.py").ops["softmax"]
    result = call_op(opfn, X, F32)
    assert result.input_modified and result.error is None
    # The caller's array is untouched: the candidate got a copy.
    assert X[0, 1] == math.log(2.0)


def test_input_mutation_detected_torch_and_nan_is_not_a_change() -> None:
    x = np.array([[np.nan, 1.0, -np.inf]], dtype=np.float32)
    result = call_op(numpy_op(lambda t: t.sub_(1.0), backend="torch"), x, F32)
    assert result.input_modified
    assert not call_op(numpy_op(lambda t: t.clone(), backend="torch"), x, F32).input_modified
    assert not call_op(numpy_op(lambda a: a.copy()), x, F32).input_modified


def test_each_call_gets_a_fresh_buffer() -> None:
    seen: list[np.ndarray] = []
    opfn = numpy_op(lambda a: (seen.append(a), a.copy())[1])
    x = X.astype(np.float32)
    call_op(opfn, x, F32)
    call_op(opfn, x, F32)
    assert not np.shares_memory(seen[0], x) and not np.shares_memory(seen[0], seen[1])


def test_exception_becomes_one_line_error() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise ZeroDivisionError("no\nsecond line")

    result = call_op(numpy_op(broken), X, F32)
    assert (result.output, result.error) == (None, "raised ZeroDivisionError: no")


def test_wrong_shape_and_non_arrays_reported() -> None:
    def shape_error(value: object) -> str | None:
        return call_op(numpy_op(lambda x: value), X, F32).error

    assert shape_error(np.zeros(3, np.float32)) == "returned shape (3,) but (2, 3) was expected"
    assert shape_error("oops") == "returned a str, not an array"
    assert shape_error(None) == "returned None, not an array"
    assert shape_error(np.zeros((2, 3), np.int64)) == "returned int64 values, not floating point"


def test_list_output_accepted() -> None:
    result = call_op(numpy_op(lambda x: x.tolist()), X, F64)
    assert result.error is None and result.output_dtype == "list"
    assert result.output.dtype == np.float64 and np.array_equal(result.output, X)


def test_float64_output_for_float32_input_is_rounded_and_noted() -> None:
    result = call_op(numpy_op(lambda x: x.astype(np.float64) / 3), X, F32)
    expected = (X.astype(np.float32).astype(np.float64) / 3).astype(np.float32)
    assert result.output.dtype == np.float32 and np.array_equal(result.output, expected)
    assert result.output_dtype == "float64"
    assert result.notes == ("returned float64 for float32 input; judged after rounding to float32",)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_bfloat16_round_trip_without_double_rounding(backend: str) -> None:
    bits = np.array([[0x3F80, 0x0001, 0x7F7F, 0xFF80, 0x8000, 0x3F81]], dtype=np.uint16)
    x = bits.view(ml_dtypes.bfloat16)  # 1, smallest subnormal, max finite, -inf, -0, 1 + 2^-7
    identity = numpy_op((lambda t: t.clone()) if backend == "torch" else (lambda a: a.copy()), backend=backend)
    result = call_op(identity, x, BF16)
    assert result.output.dtype == BF16.np_dtype and np.array_equal(result.output.view(np.uint16), bits)

    if backend == "torch":
        def trap(t: torch.Tensor) -> torch.Tensor:
            return torch.full(t.shape, DOUBLE_ROUNDING_TRAP, dtype=torch.float64)
    else:
        def trap(a: np.ndarray) -> np.ndarray:
            return np.full(a.shape, DOUBLE_ROUNDING_TRAP)
    result = call_op(numpy_op(trap, backend=backend), x, BF16)
    assert np.all(result.output.astype(np.float64) == 1.0 + 2.0**-7)
    assert "judged after rounding to bfloat16" in result.notes[0]


def test_logsumexp_column_and_scalar_outputs_accepted() -> None:
    column = call_op(numpy_op(lambda x: x.sum(axis=-1, keepdims=True), op="logsumexp"), X, F64)
    assert column.error is None and column.output.shape == (2,)
    scalar = call_op(numpy_op(lambda x: x.sum(), op="logsumexp"), X[:1], F64)
    assert scalar.error is None and scalar.output.shape == (1,)
    wrong = call_op(numpy_op(lambda x: x.sum(), op="logsumexp"), X, F64)
    assert wrong.error == "returned shape () but (2,) was expected"


# --------------------------------------------------------------------------
# Built-ins


def test_builtin_names() -> None:
    assert builtin_names() == ["naive", "shifted", "shifted-f64", "torch"]


@pytest.mark.parametrize("name", ["naive", "shifted", "shifted-f64", "torch"])
@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_builtins_correct_on_simple_inputs(name: str, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    cand = load_one(f"builtin:{name}")
    assert cand.name == f"builtin:{name}" and cand.target == f"builtin:{name}"
    assert set(cand.ops) == set(OPS)
    x = round_float64_array(X, fmt)
    exact = exact_ops(x.astype(np.float64))
    for op, opfn in cand.ops.items():
        assert opfn.backend == ("torch" if name == "torch" else "numpy")
        result = call_op(opfn, x, fmt)
        assert result.error is None and not result.input_modified
        assert result.output.dtype == fmt.np_dtype
        # A few ulps of the format (absolute for log_softmax, whose values cross 0).
        np.testing.assert_allclose(result.output.astype(np.float64), exact[op], rtol=4 * fmt.u, atol=8 * fmt.u)


def test_shifted_special_rows() -> None:
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, np.inf, 2.0], [1.0, np.nan, 2.0]], dtype=np.float32)
    cand = load_one("builtin:shifted")
    lse = call_op(cand.ops["logsumexp"], x, F32).output
    assert lse[0] == -np.inf and lse[1] == np.inf and np.isnan(lse[2])
    # softmax and log_softmax are undefined on all three rows: whole NaN rows, as torch gives.
    for op in ("softmax", "log_softmax"):
        assert np.all(np.isnan(call_op(cand.ops[op], x, F32).output))


def test_naive_overflows_where_shifted_does_not() -> None:
    x = (1000.0 + np.arange(3.0)).reshape(1, 3).astype(np.float32)
    naive, shifted = load_one("builtin:naive"), load_one("builtin:shifted")
    assert np.all(np.isnan(call_op(naive.ops["softmax"], x, F32).output))
    assert call_op(naive.ops["logsumexp"], x, F32).output[0] == np.inf
    good = call_op(shifted.ops["softmax"], x, F32).output
    np.testing.assert_allclose(good, exact_ops(x)["softmax"], rtol=4 * F32.u)


def test_shifted_f64_rounds_once() -> None:
    # On this row float64 -> bfloat16 through float32 (ml_dtypes' astype) is one ulp off at p[0].
    x = np.array([[-1.546875, 0.390625, -0.734375, -0.400390625]]).astype(ml_dtypes.bfloat16)
    once = round_float64_array(exact_ops(x)["softmax"], BF16)
    assert once[0, 0] != exact_ops(x)["softmax"].astype(ml_dtypes.bfloat16)[0, 0]
    result = call_op(load_one("builtin:shifted-f64").ops["softmax"], x, BF16)
    assert np.array_equal(result.output.view(np.uint16), once.view(np.uint16))


def test_torch_builtin_is_torch_itself() -> None:
    x = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], dtype=np.float16)
    result = call_op(load_one("builtin:torch").ops["log_softmax"], x, get_format("float16"))
    expected = torch.log_softmax(torch.from_numpy(x), dim=-1).numpy()
    assert result.output_dtype == "torch.float16 on cpu" and np.array_equal(result.output, expected)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="long double is float64 here")
def test_long_double_output_rounded_correctly() -> None:
    # 1 + 2^-24 is the float32 midpoint above 1; the extra 2^-60 is lost in float64,
    # so rounding through float64 would tie to 1.0 instead of 1 + 2^-23.
    above = np.longdouble(1) + np.longdouble(2.0**-24) + np.longdouble(2.0**-60)
    result = call_op(numpy_op(lambda x: np.full(x.shape, above)), X, F32)
    assert np.all(result.output == np.float32(1 + 2.0**-23))
