"""Speed: a candidate's ops timed at LLM-typical shapes, against a copy of the same bytes.

Runs where the candidate's calls run (the isolation worker, or the CLI's process with
``--no-isolation``): :func:`measure_call` builds the arguments of one op x direction x
format x shape once (several independent copies when they fit in the last-level cache,
:func:`softaudit.runner.timing.rotation`), times the candidate's own call on them with
:func:`softaudit.runner.timing.measure`, and times a device copy of the bytes the op must move
(:func:`softaudit.runner.timing.bytes_moved`) the same way. Only the candidate's call is timed:
the arrays are converted and placed on its device beforehand, and nothing is checked or
copied back in between.

Inputs are N(0, 2) logits rounded into the format (as ``torch.randn`` tests would use,
wider), an N(0, 1) upstream gradient, and for cross-entropy uniformly drawn class indices
with the loss's defaults (reduction "mean" where the function takes a ``reduction``).
"""

from __future__ import annotations

import contextlib
import importlib
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from softaudit.candidates import kernels
from softaudit.candidates.arguments import Arguments, call_arguments
from softaudit.candidates.calling import backward_mode
from softaudit.candidates.conversion import block_until_ready, jax_precision, to_torch
from softaudit.candidates.model import Candidate, OpFunction
from softaudit.errors import SoftauditError
from softaudit.formats import FORMATS, Format
from softaudit.ops import LINEAR_CROSS_ENTROPY
from softaudit.runner import timing
from softaudit.runner.linear_speed import LinearSpeedError, measure_linear

DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((4096, 1024), (1024, 32000), (256, 128256), (64, 262144))
"""rows x n timed by default: attention rows (4,096 queries x 1,024 keys), then vocabularies
(Llama 2's 32,000, Llama 3's 128,256, Gemma's 262,144) at batch x sequence sizes of one step."""

_SHAPE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_shape(text: str) -> tuple[int, int]:
    """``"ROWSxN"`` -> (rows, n); ValueError with the cause for anything else."""
    m = _SHAPE.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"shape {text!r} is not ROWSxN with positive integers (e.g. 1024x32000)")
    return int(m.group(1)), int(m.group(2))


class SpeedError(SoftauditError):
    """The call cannot be timed (a reason in one line, shown instead of figures)."""


def bench_arrays(op: str, direction: str, fmt: Format, rows: int, n: int, seed: int = 0,
                 x: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays of one timed call, as values of ``fmt`` (targets int64): ``x`` (given, or drawn),
    and for the backward ``y`` (the forward output) and ``dy``; for cross-entropy ``target``
    (and ``dy`` () for the backward of the mean).

    Timing needs realistic values, not exact ones: everything is drawn and computed in float32
    (float64 for float64) and cast with numpy, which is 10-20x faster than the audit's exact
    rounding at 32M elements and would otherwise take most of a measurement's wall time."""
    work = np.float64 if fmt.np_dtype == np.float64 else np.float32
    rng = np.random.default_rng(np.random.SeedSequence([seed, rows, n, len(op), direction == "backward"]))
    if x is None:
        x = bench_logits(fmt, rows, n, seed)
    out: dict[str, np.ndarray] = {"x": x}
    if op == "cross_entropy":
        out["target"] = rng.integers(0, n, rows).astype(np.int64)
        if direction == "backward":
            out["dy"] = np.ones((), dtype=fmt.np_dtype)
        return out
    if direction == "backward":
        xs = x.astype(work)
        shifted = xs - xs.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64)).astype(work)
        y: np.ndarray
        if op == "softmax":
            y = np.exp(shifted - lse[:, None])
        elif op == "log_softmax":
            y = shifted - lse[:, None]
        else:
            y = lse + xs.max(axis=1)
        out["y"] = y.astype(fmt.np_dtype)
        out["dy"] = rng.standard_normal(y.shape, dtype=work).astype(fmt.np_dtype)
    return out


def bench_logits(fmt: Format, rows: int, n: int, seed: int = 0) -> np.ndarray:
    """N(0, 2) logits of shape (rows, n) as values of ``fmt``, the same for every op."""
    work = np.float64 if fmt.np_dtype == np.float64 else np.float32
    rng = np.random.default_rng(np.random.SeedSequence([seed, rows, n]))
    x = rng.standard_normal((rows, n), dtype=work)
    x *= 2.0
    return x.astype(fmt.np_dtype)


