"""Tests for the softaudit.candidates package and the built-in candidates."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from softaudit.candidates.calling import CallRequest, backward_mode, call, call_op
from softaudit.candidates.collection import candidates_from_functions, candidates_from_module
from softaudit.candidates.decorator import candidate
from softaudit.candidates.errors import CandidateError, CandidateImportError
from softaudit.candidates.loading import builtin_names, load_target
from softaudit.candidates.model import Candidate, OpFunction
from softaudit.cases.inputs import LossInputs
from softaudit.formats import FORMATS, get_format, round_float64_array
from softaudit.ops import SOFTMAX_FAMILY
from softaudit.runner.isolation import CandidateInfo

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
T = np.array([2, 0], dtype=np.int64)


def loss(target: np.ndarray = T, kind: str = "index", weight: np.ndarray | None = None, smoothing: float = 0.0,
         ignore: int | None = None, reduction: str = "none") -> LossInputs:
    """Cross-entropy inputs besides the logits."""
    return LossInputs(target=np.asarray(target), target_kind=kind, weight=weight, label_smoothing=smoothing,
                      ignore_index=ignore, reduction=reduction, out_of_range=False)


def forward(cand, op: str, x: np.ndarray, fmt=None, **kwargs: object):
    """``call`` in the forward direction (x in ``fmt``, float64 by default)."""
    fmt = fmt or F64
    return call(cand, CallRequest(op, "forward", round_float64_array(np.asarray(x, np.float64), fmt), fmt.name,
                                  **kwargs))


def backward(cand, op: str, x: np.ndarray, dy: np.ndarray, fmt=None, **kwargs: object):
    """``call`` in the backward direction; y is the exact forward output rounded into ``fmt``."""
    fmt = fmt or F64
    x = round_float64_array(np.asarray(x, np.float64), fmt)
    y = None if op == "cross_entropy" else round_float64_array(exact_ops(x)[op], fmt)
    dy = round_float64_array(np.asarray(dy, np.float64), fmt)
    return call(cand, CallRequest(op, "backward", x, fmt.name, dy=dy, y=y, **kwargs))


def exact_gradient(op: str, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The vector-Jacobian product of a forward op (float64), index targets T for cross_entropy."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    p = exact_ops(x)["softmax"]
    if op == "softmax":
        return p * (dy - (p * dy).sum(axis=-1, keepdims=True))
    if op == "log_softmax":
        return dy - p * dy.sum(axis=-1, keepdims=True)
    if op == "logsumexp":
        return dy[:, None] * p
    onehot = np.eye(x.shape[1])[T[: x.shape[0]]]
    return np.broadcast_to(dy, (x.shape[0],))[:, None] * (p - onehot)


def write(tmp_path: Path, source: str, name: str = "impl.py") -> str:
    path = tmp_path / name
    path.write_text(source)
    return str(path)


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
        candidate(backend="mlx")


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
    assert str(info.value) == f"{target} defines none of softmax, log_softmax, logsumexp, cross_entropy, linear_cross_entropy"


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
    assert str(info.value) == ("unknown built-in 'builtin:foo' (known: naive, shifted, shifted-f64, torch, "
                               "triton-softmax, triton-online, triton-ce, scipy, liger, jax, torch-linear-ce, "
                               "torch-chunked-linear-ce, liger-linear-ce)")


def test_candidates_from_functions_detects_them_as_a_file_would() -> None:
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def softmax_backward(y, dy):
        return y * (dy - (y * dy).sum(axis=-1, keepdims=True))

    [cand] = candidates_from_functions({"softmax": softmax, "softmax_backward": softmax_backward},
                                       "python:mine", "mine")
    assert (cand.name, cand.target, list(cand.ops), list(cand.backward)) == ("mine", "python:mine",
                                                                             ["softmax"], ["softmax"])
    assert cand.ops["softmax"].backend == "numpy" and cand.description == ""
    np.testing.assert_allclose(call_op(cand.ops["softmax"], X, F32).output, exact_ops(X)["softmax"], rtol=1e-5)
    with pytest.raises(CandidateError, match="^python:mine defines softmax_backward but not softmax$"):
        candidates_from_functions({"softmax_backward": softmax_backward}, "python:mine", "mine")


def test_candidates_from_functions_refuses_mixed_or_mislabelled_decorations() -> None:
    marked = candidate(op="log_softmax")(lambda x: x)
    with pytest.raises(CandidateError, match="^softmax: mixed with @candidate-decorated functions"):
        candidates_from_functions({"softmax": lambda x: x, "log_softmax": marked}, "python:m", "m")
    with pytest.raises(CandidateError, match=r"^softmax: the function is decorated with @candidate\(op='log_softmax'\)$"):
        candidates_from_functions({"softmax": marked}, "python:m", "m")


def test_candidates_from_module_reads_its_namespace() -> None:
    import types

    module = types.ModuleType("mine", "A module of ops.\n\nMore.")
    module.np = np
    module.logsumexp = lambda x: np.log(np.exp(x).sum(axis=-1))
    [cand] = candidates_from_module(module, "python:mine", "mine")
    assert list(cand.ops) == ["logsumexp"] and cand.description == "A module of ops."


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
    assert builtin_names() == ["naive", "shifted", "shifted-f64", "torch", "triton-softmax", "triton-online",
                               "triton-ce", "scipy", "liger", "jax", "torch-linear-ce", "torch-chunked-linear-ce",
                               "liger-linear-ce"]


@pytest.mark.parametrize("name", ["naive", "shifted", "shifted-f64", "torch"])
@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_builtins_correct_on_simple_inputs(name: str, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    cand = load_one(f"builtin:{name}")
    assert cand.name == f"builtin:{name}" and cand.target == f"builtin:{name}"
    assert set(cand.ops) == set(SOFTMAX_FAMILY)
    x = round_float64_array(X, fmt)
    exact = exact_ops(x.astype(np.float64))
    exact["cross_entropy"] = -exact["log_softmax"][[0, 1], T]
    for op, opfn in cand.ops.items():
        assert opfn.backend == ("torch" if name == "torch" else "numpy")
        result = forward(cand, op, x, fmt, loss=loss() if op == "cross_entropy" else None)
        assert result.error is None and not result.input_modified
        assert result.output.dtype == fmt.np_dtype
        # A few ulps of the format (absolute for log_softmax, whose values cross 0).
        np.testing.assert_allclose(result.output.astype(np.float64), exact[op], rtol=4 * fmt.u, atol=8 * fmt.u)


@pytest.mark.parametrize("name", ["naive", "shifted", "shifted-f64", "torch"])
@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_builtin_backward_passes_correct_on_simple_inputs(name: str, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    cand = load_one(f"builtin:{name}")
    x = round_float64_array(X, fmt)
    dys = {"softmax": [[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]], "logsumexp": [0.75, -1.5], "cross_entropy": [0.75, -1.5]}
    dys["log_softmax"] = dys["softmax"]
    for op in SOFTMAX_FAMILY:
        assert backward_mode(cand, op) == ("autograd" if name == "torch" else "function", "")
        dy = round_float64_array(np.array(dys[op]), fmt)
        result = backward(cand, op, x, dy, fmt, loss=loss() if op == "cross_entropy" else None)
        assert result.error is None and result.unsupported is None and not result.input_modified, (op, result)
        assert result.output.dtype == fmt.np_dtype and result.output.shape == (2, 3)
        # y is rounded into the format: a few ulps of the row's scale.
        np.testing.assert_allclose(result.output.astype(np.float64), exact_gradient(op, x, dy),
                                   rtol=8 * fmt.u, atol=8 * fmt.u)


CE_OPTIONS = list(itertools.product(["index", "probability"], [0.0, 0.1], [False, True], [False, True],
                                    ["none", "mean", "sum"]))


@pytest.mark.parametrize("name", ["shifted", "shifted-f64", "torch"])
def test_builtin_cross_entropy_matches_torch_float64_for_every_option(name: str) -> None:
    """Loss and gradient against torch's F.cross_entropy + autograd in float64, every option combination."""
    import torch.nn.functional as F

    cand = load_one(f"builtin:{name}")
    rng = np.random.default_rng(7)
    rows, n = 6, 5
    for kind, eps, ignored, weighted, reduction in CE_OPTIONS:
        x = rng.normal(size=(rows, n)) * 3
        if kind == "index":
            target = rng.choice([0, 1, 2, 4], rows)
            ignore = 3 if ignored else None
            if ignored:
                target[[1, 4]] = 3  # rows 1 and 4 ignored
        else:
            if ignored:
                continue  # torch refuses ignore_index with probability targets
            target, ignore = rng.random((rows, n)), None
            target[0, 2] = 0.0
            target /= target.sum(axis=1, keepdims=True)
        weight = rng.random(n) + 0.5 if weighted else None
        inputs = loss(target, kind, weight, eps, ignore, reduction)
        label = (name, kind, eps, ignored, weighted, reduction)

        xt = torch.tensor(x, requires_grad=True)
        kw = {"weight": None if weight is None else torch.tensor(weight), "label_smoothing": eps,
              "reduction": reduction, "ignore_index": -100 if ignore is None else ignore}
        expected = F.cross_entropy(xt, torch.tensor(target), **kw)
        dy = rng.normal(size=tuple(expected.shape))
        expected.backward(torch.tensor(dy))

        got = forward(cand, "cross_entropy", x, loss=inputs)
        assert got.error is None and got.output.shape == tuple(expected.shape), label
        np.testing.assert_allclose(got.output, expected.detach().numpy(), rtol=1e-13, atol=0, err_msg=str(label))
        grad = backward(cand, "cross_entropy", x, dy, loss=inputs)
        assert grad.error is None and grad.unsupported is None, (label, grad)
        scale = np.abs(xt.grad.numpy()).max()
        np.testing.assert_allclose(grad.output, xt.grad.numpy(), rtol=0, atol=1e-14 * scale, err_msg=str(label))
        if kind == "index" and ignored:
            assert np.all(grad.output[[1, 4]] == 0)


