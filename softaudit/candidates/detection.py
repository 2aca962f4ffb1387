"""Detecting how each function of a candidate is called, without boilerplate in the user's file.

For every function: the backend (numpy arrays or torch tensors) and device, whether a
``dim``/``axis`` keyword is passed, whether it handles 2-D input or must be called row by row
and, for cross-entropy, which loss keywords it accepts and whether it takes probability targets.
The static guess (or the decorator) is confirmed by probe calls (softaudit.candidates.probes);
see docs/candidates.md for the rules.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from softaudit.candidates.calling import CallResult, call_function
from softaudit.candidates.decorator import Mark
from softaudit.candidates.errors import CandidateError, one_line
from softaudit.candidates.model import OpFunction
from softaudit.candidates.probes import TRIAL_VALUES, probe_quality, probe_request
from softaudit.ops import LINEAR_CROSS_ENTROPY, LINEAR_KEYWORDS, LOSS_KEYWORDS, backward_name

POSITIONAL = {
    "softmax": ("x",),
    "log_softmax": ("x",),
    "logsumexp": ("x",),
    "cross_entropy": ("logits", "target"),
    "softmax_backward": ("y", "dy"),
    "log_softmax_backward": ("y", "dy"),
    "logsumexp_backward": ("x", "y", "dy"),
    "cross_entropy_backward": ("logits", "target", "dloss"),
    "linear_cross_entropy": ("hidden", "weight", "target"),
    "linear_cross_entropy_backward": ("hidden", "weight", "target", "bias", "dy"),
}
"""The positional arguments each function receives, in order (docs/candidates.md)."""

_LOSS_FUNCTIONS = frozenset({"cross_entropy", "cross_entropy_backward"})
"""Functions that receive the loss keywords they accept."""

_LINEAR_FUNCTIONS = frozenset({LINEAR_CROSS_ENTROPY, backward_name(LINEAR_CROSS_ENTROPY)})
"""linear_cross_entropy's functions: called whole (never row by row, no dim), with the keywords they accept."""


def _keyword_names(fname: str) -> tuple[str, ...]:
    """The keywords ``fname`` may accept: the loss keywords; for the linear forward also ``bias``."""
    if fname == LINEAR_CROSS_ENTROPY:
        return (*LINEAR_KEYWORDS, "bias")
    if fname in _LINEAR_FUNCTIONS:
        return LINEAR_KEYWORDS
    return LOSS_KEYWORDS if fname in _LOSS_FUNCTIONS else ()

_TORCH_ROOTS = frozenset({"torch", "triton"})
_NUMPY_ROOTS = frozenset({"numpy", "scipy", "ml_dtypes"})
_JAX_ROOTS = frozenset({"jax", "jaxlib", "optax", "flax"})
_ROOTS = _TORCH_ROOTS | _NUMPY_ROOTS | _JAX_ROOTS


def torch_available() -> bool:
    """Whether torch can be imported (without importing it when it is not needed)."""
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    if not torch_available():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# --------------------------------------------------------------------------
# Static guesses


