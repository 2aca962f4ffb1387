"""The fused linear cross-entropy's envelope (softaudit/judging/linear_envelope.py) on small inputs:
the textbook stays within it in every format, with every keyword; the bugs it exists to catch
(a 16-bit weight-gradient accumulator, logits rounded to bfloat16) do not. The measurement is
benchmarks/linear_envelope_calibration.py's, on shapes small enough for the fast suite."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from softaudit.formats import FORMATS
from softaudit.judging.linear_envelope import (
    dot_factor,
    float64_statistics,
    linear_ce_backward_absolute,
    linear_ce_forward_absolute,
    working_format,
)

ROOT = Path(__file__).resolve().parent.parent


def _calibration() -> types.ModuleType:
    name = "linear_envelope_calibration"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CAL = _calibration()
SMALL = [
    CAL.Setup("plain", 24, 64, 2000, reduction="none"),
    CAL.Setup("mean-bias-ignored", 24, 64, 2000, bias=True, ignored=5),
    CAL.Setup("confident-sum", 24, 128, 2000, margin=25.0, reduction="sum"),
    CAL.Setup("all-keywords", 24, 64, 2000, scale=8.0, margin=10.0, smoothing=0.1, z_loss=1e-4, softcap=30.0,
              ignored=3, bias=True, reduction="none"),
    CAL.Setup("offset", 16, 64, 2000, bias=True, offset=40.0, reduction="none"),
]
TEXTBOOK = "textbook"
IMPLS = {TEXTBOOK: CAL.run_explicit(CAL.chunked), "eager": CAL.run_autograd(CAL.eager),
         "planted": CAL.run_explicit(CAL._example())}


@pytest.fixture(scope="module")
def ratios() -> dict[tuple[str, str, str, str], float]:
    """(setup, format, implementation, quantity) -> max stability ratio."""
    out = {}
    for s in SMALL:
        for fname, fmt in FORMATS.items():
            setup = replace(s, tokens=min(s.tokens, 16)) if fname == "float64" else s
            for (impl, q), (ratio, _) in CAL.measure(setup, fmt, IMPLS).items():
                out[(s.name, fname, impl, q)] = ratio
    return out


def test_textbook_stays_within_the_envelope(ratios: dict[tuple[str, str, str, str], float]) -> None:
    over = {k: r for k, r in ratios.items() if k[2] == TEXTBOOK and not r <= 1.0}
    assert not over, over


def test_planted_bfloat16_weight_accumulation_fails_on_the_weight_gradient(
        ratios: dict[tuple[str, str, str, str], float]) -> None:
    for s in SMALL:
        assert ratios[(s.name, "bfloat16", "planted", "d_weight")] > 4
        assert ratios[(s.name, "bfloat16", "planted", "d_hidden")] <= 1.0
        # float32 and float64: the accumulator is the working precision, the textbook.
        assert ratios[(s.name, "float32", "planted", "d_weight")] <= 1.0


def test_logits_rounded_to_bfloat16_fail(ratios: dict[tuple[str, str, str, str], float]) -> None:
    for s in SMALL:
        assert max(ratios[(s.name, "bfloat16", "eager", q)] for q in ("d_hidden", "d_weight")) > 4


def test_ignored_tokens_have_a_zero_envelope_and_their_gradient_none() -> None:
    fmt = FORMATS["float32"]
    inp = CAL.make_inputs(CAL.Setup("x", 12, 16, 300, ignored=4, reduction="none"), fmt)
    z, p, lse = float64_statistics(inp)
    per = linear_ce_forward_absolute(inp, z, p, lse, fmt)
    dh, dw, db = linear_ce_backward_absolute(inp, np.ones(12), z, p, lse, fmt)
    assert np.all(per[-4:] == 0) and np.all(per[:-4] > 0)
    assert np.all(dh[-4:] == 0) and np.all(dh[:-4] > 0) and np.all(dw > 0) and db is None


def test_the_envelope_scales_with_the_working_precision_and_the_dot_product() -> None:
    assert working_format(FORMATS["bfloat16"]).name == "float32"
    assert working_format(FORMATS["float64"]).name == "float64"
    assert dot_factor(4096) == 13 and dot_factor(4097) == 14 and dot_factor(1) == 1
    small = CAL.make_inputs(CAL.Setup("x", 8, 16, 300, reduction="none"), FORMATS["float32"])
    wide = CAL.make_inputs(CAL.Setup("x", 8, 1024, 300, reduction="none"), FORMATS["float32"])
    env = [linear_ce_forward_absolute(i, *float64_statistics(i), FORMATS["float32"]) for i in (small, wide)]
    assert np.median(env[1]) > np.median(env[0])  # the logits' error grows with sum |h w| and log2 D