def test_shifted_cross_entropy_edge_semantics() -> None:
    cand = load_one("builtin:shifted-f64")
    # A zero probability against a -inf logit contributes 0 (q log p -> 0), not NaN.
    x = np.array([[0.0, -np.inf, 1.0]])
    q = np.array([[0.5, 0.0, 0.5]])
    out = forward(cand, "cross_entropy", x, loss=loss(q, "probability")).output
    assert np.isfinite(out[0]) and out[0] == pytest.approx(0.5 * (np.log1p(np.e)) + 0.5 * (np.log1p(np.e) - 1))
    # Every row ignored: the mean is 0/0 = NaN, as in torch, without a warning note.
    res = forward(cand, "cross_entropy", X, loss=loss([5, 5], ignore=5, reduction="mean"))
    assert np.isnan(res.output) and res.output.shape == () and res.notes == ()
    # An out-of-range target raises IndexError naming the row and the target.
    res = forward(cand, "cross_entropy", X, loss=loss([0, 7]))
    assert res.raised and res.error == "raised IndexError: row 1: target 7 is out of bounds for 3 classes"


def test_shifted_f64_rounds_cross_entropy_once() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 7)).astype(ml_dtypes.bfloat16)
    t = rng.integers(0, 7, 64)
    exact = -exact_ops(x.astype(np.float64))["log_softmax"][np.arange(64), t]
    res = forward(load_one("builtin:shifted-f64"), "cross_entropy", x, BF16, loss=loss(t))
    assert np.array_equal(res.output.view(np.uint16), round_float64_array(exact, BF16).view(np.uint16))


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
    # On this row float64 -> bfloat16 through float32 is one ulp off at p[0] (ml_dtypes before 0.7
    # rounded that way in astype; 0.7.0 rounds float64 -> bfloat16 directly).
    x = np.array([[-1.546875, 0.390625, -0.734375, -0.400390625]]).astype(ml_dtypes.bfloat16)
    once = round_float64_array(exact_ops(x)["softmax"], BF16)
    assert once[0, 0] != exact_ops(x)["softmax"].astype(np.float32).astype(ml_dtypes.bfloat16)[0, 0]
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


