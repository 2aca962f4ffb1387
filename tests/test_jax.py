"""JAX candidates: detection (jax arrays in and out), backward passes through jax.vjp, jit
functions called compiled, float64 in JAX's 64-bit mode, and builtin:jax. Skipped without jax."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from softaudit.candidates.calling import CallRequest, backward_mode, call
from softaudit.candidates.loading import load_target
from softaudit.formats import FORMATS
from softaudit.options import AuditOptions
from softaudit.runner.loop import run_audit

jax = pytest.importorskip("jax", reason="jax is not installed (pip install 'softaudit[jax]')")

PLAIN = textwrap.dedent('''
    """A plain JAX candidate: no decorator."""
    import jax
    import jax.numpy as jnp


    def softmax(x):
        e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
        return e / jnp.sum(e, axis=-1, keepdims=True)


    @jax.jit
    def log_softmax(x):
        z = x - jnp.max(x, axis=-1, keepdims=True)
        return z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))


    @jax.jit
    def logsumexp(x, axis=-1):   # axis is not static: a jit function called with axis=-1 would fail
        return jax.nn.logsumexp(x, axis=axis)


    def cross_entropy(logits, target, reduction="mean"):
        lp = jax.nn.log_softmax(logits, axis=-1)
        loss = -jnp.take_along_axis(lp, target[:, None], axis=-1)[:, 0]
        return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())
''')

CASES = ["offset-minus-1e10", "offset-plus-1e3", "mask-fully-masked-rows", "posinf-one", "ce-all-ignored-none",
         "ce-smoothing-0.1-ignore-weights-mean"]


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jax") / "jax_impl.py"
    path.write_text(PLAIN)
    return path


def test_a_plain_jax_file_is_detected_as_jax(plain_file):
    [cand] = load_target(str(plain_file))
    assert {op: f.backend for op, f in cand.ops.items()} == dict.fromkeys(
        ("softmax", "log_softmax", "logsumexp", "cross_entropy"), "jax")
    assert all(f.device == "cpu" and not f.rowwise for f in cand.ops.values())
    assert cand.ops["logsumexp"].dim_kw is None  # the jit function takes no axis=-1: called without it
    assert type(cand.ops["log_softmax"].fn).__name__ == "PjitFunction"  # kept as compiled
    assert cand.ops["cross_entropy"].keywords == frozenset({"reduction"})
    assert all(backward_mode(cand, op) == ("vjp", "") for op in cand.ops)


def test_jax_arrays_in_and_out_float64_in_64_bit_mode(plain_file):
    [cand] = load_target(str(plain_file))
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    for fmt in ("float64", "float32", "bfloat16"):
        xf = x.astype(FORMATS[fmt].np_dtype)
        out = call(cand, CallRequest("softmax", "forward", xf, fmt))
        assert out.error is None and out.output_dtype == f"jax {fmt}" and out.notes == (), (fmt, out)
        assert out.output.dtype == FORMATS[fmt].np_dtype
    assert not jax.config.jax_enable_x64  # the 64-bit mode is on only during float64 calls


def test_the_backward_pass_through_jax_vjp(plain_file):
    [cand] = load_target(str(plain_file))
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    dy = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]])
    p = np.exp(x - np.log(np.exp(x).sum(axis=-1, keepdims=True)))
    got = call(cand, CallRequest("softmax", "backward", x, "float64", dy=dy, y=p))
    assert got.error is None and got.unsupported is None
    np.testing.assert_allclose(got.output, p * (dy - (p * dy).sum(axis=-1, keepdims=True)), rtol=1e-14, atol=1e-16)
    got = call(cand, CallRequest("logsumexp", "backward", x, "float64", dy=dy[:, 0], y=np.zeros(2)))
    np.testing.assert_allclose(got.output, dy[:, :1] * p, rtol=1e-14)


def test_a_function_that_leaves_jax_is_audited_forward_only(tmp_path):
    path = tmp_path / "leaves.py"
    path.write_text("import jax.numpy as jnp\nimport numpy as np\n\n"
                    "def softmax(x):\n    e = np.exp(np.asarray(x) - np.asarray(x).max(-1, keepdims=True))\n"
                    "    return jnp.asarray(e / e.sum(-1, keepdims=True))\n")
    [cand] = load_target(str(path))
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    assert call(cand, CallRequest("softmax", "forward", x, "float32")).error is None
    back = call(cand, CallRequest("softmax", "backward", x, "float32", dy=np.ones_like(x), y=x))
    assert back.unsupported is not None and "jax.vjp" in back.unsupported and "softmax_backward" in back.unsupported


def test_the_decorator_names_the_jax_backend(tmp_path):
    path = tmp_path / "dec.py"
    path.write_text("import numpy as np\nfrom softaudit import candidate\n\n"
                    "@candidate('j', backend='jax')\ndef softmax(x):\n"
                    "    import jax\n    return jax.nn.softmax(x)\n")
    [cand] = load_target(str(path))
    assert cand.ops["softmax"].backend == "jax" and cand.ops["softmax"].notes == ()


def test_a_plain_jax_file_is_audited_forward_and_backward(plain_file):
    result = run_audit([str(plain_file)], AuditOptions(case_patterns=CASES, formats=[FORMATS["float32"]], jobs=1))
    audited = {(r.op, r.direction) for r in result.records if r.verdict != "SKIP"}
    assert audited == {(op, d) for op in ("softmax", "log_softmax", "logsumexp", "cross_entropy")
                       for d in ("forward", "backward")}
    assert [r.id for r in result.records if r.verdict in ("FAIL", "WARN")] == []


def test_builtin_jax(tmp_path):
    [cand] = load_target("builtin:jax")
    assert all(f.backend == "jax" for f in cand.ops.values())
    try:
        import optax  # noqa: F401
    except ImportError:
        assert "cross_entropy" not in cand.ops and "optax is not installed" in cand.description
        return
    assert cand.ops["cross_entropy"].keywords == frozenset({"reduction", "label_smoothing"})
    assert cand.ops["cross_entropy"].probability_targets
    result = run_audit(["builtin:jax"], AuditOptions(
        case_patterns=["offset-minus-1e10", "ce-smoothing-0.1-ignore-weights-mean", "ce-prob-random",
                       "ce-prob-masked-smoothing-0.1"],
        formats=[FORMATS["float64"], FORMATS["bfloat16"]], ops=["cross_entropy"], jobs=1))
    verdicts = {(r.case, r.direction, r.dtype): r.verdict for r in result.records}
    assert [r.error for r in result.records if r.error] == []  # every call made: index and probability targets
    for case in ("ce-prob-random", "ce-prob-masked-smoothing-0.1"):  # probability targets, smoothing
        assert verdicts[(case, "forward", "float64")] == verdicts[(case, "backward", "float64")] == "PASS", case
    # optax computes the loss as logsumexp - x_t: at an offset of -1e10 that cancels even in float64
    # (docs/calibration.md#what-it-finds-in-jax-and-optax)
    assert verdicts[("offset-minus-1e10", "forward", "float64")] == "FAIL"
    assert verdicts[("offset-minus-1e10", "backward", "float64")] == "PASS"
    skipped = [r for r in result.records if r.case == "ce-smoothing-0.1-ignore-weights-mean"]
    assert skipped and all(r.verdict == "SKIP" and "weight" in (r.reasons or [""])[0] for r in skipped)


def test_the_jax_policy_on_jax_nn_softmax_with_where():
    """JAX's convention (softmax 0, log_softmax -inf on a fully masked row) holds with `where`; the
    jax policy accepts it and rejects the NaN that jax.nn.softmax gives without `where`."""
    import jax.numpy as jnp

    def masked_softmax(x):
        return jax.nn.softmax(x, axis=-1, where=x != -jnp.inf)

    def masked_log_softmax(x):
        return jax.nn.log_softmax(x, axis=-1, where=x != -jnp.inf)

    from softaudit import audit

    for impl, verdict in (({"softmax": masked_softmax, "log_softmax": masked_log_softmax}, "PASS"),
                          ({"softmax": lambda x: jax.nn.softmax(x, axis=-1)}, "FAIL")):
        report = audit(impl, cases=["mask-fully-masked-rows"], dtypes=["float32"], directions="forward",
                       undefined_policy="jax", diagnose=False)
        assert {r.verdict for r in report.records} == {verdict}, [r.reasons for r in report.records]