def _roots_of(obj: object) -> set[str]:
    """Top-level package names ``obj`` comes from: the module itself, the
    object's ``__module__``, and its type's module (a triton JITFunction or
    a torch.nn.Softmax instance is recognised by its type)."""
    names: list[object] = []
    if isinstance(obj, types.ModuleType):
        names.append(obj.__name__)
    else:
        try:
            names.append(getattr(obj, "__module__", None))
        except Exception:
            pass
        names.append(type(obj).__module__)
    return {n.split(".")[0] for n in names if isinstance(n, str)}


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names a code object and its nested functions use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _library_roots(obj: object, seen: set[int] | None = None, depth: int = 0) -> set[str]:
    """Array libraries (numpy/torch family) that ``obj`` uses, following the
    globals, closures and wrapped functions of plain Python callables through
    a few levels of helpers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return set()
    seen.add(id(obj))
    roots = _roots_of(obj) & _ROOTS
    if roots:
        return roots
    found: set[str] = set()
    inner: list[object] = []
    if isinstance(obj, functools.partial):
        inner += [obj.func, *obj.args, *obj.keywords.values()]
    try:
        wrapped = getattr(obj, "__wrapped__", None) if callable(obj) else None
    except Exception:
        wrapped = None
    if wrapped is not None:
        inner.append(wrapped)
    fn: object = obj
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    elif not isinstance(fn, (types.FunctionType, type)) and callable(fn):
        fn = type(fn).__call__  # a callable object: look at its class's __call__
    if isinstance(fn, types.FunctionType):
        namespace = fn.__globals__
        inner += [namespace[n] for n in set(_code_names(fn.__code__)) if n in namespace]
        for cell in fn.__closure__ or ():
            try:
                inner.append(cell.cell_contents)
            except ValueError:  # empty cell
                pass
    for item in inner:
        found |= _library_roots(item, seen, depth + 1)
    return found


def namespace_roots(namespace: Mapping[str, object]) -> set[str]:
    """Array libraries a namespace (a module's) holds (imported modules or objects)."""
    roots: set[str] = set()
    for value in list(namespace.values()):
        roots |= _roots_of(value)
    return roots & _ROOTS


def _guess_backend(fn: object, module_roots: set[str]) -> tuple[str, bool]:
    """(backend, uses_triton) from what the function refers to.

    Torch if it uses torch (or triton) and not numpy; numpy if the reverse;
    torch if both (numpy constants in torch code are common, and the probe
    corrects the rarer numpy code that calls torch.from_numpy); JAX if it uses
    jax (or optax, flax) and not torch, numpy or not; otherwise whatever the module
    imports, torch (or JAX) only if it imports torch (jax) and not numpy.
    """
    roots = _library_roots(fn)
    uses_triton = "triton" in roots or ("triton" in module_roots and not roots)
    if roots & _TORCH_ROOTS:
        return "torch", uses_triton
    if roots & _JAX_ROOTS:
        return "jax", False
    if roots & _NUMPY_ROOTS:
        return "numpy", False
    if module_roots & _TORCH_ROOTS and not module_roots & (_NUMPY_ROOTS | _JAX_ROOTS):
        return "torch", uses_triton
    if module_roots & _JAX_ROOTS and not module_roots & (_NUMPY_ROOTS | _TORCH_ROOTS):
        return "jax", False
    return "numpy", False


def jax_available() -> bool:
    """Whether jax can be imported (without importing it when it is not needed)."""
    return "jax" in sys.modules or importlib.util.find_spec("jax") is not None


def _dim_keyword(fn: Callable[..., Any]) -> tuple[str | None, bool]:
    """(keyword, known): the ``dim``/``axis`` parameter to pass -1 through, and
    whether the signature could be inspected at all."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None, False
    for kw in ("dim", "axis"):
        param = params.get(kw)
        if param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            return kw, True
    return None, True


def _loss_keywords(fn: Callable[..., Any], fname: str) -> tuple[frozenset[str], bool]:
    """(keywords, known): the LOSS_KEYWORDS a cross_entropy(_backward) function accepts by name
    (all of them with ``**kwargs``; none for other functions), and whether its signature could
    be inspected at all."""
    names = _keyword_names(fname)
    if not names:
        return frozenset(), True
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return frozenset(), False
    kinds = inspect.Parameter
    if any(p.kind is kinds.VAR_KEYWORD for p in params):
        return frozenset(names), True
    slots = {p.name for p in _positional_slots(params, len(POSITIONAL[fname]))}
    return frozenset(p.name for p in params if p.name in names and p.name not in slots
                     and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)), True


def _positional_slots(params: list[inspect.Parameter], count: int) -> list[inspect.Parameter]:
    """The parameters that receive the first ``count`` positional arguments (without *args)."""
    kinds = inspect.Parameter
    return [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)][:count]


# --------------------------------------------------------------------------
# Resolving: the static guess confirmed by probe calls


def _check_device(device: str, target: str) -> None:
    """Raise CandidateError when an explicitly requested torch device is unusable."""
    import torch

    try:
        torch.empty(1, device=device)
    except Exception as exc:
        raise CandidateError(f"{target}: device {device!r} is not usable here: {one_line(str(exc))}") from None


def _check_signature(fn: Callable[..., Any], fname: str, target: str) -> None:
    """The contract passes the positional arguments of POSITIONAL, -1 to a
    ``dim``/``axis`` parameter and, to a loss function, the loss keywords it
    accepts (when a case needs them): any other required parameter makes the
    function uncallable, said in one line."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # C functions and the like: the probe call tells
    names = POSITIONAL[fname]
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    slots = _positional_slots(params, len(names))
    if len(slots) < len(names) and not any(p.kind is kinds.VAR_POSITIONAL for p in params):
        if len(names) == 1:
            raise CandidateError(f"{target}: {fname}{sig} takes no positional parameter for the input x")
        raise CandidateError(f"{target}: {fname}{sig} takes {len(slots)} positional parameter(s), but the "
                             f"contract passes {len(names)}: {', '.join(names)}")
    slot_names = {p.name for p in slots}
    for p in params:
        by_keyword = p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        if p.name in slot_names or (p.name in ("dim", "axis") and by_keyword) or p.kind in (kinds.VAR_POSITIONAL,
                                                                                              kinds.VAR_KEYWORD):
            continue
        if p.default is not kinds.empty:
            continue
        if p.name in _keyword_names(fname) and by_keyword:
            raise CandidateError(f"{target}: {fname}{sig}: keyword {p.name!r} needs a default "
                                 f"(loss keywords are passed only to the cases that need them)")
        passes = ", ".join(names) + (", the loss keywords it accepts" if _keyword_names(fname) else "")
        raise CandidateError(f"{target}: {fname}{sig}: unexpected required parameter {p.name!r} "
                             f"(the contract passes only {passes}, and -1 to a dim or axis parameter)")


def resolve_function(
    fname: str,
    fn: Callable[..., Any],
    mark: Mark | None,
    *,
    module_roots: set[str],
    force_rowwise: bool,
    target: str,
    probe: bool = True,
    loss_style: str = "none",
    requested_device: str | None = None,
) -> tuple[OpFunction, tuple[int, ...] | None]:
    """Decide backend, device, keywords and row mode for one function.

    The static guess (or the decorator) comes first; a probe call on a 2×3
    float32 input confirms it. Alternatives (the other backend, CUDA, row by
    row, a dim/axis keyword for callables without a signature) are tried only
    when the first choice does not give the right values, and the first that
    does is kept, with a note saying why. Loss functions are then probed for
    the keywords they take (by trial, when the signature cannot be inspected)
    and for probability targets. Returns the function and the shape of its
    kept probe output (None when not probed or when the probe failed).
    """
    _check_signature(fn, fname, target)
    rowwise = force_rowwise or (mark is not None and mark.rowwise)
    backend = mark.backend if mark else None
    device = mark.device if mark else None
    if device is not None and backend is None:
        backend = "torch"
    explicit_backend = backend is not None
    uses_triton = False
    if backend is None:
        backend, uses_triton = _guess_backend(fn, module_roots)
    if backend == "torch" and not torch_available():
        raise CandidateError(f"{target}: {fname} needs torch, which is not installed")
    if backend == "jax" and not jax_available():
        raise CandidateError(f"{target}: {fname} needs jax, which is not installed (pip install 'softaudit[jax]')")
    if backend == "torch" and device is not None:
        _check_device(device, target)
    if backend == "jax":
        device = None  # JAX candidates run on the CPU (docs/candidates.md#jax)

    dim_kw, signature_known = _dim_keyword(fn)
    keywords, keywords_known = _loss_keywords(fn, fname)
    if fname in _LINEAR_FUNCTIONS:
        dim_kw, signature_known, rowwise = None, True, False  # whole tensors, no dim; keywords found by signature
    if not probe:
        dev = _device_options(backend, device or requested_device, uses_triton)[0]
        return OpFunction(fname, fn, backend, dev, rowwise, dim_kw,
                          ("not probed: a probe call crashed or hung, so the backend is the static guess",),
                          keywords), None
    dim_options: list[str | None] = [dim_kw] if signature_known else [None, "dim", "axis"]
    if backend == "jax" and dim_kw is not None and _has_default(fn, dim_kw):
        dim_options.append(None)  # a jax.jit function whose axis is not static takes no axis=-1
    row_options = [False] if fname in _LINEAR_FUNCTIONS else [True] if rowwise else [False, True]
    backends = [backend]
    if not explicit_backend:
        others = {"torch": ["numpy"], "numpy": ["torch", "jax"], "jax": ["numpy", "torch"]}[backend]
        backends += [b for b in others if b == "numpy" or (b == "torch" and torch_available())
                     or (b == "jax" and "jax" in sys.modules)]

    request, expected = probe_request(fname, keywords, loss_style)
    attempts: list[tuple[OpFunction, CallResult, int]] = []
    options = ((be, dev, rw, kw) for be in backends
               for dev in _device_options(be, device or requested_device, uses_triton)
               for rw in row_options for kw in dim_options)
    for be, dev, rw, kw in options:
        opfn = OpFunction(fname, fn, be, dev, rw, kw, (), keywords)
        result = call_function(opfn, request)
        attempts.append((opfn, result, probe_quality(result, expected)))
        if attempts[-1][2] == 2:
            break
    opfn, result = _with_notes(attempts, rowwise, signature_known)
    if fname in _LOSS_FUNCTIONS:
        opfn = _probe_loss(opfn, keywords_known, loss_style)
    elif fname in _LINEAR_FUNCTIONS and not keywords_known:
        note = "its signature cannot be inspected: called without keywords (cases that need one are skipped)"
        opfn = dataclasses.replace(opfn, notes=(*opfn.notes, note))
    shape = result.output.shape if result.output is not None and result.error is None else None
    return opfn, shape


def _probe_loss(opfn: OpFunction, keywords_known: bool, loss_style: str) -> OpFunction:
    """Find the loss keywords by trial (when the signature cannot tell) and
    whether probability targets are taken: a probe with them must not raise."""
    notes = list(opfn.notes)
    keywords = set(opfn.keywords)
    if not keywords_known:
        found = []
        for kw in LOSS_KEYWORDS:
            trial = dataclasses.replace(opfn, keywords=frozenset(keywords | {kw}))
            request, expected = probe_request(opfn.op, trial.keywords, loss_style, ((kw, TRIAL_VALUES[kw]),))
            if probe_quality(call_function(trial, request), expected) == 2:
                found.append(kw)
        keywords.update(found)
        taken = ", ".join(found) if found else "none of " + ", ".join(LOSS_KEYWORDS)
        notes.append(f"takes {taken} (found by trial: its signature cannot be inspected)")
    opfn = dataclasses.replace(opfn, keywords=frozenset(keywords))
    request, _ = probe_request(opfn.op, opfn.keywords, loss_style, probabilities=True)
    result = call_function(opfn, request)
    if result.raised:
        notes.append(f"accepts class-index targets only (the probability-target probe {result.error})")
        return dataclasses.replace(opfn, notes=tuple(notes), probability_targets=False)
    return dataclasses.replace(opfn, notes=tuple(notes))


def _has_default(fn: Callable[..., Any], name: str) -> bool:
    """Whether parameter ``name`` of ``fn`` has a default (so the call may leave it out)."""
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is not inspect.Parameter.empty


def _device_options(backend: str, device: str | None, uses_triton: bool) -> list[str]:
    """Devices to try for a backend: the requested one, else CUDA then the CPU where a CUDA
    device exists (the CPU first for Triton code that TRITON_INTERPRET runs there). numpy and
    JAX arrays are always on the CPU."""
    if backend in ("numpy", "jax"):
        return ["cpu"]
    if device is not None:
        return [device]
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    if not cuda:
        return ["cpu"]
    if uses_triton and os.environ.get("TRITON_INTERPRET") == "1":
        return ["cpu", "cuda"]
    return ["cuda", "cpu"]


def _with_notes(
    attempts: list[tuple[OpFunction, CallResult, int]], requested_rowwise: bool, signature_known: bool
) -> tuple[OpFunction, CallResult]:
    """Keep the first attempt that gave the right values (else the first that
    gave the right shape, else the very first) and note how it departs from
    the static guess."""
    first, first_result, _ = attempts[0]
    best = max(range(len(attempts)), key=lambda i: (attempts[i][2], -i))
    opfn, result, quality = attempts[best] if attempts[best][2] else attempts[0]
    notes: list[str] = []
    if quality == 0:
        notes.append(f"the 2×3 float32 probe failed: {_probe_failure(first_result)}")
    if opfn.backend != first.backend:
        kind = "tensors" if opfn.backend == "torch" else "arrays"
        notes.append(
            f"looked like {first.backend} code, but on {first.backend} input the probe "
            f"{_probe_failure(first_result)}; called with {opfn.backend} {kind}"
        )
    elif opfn.device != first.device:
        notes.append(f"on {first.device} the probe {_probe_failure(first_result)}; runs on {opfn.device}")
    if opfn.rowwise and requested_rowwise:
        notes.append("audited row by row (as requested)")
    elif opfn.rowwise:
        flat = next(r for o, r, _ in attempts if (o.backend, o.device) == (opfn.backend, opfn.device))
        notes.append(f"audited row by row (1-D only): the 2-D call {_probe_failure(flat)}")
    if not signature_known and opfn.dim_kw:
        notes.append(f"called with {opfn.dim_kw}=-1 (found by trial: its signature cannot be inspected)")
    return dataclasses.replace(opfn, notes=tuple(notes)), result


def _probe_failure(result: CallResult) -> str:
    """How a probe attempt went wrong, phrased to follow "the probe ..."."""
    if result.error is not None:
        return result.error
    if result.unsupported is not None:
        return f"could not be made: {result.unsupported}"
    return "gave wrong values on a 2×3 input (a reduction over more than the last axis?)"