# --------------------------------------------------------------------------
# Cross-entropy: keywords, probability targets, output shapes


def test_loss_keywords_detected_from_the_signature(tmp_path: Path) -> None:
    body = "    return -torch.log_softmax(logits, -1)[torch.arange(len(target)), target]\n"
    for params, expected in [
        ("logits, target", set()),
        ("logits, target, weight=None, *, reduction='none', scale=1.0", {"weight", "reduction"}),
        ("logits, target, **kwargs", {"label_smoothing", "ignore_index", "weight", "reduction"}),
    ]:
        path = write(tmp_path, f"import torch\ndef cross_entropy({params}):\n{body}", f"k{len(expected)}.py")
        opfn = load_one(path).ops["cross_entropy"]
        assert (opfn.backend, opfn.keywords) == ("torch", frozenset(expected))


def test_only_accepted_keywords_are_passed() -> None:
    cand = load_one(FIXTURES / "loss_np.py")
    calls = cand.ops["cross_entropy"].fn.__globals__["CALLS"]
    w = np.array([1.0, 2.0, 0.5])
    res = forward(cand, "cross_entropy", X, F32, loss=loss(weight=w, smoothing=0.1, ignore=-5, reduction="sum"))
    # label_smoothing and ignore_index are not taken: not passed (the runner skips cases that need them).
    assert calls["cross_entropy"] == (
        (("ndarray", (2, 3), "float32"), ("ndarray", (2,), "int64")), {"weight": True, "reduction": "sum"})
    exact = -(w[T] * exact_ops(X)["log_softmax"][[0, 1], T]).sum()
    assert res.error is None and res.output.shape == () and res.output == pytest.approx(exact, rel=1e-6)