def prepare(cand: Candidate, op: str, direction: str, arrays: dict[str, np.ndarray],
            copies: int) -> tuple[Callable[[int], Any], OpFunction]:
    """``call(i)``: the candidate's own call on copy i of the arguments (i < copies), and the
    function called. Raises SpeedError when the call cannot be made."""
    if direction == "forward":
        opfn = cand.ops.get(op)
        if opfn is None:
            raise SpeedError(f"{op} is not defined")
        return _forward(opfn, arrays, copies), opfn
    mode, reason = backward_mode(cand, op)
    if mode is None:
        raise SpeedError(reason)
    if mode == "function":
        opfn = cand.backward[op]
        return _explicit_backward(opfn, op, arrays, copies), opfn
    opfn = cand.ops[op]
    if mode == "vjp":
        return _vjp(opfn, arrays, copies), opfn
    return _autograd(opfn, arrays, copies), opfn


def _kwargs(opfn: OpFunction, op: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    if op == "cross_entropy" and "reduction" in opfn.keywords:
        kwargs["reduction"] = "none" if opfn.rowwise else "mean"
    return kwargs


def _forward(opfn: OpFunction, arrays: dict[str, np.ndarray], copies: int) -> Callable[[int], Any]:
    rows = arrays["x"].shape[0]
    kwargs = _kwargs(opfn, opfn.op)
    sets = []
    for _ in range(copies):
        args = Arguments(opfn)
        values = [(args.add("x", arrays["x"]), True)]
        if "target" in arrays:
            values.append((args.add("target", arrays["target"]), True))
        sets.append(call_arguments(opfn, values, kwargs, rows))
    return _calling(opfn, sets)


def _calling(opfn: OpFunction, sets: list[list[tuple[tuple[Any, ...], dict[str, Any]]]]) -> Callable[[int], Any]:
    """call(i): the function's call(s) on argument set i (one, or one per row)."""
    fn = opfn.fn
    jax = opfn.backend == "jax"

    def call(i: int) -> None:
        for a, kw in sets[i]:
            out = fn(*a, **kw)
            if jax:
                block_until_ready(out)  # JAX dispatches asynchronously

    return call


def _vjp(opfn: OpFunction, arrays: dict[str, np.ndarray], copies: int) -> Callable[[int], Any]:
    """call(i): jax.vjp of the forward function on copy i and its pullback of dy (a mean-reduced
    loss: dy = 1), waited for."""
    import jax

    op, rows = opfn.op, arrays["x"].shape[0]
    if opfn.rowwise:
        raise SpeedError("the backward pass of a row-by-row JAX function is not timed")
    kwargs = _kwargs(opfn, op)
    sets = []
    for _ in range(copies):
        args = Arguments(opfn)
        values = [(args.add("x", arrays["x"]), True)]
        if "target" in arrays:
            values.append((args.add("target", arrays["target"]), True))
        dy = arrays["dy"] if op != "cross_entropy" else np.ones((), dtype=arrays["x"].dtype)
        sets.append((call_arguments(opfn, values, kwargs, rows)[0], args.add("dy", dy)))
    fn = opfn.fn

    def call(i: int) -> None:
        (x, *rest), kw = sets[i][0]
        out, pullback = jax.vjp(lambda v: fn(v, *rest, **kw), x)
        block_until_ready(pullback(sets[i][1].astype(out.dtype).reshape(out.shape)))

    return call


def _explicit_backward(opfn: OpFunction, op: str, arrays: dict[str, np.ndarray], copies: int) -> Callable[[int], Any]:
    rows = arrays["x"].shape[0]
    kwargs = _kwargs(opfn, op)
    if opfn.rowwise and op == "cross_entropy":
        raise SpeedError("a row-by-row cross_entropy_backward cannot be timed on the mean over rows")
    sets = []
    for _ in range(copies):
        args = Arguments(opfn)
        if op == "cross_entropy":
            values = [(args.add("logits", arrays["x"]), True), (args.add("target", arrays["target"]), True),
                      (args.add("dloss", arrays["dy"]), False)]
        else:
            values = [(args.add("y", arrays["y"]), True), (args.add("dy", arrays["dy"]), True)]
            if op == "logsumexp":
                values.insert(0, (args.add("x", arrays["x"]), True))
        sets.append(call_arguments(opfn, values, kwargs, rows))
    return _calling(opfn, sets)


def _autograd(opfn: OpFunction, arrays: dict[str, np.ndarray], copies: int) -> Callable[[int], Any]:
    """The backward pass alone: the forward runs once per copy while preparing; each timed call
    is torch.autograd.grad(out, x, dy) with the graph retained (x.grad is not accumulated)."""
    import torch

    op = opfn.op
    rows = arrays["x"].shape[0]
    if opfn.rowwise and op == "cross_entropy":
        raise SpeedError("a row-by-row cross_entropy cannot be differentiated through the mean over rows")
    kwargs = _kwargs(opfn, op)
    graphs = []
    with torch.enable_grad():
        for _ in range(copies):
            args = Arguments(opfn)
            leaf = args.add("x", arrays["x"], leaf=True)
            values = [(leaf, True)]
            if "target" in arrays:
                values.append((args.add("target", arrays["target"]), True))
            outs = []
            for a, kw in call_arguments(opfn, values, kwargs, rows):
                out = opfn.fn(*a, **kw)
                if not isinstance(out, torch.Tensor) or out.grad_fn is None:
                    raise SpeedError("the output is not differentiable by autograd (no grad_fn)")
                outs.append(out)
            if op == "cross_entropy":
                upstream = [torch.ones_like(o) for o in outs]
            else:
                dy = arrays["dy"]
                dys = [dy[r] for r in range(rows)] if opfn.rowwise else [dy]
                upstream = [to_torch(np.array(g, copy=True), str(o.device)).to(o.dtype).reshape(o.shape)
                            for g, o in zip(dys, outs)]
            graphs.append((leaf, outs, upstream))

    def call(i: int) -> None:
        leaf, outs, upstream = graphs[i]
        torch.autograd.grad(outs, leaf, upstream, retain_graph=True)

    call.leaves = [g[0] for g in graphs]  # type: ignore[attr-defined]  # for tests: x.grad stays None
    return call


def clock_for(opfn: OpFunction) -> timing.Clock:
    """CUDA events for a function on a CUDA device, perf_counter otherwise."""
    if opfn.backend == "torch" and opfn.device.startswith("cuda"):
        import torch

        return timing.cuda_clock(torch)
    return timing.cpu_clock


def copy_call(nbytes: int, device: str, copies: int) -> tuple[Callable[[int], Any], timing.Clock]:
    """A device-to-device copy of nbytes / 2 bytes (nbytes read and written in all), on copies
    independent buffers, and its clock. On a CPU the copy is torch's where torch is installed: it
    uses every core, as torch's kernels do (numpy's copy uses one, and a multi-threaded op would
    then beat "the limit"); numpy's otherwise."""
    half = max(1, nbytes // 2)
    torch: Any = None
    with contextlib.suppress(ImportError):
        torch = importlib.import_module("torch")
    if device == "cpu" and torch is None:
        pairs = [(np.ones(half, dtype=np.uint8), np.ones(half, dtype=np.uint8)) for _ in range(copies)]  # touched

        def call(i: int) -> None:
            src, dst = pairs[i]
            np.copyto(dst, src)

        return call, timing.cpu_clock

    tensors = [(torch.ones(half, dtype=torch.uint8, device=device), torch.ones(half, dtype=torch.uint8, device=device))
               for _ in range(copies)]  # both written once: no first-touch page faults inside the timing

    def call_t(i: int) -> None:
        src, dst = tensors[i]
        dst.copy_(src)

    return call_t, timing.cuda_clock(torch) if device.startswith("cuda") else timing.cpu_clock


class SpeedMeter:
    """Measures calls in one process, remembering the copy timings (one per device and size)."""

    def __init__(self, cache_bytes: int | None = None) -> None:
        self.cache_bytes = cache_bytes if cache_bytes is not None else timing.last_level_cache_bytes()
        self._copies: dict[tuple[str, int], timing.Timing] = {}
        self._logits: tuple[tuple[str, int, int, int], np.ndarray] | None = None  # the last drawn only

    def logits(self, fmt: Format, rows: int, n: int, seed: int) -> np.ndarray:
        """bench_logits, kept while the format and shape stay the same (the runner times every op
        and direction of a format x shape in a row)."""
        key = (fmt.name, rows, n, seed)
        if self._logits is None or self._logits[0] != key:
            self._logits = None  # free the old array before drawing the next
            self._logits = (key, bench_logits(fmt, rows, n, seed))
        return self._logits[1]

    def copy_timing(self, device: str, nbytes: int) -> timing.Timing:
        """The copy of the same bytes on the same device, measured once per run."""
        key = (device, nbytes)
        if key not in self._copies:
            copies = timing.rotation(nbytes, self.cache_bytes)
            call, clock = copy_call(nbytes, device, copies)
            self._copies[key] = timing.measure(call, clock=clock, copies=copies)
        return self._copies[key]

    def measure(self, cand: Candidate, op: str, direction: str, fmt_name: str, rows: int, n: int,
                seed: int = 0) -> dict:
        """The speed figures of one op x direction x format x shape (a dict for Record-like use:
        JSON-ready); raises SpeedError when it cannot be timed."""
        fmt = FORMATS[fmt_name]
        if op == LINEAR_CROSS_ENTROPY:
            try:
                return measure_linear(cand, direction, fmt, rows, n, seed, clock_for, self.copy_timing)
            except LinearSpeedError as exc:
                raise SpeedError(str(exc)) from None
        started = time.perf_counter()
        x = self.logits(fmt, rows, n, seed)
        drawn = time.perf_counter()
        arrays = bench_arrays(op, direction, fmt, rows, n, seed, x=x)
        computed = time.perf_counter()
        argument_bytes = sum(a.nbytes for a in arrays.values())
        copies = timing.rotation(argument_bytes, self.cache_bytes)
        jax_mode = jax_precision(fmt) if any(f.backend == "jax" for f in cand.ops.values()) \
            else contextlib.nullcontext()
        with warnings.catch_warnings(), jax_mode:
            warnings.simplefilter("ignore")
            try:
                call, opfn = prepare(cand, op, direction, arrays, copies)
                prepared = time.perf_counter()
                compiled_before = kernels.totals()[1]
                t = timing.measure(call, clock=clock_for(opfn), copies=copies)
                timed = time.perf_counter()
                compile_s = kernels.totals()[1] - compiled_before
            except SpeedError:
                raise
            except Exception as exc:
                raise SpeedError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")) from None
        device = opfn.device if opfn.backend == "torch" else "cpu"
        moved = timing.bytes_moved(op, direction, rows, n, np.dtype(fmt.np_dtype).itemsize)
        copy = self.copy_timing(device, moved)
        done = time.perf_counter()
        breakdown = {  # where this measurement's wall time went
            "draw_s": drawn - started,        # the logits (drawn once per format x shape, then kept)
            "reference_s": computed - drawn,  # the backward's y and dy, cross-entropy's targets
            "transfer_s": prepared - computed,  # the arguments converted and placed on the device
            "compile_s": compile_s,           # kernel compilations noted during the timing (softaudit.candidates.kernels)
            "timing_s": timed - prepared,     # warm-up and timed calls, compilations included
            "copy_s": done - timed,           # the copy of the same bytes (measured once per size)
            "total_s": done - started,
        }
        return {
            "shape": [rows, n],
            "device": device,
            "median_s": t.median_s,
            "iqr_s": t.iqr_s,
            "repeats": t.repeats,
            "copies": copies,
            "elements_per_s": rows * n / t.median_s if t.median_s > 0 else None,
            "bytes": moved,
            "gb_per_s": moved / t.median_s / 1e9 if t.median_s > 0 else None,
            "copy_median_s": copy.median_s,
            "copy_gb_per_s": moved / copy.median_s / 1e9 if copy.median_s > 0 else None,
            "pct_copy_bandwidth": 100.0 * copy.median_s / t.median_s if t.median_s > 0 else None,
            "breakdown": breakdown,
        }


def bench(meter: SpeedMeter, cand: Candidate, op: str, direction: str, fmt_name: str, rows: int, n: int,
          seed: int) -> tuple[str, object]:
    """One measurement as the executors answer it: ("speed", figures) or ("speed-skip", reason)."""
    label = op if direction == "forward" else f"{op} backward"
    try:
        return "speed", meter.measure(cand, op, direction, fmt_name, rows, n, seed)
    except SpeedError as exc:
        return "speed-skip", str(exc)
    except MemoryError:
        return "speed-skip", f"{label} at {rows}x{n}: out of memory"
