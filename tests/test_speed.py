"""Timing candidates' calls at given shapes (softaudit.runner.speed), in this process, at small shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from softaudit.candidates.loading import load_target
from softaudit.formats import FORMATS
from softaudit.runner import timing
from softaudit.runner.speed import DEFAULT_SHAPES, SpeedError, SpeedMeter, bench_arrays, parse_shape, prepare

NAIVE_NUMPY = str(Path(__file__).resolve().parents[1] / "examples" / "naive_numpy.py")


def test_shapes_parse_and_bad_ones_say_why():
    assert parse_shape("1024x32000") == (1024, 32000)
    assert parse_shape(" 64 X 262144 ") == (64, 262144)
    for bad in ("1024", "0x5", "ax3", "3x-1", ""):
        with pytest.raises(ValueError, match="ROWSxN"):
            parse_shape(bad)
    assert (4096, 1024) in DEFAULT_SHAPES and (64, 262144) in DEFAULT_SHAPES


def test_bench_arrays_are_values_of_the_format_with_the_backward_pieces():
    fmt = FORMATS["bfloat16"]
    a = bench_arrays("softmax", "backward", fmt, 4, 32)
    assert set(a) == {"x", "y", "dy"}
    assert all(v.dtype == fmt.np_dtype and v.shape == (4, 32) for v in a.values())
    assert np.allclose(a["y"].astype(np.float64).sum(axis=1), 1.0, atol=0.1)
    ce = bench_arrays("cross_entropy", "backward", fmt, 4, 32)
    assert ce["target"].dtype == np.int64 and ((ce["target"] >= 0) & (ce["target"] < 32)).all()
    assert ce["dy"].shape == ()
    lse = bench_arrays("logsumexp", "backward", fmt, 4, 32)
    assert lse["y"].shape == (4,) and lse["dy"].shape == (4,)


@pytest.mark.parametrize("target", ["builtin:shifted", "builtin:torch"])
def test_every_op_and_direction_is_timed_with_its_byte_count_and_the_copy(target: str):
    cand = load_target(target)[0]
    meter = SpeedMeter(cache_bytes=1 << 16)
    for op in ("softmax", "log_softmax", "logsumexp", "cross_entropy"):
        for direction in ("forward", "backward"):
            f = meter.measure(cand, op, direction, "float32", 8, 256)
            assert f["shape"] == [8, 256] and f["device"] == "cpu"
            assert f["median_s"] > 0 and f["iqr_s"] >= 0 and f["repeats"] >= timing.MIN_REPEATS
            assert f["bytes"] == timing.bytes_moved(op, direction, 8, 256, 4)
            assert f["gb_per_s"] == pytest.approx(f["bytes"] / f["median_s"] / 1e9)
            assert f["pct_copy_bandwidth"] == pytest.approx(100 * f["copy_median_s"] / f["median_s"])
            b = f["breakdown"]  # where the measurement's wall time went
            assert set(b) == {"draw_s", "reference_s", "transfer_s", "compile_s", "timing_s", "copy_s", "total_s"}
            assert all(v >= 0 for v in b.values()) and b["compile_s"] == 0  # nothing compiled here
            # The timed calls are inside timing_s: at least half of them (ceil(repeats / 2)) took the
            # median or longer. Not median x repeats: the samples' mean can be below their median (a burst
            # of other work slowing just over half the calls: 0.356 s < 50 x 7.7 ms on a loaded machine).
            assert b["total_s"] >= b["timing_s"] >= f["median_s"] * ((f["repeats"] + 1) // 2)


def test_a_numpy_candidate_without_a_backward_function_is_not_timed_and_says_why():
    cand = load_target(NAIVE_NUMPY)[0]
    with pytest.raises(SpeedError, match="numpy candidate without softmax_backward"):
        SpeedMeter().measure(cand, "softmax", "backward", "float32", 4, 16)


def test_autograd_timing_does_not_accumulate_into_the_input_gradient():
    torch = pytest.importorskip("torch")
    cand = load_target("builtin:torch")[0]
    arrays = bench_arrays("softmax", "backward", FORMATS["float32"], 4, 16)
    call, opfn = prepare(cand, "softmax", "backward", arrays, copies=2)
    for i in range(4):
        call(i % 2)
    assert opfn.backend == "torch"
    assert len(call.leaves) == 2 and all(isinstance(x, torch.Tensor) and x.grad is None for x in call.leaves)


def test_the_audit_times_in_its_worker_and_the_json_carries_every_figure(tmp_path):
    from softaudit.formats import FLOAT32
    from softaudit.options import AuditOptions, CacheOptions
    from softaudit.results.schema import document_of
    from softaudit.runner.loop import run_audit

    options = AuditOptions(ops=["softmax"], formats=[FLOAT32], case_patterns=["uniform-1024"], bench=True,
                           shapes=[(4, 64), (2, 128)], jobs=1, cache=CacheOptions(directory=tmp_path))
    result = run_audit(["builtin:shifted", NAIVE_NUMPY], options)
    ids = [s.id for s in result.speed]
    assert ids == ["builtin:shifted/softmax/forward/float32/4x64", "builtin:shifted/softmax/forward/float32/2x128",
                   "builtin:shifted/softmax/backward/float32/4x64", "builtin:shifted/softmax/backward/float32/2x128",
                   "naive_numpy/softmax/forward/float32/4x64", "naive_numpy/softmax/forward/float32/2x128",
                   "naive_numpy/softmax/backward/float32/4x64", "naive_numpy/softmax/backward/float32/2x128"]
    timed = [s for s in result.speed if s.figures is not None]
    assert len(timed) == 6 and all(s.figures["median_s"] > 0 and s.figures["device"] == "cpu" for s in timed)
    skipped = [s for s in result.speed if s.figures is None]
    assert [s.id.split("/")[0] for s in skipped] == ["naive_numpy", "naive_numpy"]
    assert all("without softmax_backward" in s.skipped for s in skipped)
    back = document_of(result)
    assert [(s.id, s.median_s, s.skipped) for s in back.speed] == [(s.id, s.median_s, s.skipped) for s in result.speed]
    assert back.speed[0].figures["bytes"] == timing.bytes_moved("softmax", "forward", 4, 64, 4)


def test_without_bench_nothing_is_timed(tmp_path):
    from softaudit.formats import FLOAT32
    from softaudit.options import AuditOptions, CacheOptions, WorkerOptions
    from softaudit.runner.loop import run_audit

    result = run_audit(["builtin:shifted"], AuditOptions(ops=["logsumexp"], formats=[FLOAT32],
                                                        case_patterns=["uniform-1024"], jobs=1,
                                                        worker=WorkerOptions(isolated=False),  # a worker start less
                                                        cache=CacheOptions(directory=tmp_path)))
    assert result.speed == []


@pytest.mark.gpu
def test_cuda_events_time_a_device_copy():
    from softaudit.runner.speed import copy_call

    call, clock = copy_call(64 << 20, "cuda", 1)
    t = timing.measure(call, clock=clock)
    assert 0 < t.median_s < 0.1  # 64 MiB moved: well under 100 ms on any CUDA GPU