def test_cross_entropy_output_shapes() -> None:
    def ce(value: object, kw: bool) -> OpFunction:
        fn = (lambda logits, target, reduction="none": value) if kw else (lambda logits, target: value)
        return OpFunction("cross_entropy", fn, "numpy", "cpu", False, None, (),
                          frozenset({"reduction"}) if kw else frozenset())

    def run(opfn: OpFunction, reduction: str = "none"):
        cand = Candidate("c", "c", {"cross_entropy": opfn})
        return forward(cand, "cross_entropy", X, loss=loss(reduction=reduction))

    rows, scalar, column = np.zeros(2), np.float64(1.5), np.zeros((2, 1))
    # Without a reduction keyword: per-row (rows,) or (rows, 1), or a scalar (judged as the mean).
    assert run(ce(rows, False)).output.shape == (2,)
    assert run(ce(column, False)).output.shape == (2,)
    assert run(ce(scalar, False)).output.shape == ()
    # With one, exactly what was asked for: (rows,) for "none", () or (1,) for "mean"/"sum".
    assert run(ce(scalar, True), "none").error == "returned shape () but (2,) was expected"
    assert run(ce(np.zeros(1), True), "mean").output.shape == ()
    bad = run(ce(rows, True), "sum")
    assert bad.error == "returned shape (2,) but () was expected" and not bad.raised
    assert run(ce(np.zeros(3), False)).error == "returned shape (3,) but (2,) or () was expected"


def test_probability_target_probe() -> None:
    naive = load_one("builtin:naive").ops["cross_entropy"]
    assert not naive.probability_targets
    assert naive.notes[0].startswith("accepts class-index targets only (the probability-target probe raised IndexError")
    torch_ce = load_one("builtin:torch").ops["cross_entropy"]
    assert torch_ce.probability_targets and torch_ce.notes == ()
    # Probability targets arrive in the input's format, as torch tensors of its dtype.
    q = np.array([[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    res = forward(load_one("builtin:torch"), "cross_entropy", X, BF16, loss=loss(q, "probability"))
    xb = torch.from_numpy(round_float64_array(X, BF16).view(np.uint16)).view(torch.bfloat16)
    qb = torch.from_numpy(round_float64_array(q, BF16).view(np.uint16)).view(torch.bfloat16)
    expected = torch.nn.functional.cross_entropy(xb, qb, reduction="none").float().numpy()
    assert res.error is None and np.array_equal(res.output.astype(np.float32), expected)


def test_keywords_found_by_trial_when_the_signature_is_hidden(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "import numpy as np\n"
        "def cross_entropy(logits, target, **kw):\n"
        "    if set(kw) - {'weight', 'reduction'}:\n"
        "        raise TypeError('unexpected keyword')\n"
        "    z = logits - logits.max(-1, keepdims=True)\n"
        "    l = z - np.log(np.exp(z).sum(-1, keepdims=True))\n"
        "    w = kw.get('weight')\n"
        "    w = np.ones(logits.shape[1], logits.dtype) if w is None else w\n"
        "    loss = -w[target] * l[np.arange(len(target)), target]\n"
        "    return loss if kw.get('reduction', 'mean') == 'none' else loss.sum() / w[target].sum()\n"
        "cross_entropy.__signature__ = 'hidden'  # inspect.signature raises TypeError\n"
    ))
    opfn = load_one(path).ops["cross_entropy"]
    assert opfn.keywords == frozenset({"weight", "reduction"})
    assert "takes weight, reduction (found by trial: its signature cannot be inspected)" in opfn.notes


@pytest.mark.parametrize("source, message", [
    ("def cross_entropy(logits):\n    return logits\n",
     "cross_entropy(logits) takes 1 positional parameter(s), but the contract passes 2: logits, target"),
    ("def cross_entropy(logits, target, *, reduction):\n    return logits\n",
     "keyword 'reduction' needs a default"),
    ("def cross_entropy(logits, target, smoothing):\n    return logits\n",
     "unexpected required parameter 'smoothing' (the contract passes only logits, target, the loss keywords"),
    ("def softmax(x):\n    return x\ndef softmax_backward(y, dy, z):\n    return y\n",
     "softmax_backward(y, dy, z): unexpected required parameter 'z' (the contract passes only y, dy, and -1"),
])
def test_loss_and_backward_signatures_checked(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(CandidateError) as info:
        load_target(write(tmp_path, source))
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------
# Backward passes


def test_backward_functions_detected_and_called_by_convention() -> None:
    cand = load_one(FIXTURES / "loss_np.py")
    assert list(cand.backward) == ["log_softmax", "logsumexp", "cross_entropy"]
    assert {op: f.op for op, f in cand.backward.items()} == {
        "log_softmax": "log_softmax_backward", "logsumexp": "logsumexp_backward",
        "cross_entropy": "cross_entropy_backward"}
    assert cand.backward["cross_entropy"].keywords == frozenset({"reduction"})
    calls = cand.ops["log_softmax"].fn.__globals__["CALLS"]
    f32 = ("ndarray", (2, 3), "float32")
    dy2 = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]])
    for op, dy, seen in [
        ("log_softmax", dy2, (f32, f32)),
        ("logsumexp", np.array([0.75, -1.5]), (f32, ("ndarray", (2,), "float32"), ("ndarray", (2,), "float32"))),
    ]:
        res = backward(cand, op, X, dy, F32)
        assert calls[f"{op}_backward"] == seen
        np.testing.assert_allclose(res.output, exact_gradient(op, X, dy), rtol=1e-5, atol=1e-6)
    # cross_entropy_backward(logits, target, dloss, reduction=...): a 0-d dloss for a reduced loss.
    res = backward(cand, "cross_entropy", X, np.array(2.0), F32, loss=loss(reduction="sum"))
    assert calls["cross_entropy_backward"] == ((f32, ("ndarray", (2,), "int64"), ("ndarray", (), "float32")), "sum")
    np.testing.assert_allclose(res.output, exact_gradient("cross_entropy", X, np.array(2.0)), rtol=1e-5, atol=1e-6)


def test_numpy_forward_without_backward_function_is_not_audited_backward() -> None:
    cand = load_one(FIXTURES / "loss_np.py")
    assert backward_mode(cand, "logsumexp") == ("function", "")
    cand = load_one(FIXTURES / "np_plain.py")
    reason = "numpy candidate without softmax_backward(y, dy): audited forward only"
    assert backward_mode(cand, "softmax") == (None, reason)
    res = backward(cand, "softmax", X, np.ones((2, 3)))
    assert (res.unsupported, res.output, res.error) == (reason, None, None)


def test_backward_without_its_forward_is_a_load_error(tmp_path: Path) -> None:
    path = write(tmp_path, "def softmax_backward(y, dy):\n    return y\n")
    with pytest.raises(CandidateError) as info:
        load_target(path)
    assert str(info.value) == f"{path} defines softmax_backward but not softmax"


def test_decorator_accepts_backward_function_names(tmp_path: Path) -> None:
    def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return y

    assert candidate("a")(softmax_backward) is softmax_backward
    assert candidate(op="logsumexp_backward") is not None
    with pytest.raises(ValueError, match="op must be one of .*cross_entropy_backward"):
        candidate(op="softmax_grad")
    path = write(tmp_path, (
        "import numpy as np\nfrom softaudit import candidate\n"
        "@candidate('mine', op='softmax')\ndef sm(x):\n"
        "    e = np.exp(x - x.max(-1, keepdims=True))\n    return e / e.sum(-1, keepdims=True)\n"
        "@candidate('mine', op='softmax_backward')\ndef grad(y, dy):\n"
        "    return y * (dy - (y * dy).sum(-1, keepdims=True))\n"
    ))
    cand = load_one(path)
    assert cand.name == "mine" and cand.backward["softmax"].fn.__name__ == "grad"
    res = backward(cand, "softmax", X, np.ones((2, 3)) * [1.0, 2.0, 3.0])
    np.testing.assert_allclose(res.output, exact_gradient("softmax", X, np.ones((2, 3)) * [1.0, 2.0, 3.0]),
                               rtol=1e-12, atol=1e-15)


def test_autograd_backward_of_a_torch_candidate() -> None:
    cand = load_one(FIXTURES / "torch_plain.py")
    assert backward_mode(cand, "softmax") == ("autograd", "")
    dy = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]])
    for op in ("softmax", "log_softmax"):
        res = backward(cand, op, X, dy)
        assert res.error is None and res.output_dtype == "torch.float64 on cpu"
        np.testing.assert_allclose(res.output, exact_gradient(op, X, dy), rtol=1e-13, atol=1e-15)
    # cross_entropy with keywords; a reduced loss gets a 0-d dy.
    torch_cand = load_one("builtin:torch")
    res = backward(torch_cand, "cross_entropy", X, np.array(3.0), loss=loss(reduction="sum"))
    np.testing.assert_allclose(res.output, exact_gradient("cross_entropy", X, np.array(3.0)), rtol=1e-13)


def test_autograd_of_a_one_d_candidate_goes_row_by_row() -> None:
    opfn = OpFunction("softmax", lambda v: torch.softmax(v, 0), "torch", "cpu", True, None)
    dy = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]])
    res = backward(Candidate("c", "c", {"softmax": opfn}), "softmax", X, dy)
    np.testing.assert_allclose(res.output, exact_gradient("softmax", X, dy), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("body, reason", [
    ("torch.softmax(x.detach(), -1)", "output is not differentiable by autograd (no grad_fn)"),
    ("torch.from_numpy(np.exp(x.detach().numpy()))", "output is not differentiable by autograd (no grad_fn)"),
    ("torch.softmax(x.detach().clone().requires_grad_(True), -1)", "the gradient did not reach the input"),
])
def test_non_differentiable_torch_output_is_unsupported(tmp_path: Path, body: str, reason: str) -> None:
    path = write(tmp_path, f"import numpy as np\nimport torch\ndef softmax(x):\n    return {body}\n")
    res = backward(load_one(path), "softmax", X, np.ones((2, 3)))
    assert res.unsupported.startswith(reason) and res.error is None and not res.raised
    assert res.unsupported.endswith("define softmax_backward(y, dy) to audit the backward pass")


def test_raised_is_set_only_for_exceptions() -> None:
    def raises(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        raise RuntimeError("no grad")

    ops = {"softmax": numpy_op(lambda x: x)}
    for fn, raised, error in [(raises, True, "raised RuntimeError: no grad"),
                              (lambda y, dy: y[0], False, "returned shape (3,) but (2, 3) was expected")]:
        cand = Candidate("c", "c", ops, backward={"softmax": numpy_op(fn, op="softmax_backward")})
        res = backward(cand, "softmax", X, np.ones((2, 3)))
        assert (res.raised, res.error) == (raised, error)


def test_changes_to_target_and_dy_are_detected(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "import numpy as np\n"
        "def cross_entropy(logits, target):\n"
        "    target[0] = 1\n"
        "    return -logits[np.arange(len(target)), target]\n"
        "def cross_entropy_backward(logits, target, dloss):\n"
        "    dloss *= 2\n"
        "    return np.zeros_like(logits)\n"
        "def softmax(x):\n    return x\n"
        "def softmax_backward(y, dy):\n    dy[0, 0] = np.nan\n    return y\n"
    ))
    cand = load_one(path)
    res = forward(cand, "cross_entropy", X, loss=loss())
    assert res.input_modified and "changed its target argument in place" in res.notes
    res = backward(cand, "cross_entropy", X, np.ones(2), loss=loss())
    assert res.input_modified and "changed its dloss argument in place" in res.notes
    res = backward(cand, "softmax", X, np.ones((2, 3)))
    assert res.input_modified and "changed its dy argument in place" in res.notes
    # An honest candidate is not flagged.
    res = backward(load_one(FIXTURES / "loss_np.py"), "logsumexp", X, np.ones(2))
    assert not res.input_modified and res.notes == ()


def test_torch_autograd_leaf_changed_in_place_is_detected() -> None:
    def sneaky(x: torch.Tensor) -> torch.Tensor:
        x.data.sub_(1.0)  # bypasses autograd's check on leaves
        return torch.softmax(x, -1)

    cand = Candidate("c", "c", {"softmax": numpy_op(sneaky, backend="torch")})
    res = backward(cand, "softmax", X, np.ones((2, 3)))
    assert res.input_modified and res.error is None


def test_one_d_cross_entropy_and_backward_go_row_by_row(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "import numpy as np\n"
        "def _lsm(v):\n"
        "    z = v - v.max()\n"
        "    return z - np.log(np.exp(z).sum())\n"
        "def cross_entropy(v, t, reduction='mean'):\n"
        "    assert v.ndim == 1, 'expected a vector'\n"
        "    return -_lsm(v)[t]\n"
        "def cross_entropy_backward(v, t, g, reduction='mean'):\n"
        "    assert v.ndim == 1, 'expected a vector'\n"
        "    p = np.exp(_lsm(v))\n"
        "    p[t] -= 1\n"
        "    return g * p\n"
    ))
    cand = load_one(path)
    for opfn in (cand.ops["cross_entropy"], cand.backward["cross_entropy"]):
        assert opfn.rowwise and opfn.keywords == frozenset({"reduction"})
    # Row by row, reduction is always "none": the audit cannot ask it for a mean or a sum.
    assert CandidateInfo.of(cand).keywords == {"cross_entropy": (), "cross_entropy_backward": ()}
    res = forward(cand, "cross_entropy", X, loss=loss(reduction="mean"))
    np.testing.assert_allclose(res.output, -exact_ops(X)["log_softmax"][[0, 1], T], rtol=1e-13)
    dy = np.array([1.0, 2.0])
    res = backward(cand, "cross_entropy", X, dy, loss=loss())
    np.testing.assert_allclose(res.output, exact_gradient("cross_entropy", X, dy), rtol=1e-13, atol=1e-16)
    res = backward(cand, "cross_entropy", X, np.array(1.0), loss=loss(reduction="mean"))
    assert res.unsupported == "a row-by-row cross_entropy cannot be differentiated through the mean over rows"
