"""Candidates: loading the implementations under audit and calling them safely.

A *candidate* is one implementation of some of the ops ``softmax``,
``log_softmax``, ``logsumexp`` and ``cross_entropy`` (DESIGN §7), and
optionally of their explicit backward functions (``softmax_backward`` ...).
It comes from a Python file (``impl.py``) or a built-in (``builtin:NAME``);
both are loaded the same way, from a file executed as a fresh module.

Loading decides, for every function and without boilerplate in the user's
file: the backend (numpy arrays or torch tensors) and device, whether a
``dim``/``axis`` keyword is passed, whether the function handles 2-D input or
must be called row by row and, for cross-entropy, which loss keywords it
accepts and whether it takes probability targets. The static guess is
confirmed by probe calls on a tiny 2×3 float32 input; see docs/candidates.md
for the rules.

``call`` then runs one op in one direction on one input (``CallRequest``): a
fresh copy of every array for every call, each checked bit for bit
afterwards, exceptions and odd outputs turned into a one-line ``error``, and
outputs in a wider format rounded exactly (once) into the input's format. The
backward pass goes through the candidate's explicit backward function, else
through torch autograd for torch candidates (``backward_mode``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import itertools
import os
import re
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from softaudit.decorator import _MARK, BACKENDS, FUNCTION_NAMES, _Mark, _marks_of, candidate  # noqa: F401  (re-exported)
from softaudit.formats import FLOAT64, FORMATS, Format, format_of_dtype, round_float64_array
from softaudit.ops import BACKWARD_FUNCTIONS, LOSS_KEYWORDS, OPS, backward_name

if TYPE_CHECKING:
    from softaudit.inputs import LossInputs

POSITIONAL = {
    "softmax": ("x",),
    "log_softmax": ("x",),
    "logsumexp": ("x",),
    "cross_entropy": ("logits", "target"),
    "softmax_backward": ("y", "dy"),
    "log_softmax_backward": ("y", "dy"),
    "logsumexp_backward": ("x", "y", "dy"),
    "cross_entropy_backward": ("logits", "target", "dloss"),
}
"""The positional arguments each function receives, in order (docs/candidates.md)."""

_LOSS_FUNCTIONS = frozenset({"cross_entropy", "cross_entropy_backward"})
"""Functions that receive the loss keywords they accept."""

_BUILTIN_PREFIX = "builtin:"
_TORCH_ROOTS = frozenset({"torch", "triton"})
_NUMPY_ROOTS = frozenset({"numpy", "scipy", "ml_dtypes"})
_MAX_MESSAGE = 300
_MAX_WARNING_NOTES = 3


class CandidateError(Exception):
    """A target cannot be loaded; the message is one line that names the target."""


class CandidateImportError(CandidateError):
    """The target's module raised while it was being imported (not a missing module).

    That is a fault of the candidate, not of the command line: the audit records
    it as a FAIL and goes on with the other targets.
    """


class CandidateUnavailable(CandidateError):
    """The target needs an optional package that is not installed (triton): its records are
    SKIPs with this reason, not a failure of the candidate or of the command line."""


class NoOpsError(CandidateError):
    """The file defines none of the ops (a helper module in an audited directory, say)."""


# --------------------------------------------------------------------------
# The decorator lives in softaudit.decorator (light: importing softaudit needs no numpy); its names
# are re-exported here.

# --------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class OpFunction:
    """One function of a candidate (an op or an explicit backward), with everything needed to call it."""

    op: str
    """The function's role: one of OPS, or a backward function name (``softmax_backward`` ...)."""
    fn: Callable[..., Any]
    """The user's callable."""
    backend: str
    """"numpy" or "torch": what kind of array it is given."""
    device: str
    """Torch device for the input ("cpu", "cuda", ...); "cpu" for numpy."""
    rowwise: bool
    """Called once per row with a 1-D vector instead of once with the 2-D input."""
    dim_kw: str | None
    """Keyword ("dim" or "axis") through which -1 is passed, if any."""
    notes: tuple[str, ...] = ()
    """What detection found that a reader should know (row-by-row mode, a backend switch)."""
    keywords: frozenset[str] = frozenset()
    """cross_entropy and cross_entropy_backward: the LOSS_KEYWORDS it accepts by name (all of
    them with ``**kwargs``); empty for the other functions."""
    probability_targets: bool = True
    """cross_entropy and cross_entropy_backward: whether the probe with probability targets ran
    without raising; True for the other functions."""


def _empty_mapping() -> Mapping[str, OpFunction]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Candidate:
    """A named implementation of some of the ops."""

    name: str
    """Display name: the decorator's name, the file stem, or "builtin:NAME"."""
    target: str
    """Where it came from: the path as given, or "builtin:NAME"."""
    ops: Mapping[str, OpFunction]
    """The forward functions it implements, keyed by op, in OPS order."""
    description: str = ""
    """First line of its docstring (the functions' for decorated candidates, else the module's)."""
    backward: Mapping[str, OpFunction] = field(default_factory=_empty_mapping)
    """Its explicit backward functions, keyed by the *forward* op ("softmax" -> softmax_backward)."""


@dataclass(frozen=True)
class CallRequest:
    """One call to make: an op, a direction, and the arrays the candidate gets."""

    op: str
    """One of OPS."""
    direction: str
    """"forward" | "backward"."""
    x: np.ndarray
    """(rows, n) values of the format (the logits for cross_entropy)."""
    fmt_name: str
    """The format under audit (a key of FORMATS)."""
    loss: LossInputs | None = None
    """cross_entropy only: the target, the class weights and the keywords of the case."""
    dy: np.ndarray | None = None
    """backward only: the upstream gradient, shaped like the forward output (() for a reduced loss)."""
    y: np.ndarray | None = None
    """backward only: the correctly rounded exact forward output (softmax and log_softmax (rows, n),
    logsumexp (rows,)); NaN on undefined rows. Unused for cross_entropy."""


@dataclass
class CallResult:
    """The outcome of one ``call``."""

    output: np.ndarray | None
    """Output in the input's format: (rows, n) for softmax, log_softmax and every backward; (rows,)
    for logsumexp; (rows,) or () for cross_entropy, as returned; None on error."""
    error: str | None
    """One line when the call failed: an exception, a wrong shape, a non-array."""
    input_modified: bool
    """True when the candidate changed any array it was given (compared bit for bit)."""
    output_dtype: str
    """What the candidate returned, e.g. "float32", "torch.float64 on cpu", "list"."""
    notes: tuple[str, ...]
    """Remarks: a different output format rounded into the input's, warnings raised."""
    seconds: float
    """Wall time of the candidate's own call(s), device synchronised."""
    raised: bool = False
    """The candidate raised a Python exception (``error`` says which), as opposed to returning a
    bad output or taking the worker down."""
    unsupported: str | None = None
    """The call cannot be audited, and why (e.g. an autograd output without grad_fn): a SKIP reason."""
    cuda_error: str | None = None
    """The call left the CUDA context unusable (a device-side assert, an illegal memory access...):
    the key of the error in softaudit.runner.cuda_errors.STICKY_ERRORS (or its UNUSABLE_CONTEXT). The
    worker that made the call was replaced; ``error`` names the cause."""


def builtin_names() -> list[str]:
    """Names of the built-in candidates, as typed after ``builtin:``."""
    from softaudit.builtins import BUILTINS

    return list(BUILTINS)


# --------------------------------------------------------------------------
# Loading


def load_target(target: str, rowwise: bool = False, probe: bool = True, device: str | None = None,
                on_imported: Callable[[], None] | None = None) -> list[Candidate]:
    """Load the candidates of a ``.py`` file or of ``builtin:NAME``.

    ``rowwise=True`` audits every op row by row. ``device`` ("cpu", "cuda", or None for auto:
    CUDA when available) places torch candidates that do not name a device themselves; Triton
    code without a CUDA device (or with device "cpu") runs under Triton's interpreter. ``probe=False`` skips the probe
    calls and keeps the static guesses (the worker's retry after a probe call
    crashed or hung, so that the fault is charged to the audit's own calls).
    Raises CandidateError with a one-line message when the target cannot be used. ``on_imported``
    is called once the module has run, before the probe calls (the worker tells the parent, so a
    hang after it is the probe's, and one before it the import's).
    """
    path, default_name = resolve_target(target)
    module, interpreted = _exec_file(path, target, device)
    if on_imported is not None:
        on_imported()
    return _collect(module, target, default_name, rowwise, probe, device=device, interpreted=interpreted)


def resolve_target(target: str) -> tuple[Path, str]:
    """The source file of a ``.py`` target or ``builtin:NAME``, and its candidates' default name.

    Raises CandidateError (one line) for an unknown built-in, a missing file, a directory or a
    file that is not ``.py``: what can be told without running the file.
    """
    if target.startswith(_BUILTIN_PREFIX):
        from softaudit.builtins import BUILTINS, builtin_path

        key = target[len(_BUILTIN_PREFIX):]
        if key not in BUILTINS:
            known = ", ".join(BUILTINS)
            raise CandidateError(f"unknown built-in {target!r} (known: {known})")
        return builtin_path(key), target
    path = Path(target)
    if not path.exists():
        raise CandidateError(f"{target}: no such file")
    if path.is_dir():
        raise CandidateError(f"{target}: is a directory, not a .py file")
    if path.suffix != ".py":
        raise CandidateError(f"{target}: not a .py file (give a .py path or builtin:NAME)")
    return path, path.stem


def check_target(target: str) -> None:
    """Raise CandidateError (one line) where ``target`` cannot be loaded for a reason that shows
    without running it: an unknown built-in, a missing or unreadable file, a syntax error. The
    CLI checks every target so before it starts a worker process."""
    path, _ = resolve_target(target)
    _compile_file(path, target)


def _compile_file(path: Path, display: str) -> tuple[bytes, types.CodeType]:
    """The file's source and code object; a CandidateError naming ``display`` when it cannot be
    read or compiled."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise CandidateError(f"{display}: cannot read: {exc.strerror or exc}") from None
    try:
        code = compile(source, str(path.resolve()), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CandidateError(f"{display}:{exc.lineno}: {type(exc).__name__}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes in the source
        raise CandidateError(f"{display}: {_one_line(str(exc))}") from None
    return source, code


_module_counter = itertools.count()


def _exec_file(path: Path, display: str, device: str | None = None) -> tuple[types.ModuleType, bool]:
    """Execute ``path`` as a fresh module (no bytecode cache written next to it); also whether its
    Triton kernels run interpreted (``triton_interpretation``).

    The file's directory is on sys.path while it runs, so it can import its
    siblings. Every failure becomes a CandidateError naming ``display``.
    """
    source, code = _compile_file(path, display)
    filename = str(path.resolve())
    interpreted = triton_interpretation(source, device)
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    modname = f"_softaudit_target_{next(_module_counter)}_{stem}"
    spec = importlib.util.spec_from_file_location(modname, filename)
    if spec is None:
        raise CandidateError(f"{display}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses, pickling and triton look modules up here
    directory = str(path.parent.resolve())
    sys.path.insert(0, directory)
    try:
        exec(code, module.__dict__)
    except ModuleNotFoundError as exc:
        del sys.modules[modname]
        if exc.name and exc.name.partition(".")[0] in OPTIONAL_PACKAGES:
            package = exc.name.partition(".")[0]
            raise CandidateUnavailable(f"{display} needs {package}, which is not installed "
                                       f"({OPTIONAL_PACKAGES[package]})") from None
        if exc.name:
            raise CandidateError(f"{display} imports {exc.name!r}, which is not installed") from None
        raise CandidateError(f"{display}:{_line_in(exc, filename)}: {_describe(exc)}") from None
    except BaseException as exc:  # noqa: BLE001  (whatever the module raises, a real Ctrl-C aside)
        del sys.modules[modname]
        if _real_interrupt(exc):
            raise
        raise CandidateImportError(f"{display}:{_line_in(exc, filename)}: {_describe(exc)} while importing") from None
    finally:
        if directory in sys.path:
            sys.path.remove(directory)
    return module, interpreted


OPTIONAL_PACKAGES = {"triton": "pip install 'softaudit[triton]'", "cupy": "pip install cupy-cuda12x"}
"""Packages whose absence skips a candidate (with this install hint) instead of stopping the run."""

_TRITON_IMPORT = re.compile(rb"^[ \t]*(?:import|from)[ \t]+triton\b", re.MULTILINE)

INTERPRETED_NOTE = "Triton kernels run by Triton's CPU interpreter (TRITON_INTERPRET=1)"


def triton_interpretation(source: bytes, device: str | None = None) -> bool:
    """For source that imports triton: set TRITON_INTERPRET=1 before its kernels are decorated
    when there is no CUDA device (or ``device`` is "cpu"), so that they run on the CPU. Returns
    whether they will run interpreted. A TRITON_INTERPRET the user set is left as it is."""
    if not _TRITON_IMPORT.search(source):
        return False
    current = os.environ.get("TRITON_INTERPRET", "")
    if current and current != "1":
        return False
    if not current:
        if device != "cpu" and cuda_available():
            return False
        os.environ["TRITON_INTERPRET"] = "1"
    correct_interpreter_bfloat16()
    return True


def correct_interpreter_bfloat16() -> bool:
    """Make Triton's CPU interpreter convert float32 <-> bfloat16 correctly; True when it does.

    Triton 3.9's interpreter converts float32 to bfloat16 by truncation (no round-to-nearest)
    and mangles subnormals both ways (exp(-93.7) = 2.0e-41 stored as 8.9e-39), so an
    interpreted kernel's bfloat16 output would be judged for the interpreter's errors, not the
    kernel's. A GPU rounds to nearest (cvt.rn.bf16.f32); this replaces the interpreter's
    conversion for that pair of formats with ml_dtypes' (nearest-even, subnormals exact),
    leaving every other conversion, and explicit rounding modes, to Triton. Without
    triton, or with an interpreter that no longer has the function, nothing is changed."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except Exception:  # noqa: BLE001  (no triton, or one that fails to import: the load will say)
        return False
    original = getattr(interpreter, "_convert_float", None)
    if original is None:
        return False
    if getattr(original, "softaudit_corrected", False):
        return True

    def convert(data: Any, input_dtype: Any, output_dtype: Any, rounding_mode: Any) -> Any:
        nearest = rounding_mode is None or "RTNE" in str(rounding_mode)
        if nearest and input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            return np.asarray(data).view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        if input_dtype == tl.bfloat16 and output_dtype == tl.float32:
            return np.asarray(data).view(np.uint16).view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32)
        return original(data, input_dtype, output_dtype, rounding_mode)

    convert.softaudit_corrected = True  # type: ignore[attr-defined]
    interpreter._convert_float = convert
    return True


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    if not _torch_available():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001  (a broken torch install: no CUDA as far as we can tell)
        return False


def _line_in(exc: BaseException, filename: str) -> int | str:
    """The line of ``filename`` that was running when ``exc`` was raised."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines and lines[-1] is not None else "?"


def _collect(module: types.ModuleType, target: str, default_name: str, rowwise: bool,
             probe: bool = True, device: str | None = None, interpreted: bool = False) -> list[Candidate]:
    """Group a loaded module's functions into candidates and resolve each one (``device``: the
    requested device for torch functions that name none; ``interpreted``: its Triton kernels
    run under the CPU interpreter, said in every function's notes)."""
    module_doc = _first_line(module.__doc__)
    namespace = vars(module)
    marked: list[tuple[Any, _Mark]] = []
    seen: set[int] = set()
    for obj in namespace.values():
        if id(obj) in seen or not callable(obj):
            continue
        seen.add(id(obj))
        marked.extend((obj, mark) for mark in _marks_of(obj))

    groups: dict[str, dict[str, tuple[Any, _Mark | None]]] = {}
    if marked:
        for fn, mark in marked:
            name = mark.name or default_name
            group = groups.setdefault(name, {})
            if mark.op in group:
                first = getattr(group[mark.op][0], "__name__", "?")
                second = getattr(fn, "__name__", "?")
                raise CandidateError(
                    f"{target}: candidate {name!r} has two {mark.op} functions ({first} and {second})"
                )
            group[mark.op] = (fn, mark)
    else:
        group = {}
        for fname in FUNCTION_NAMES:
            if fname in namespace:
                if not callable(namespace[fname]):
                    kind = type(namespace[fname]).__name__
                    raise CandidateError(f"{target}: {fname} is a {kind}, not a function")
                group[fname] = (namespace[fname], None)
        if not group:
            raise NoOpsError(f"{target} defines none of {', '.join(OPS)}")
        groups[default_name] = group

    for name, group in groups.items():
        for fname in group:
            op = BACKWARD_FUNCTIONS.get(fname)
            if op is not None and op not in group:
                who = f"{target}: candidate {name!r}" if marked else target
                raise CandidateError(f"{who} defines {fname} but not {op}")

    module_roots = _module_roots(module)
    candidates = []
    for name, group in groups.items():
        resolve = functools.partial(_resolve, module_roots=module_roots, force_rowwise=rowwise,
                                    target=target, probe=probe, requested_device=device)
        ops: dict[str, OpFunction] = {}
        loss_style = "none"
        for op in OPS:
            if op in group:
                ops[op], shape = resolve(op, *group[op])
                if op == "cross_entropy" and shape == ():
                    loss_style = "mean"  # a scalar loss: the backward's dloss is a scalar too
        backward = {
            op: resolve(backward_name(op), *group[backward_name(op)], loss_style=loss_style)[0]
            for op in OPS
            if backward_name(op) in group
        }
        if interpreted:
            ops = {op: dataclasses.replace(f, notes=(INTERPRETED_NOTE, *f.notes)) for op, f in ops.items()}
            backward = {op: dataclasses.replace(f, notes=(INTERPRETED_NOTE, *f.notes)) for op, f in backward.items()}
        fn_docs = [_first_line(getattr(fn, "__doc__", None)) for fn, mark in group.values() if mark]
        description = next((d for d in fn_docs if d), module_doc)
        candidates.append(Candidate(name, target, types.MappingProxyType(ops), description,
                                    types.MappingProxyType(backward)))
    return candidates


def _first_line(doc: str | None) -> str:
    """A docstring's summary: its first paragraph on one line (a summary may wrap), or ""."""
    if not isinstance(doc, str):
        return ""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip())


# --------------------------------------------------------------------------
# Backend detection (static)


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
        except Exception:  # noqa: BLE001  (arbitrary user objects)
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
    roots = _roots_of(obj) & (_TORCH_ROOTS | _NUMPY_ROOTS)
    if roots:
        return roots
    found: set[str] = set()
    inner: list[object] = []
    if isinstance(obj, functools.partial):
        inner += [obj.func, *obj.args, *obj.keywords.values()]
    try:
        wrapped = getattr(obj, "__wrapped__", None) if callable(obj) else None
    except Exception:  # noqa: BLE001  (arbitrary user objects)
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


def _module_roots(module: types.ModuleType) -> set[str]:
    """Array libraries a module's namespace holds (imported modules or objects)."""
    roots: set[str] = set()
    for value in list(vars(module).values()):
        roots |= _roots_of(value)
    return roots & (_TORCH_ROOTS | _NUMPY_ROOTS)


def _guess_backend(fn: object, module_roots: set[str]) -> tuple[str, bool]:
    """(backend, uses_triton) from what the function refers to.

    Torch if it uses torch (or triton) and not numpy; numpy if the reverse;
    torch if both (numpy constants in torch code are common, and the probe
    corrects the rarer numpy code that calls torch.from_numpy); otherwise
    whatever the module imports, torch only if it imports torch and not numpy.
    """
    roots = _library_roots(fn)
    uses_triton = "triton" in roots or ("triton" in module_roots and not roots)
    if roots & _TORCH_ROOTS:
        return "torch", uses_triton
    if roots & _NUMPY_ROOTS:
        return "numpy", False
    if module_roots & _TORCH_ROOTS and not module_roots & _NUMPY_ROOTS:
        return "torch", uses_triton
    return "numpy", False


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
    if fname not in _LOSS_FUNCTIONS:
        return frozenset(), True
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return frozenset(), False
    kinds = inspect.Parameter
    if any(p.kind is kinds.VAR_KEYWORD for p in params):
        return frozenset(LOSS_KEYWORDS), True
    slots = {p.name for p in _positional_slots(params, len(POSITIONAL[fname]))}
    return frozenset(p.name for p in params if p.name in LOSS_KEYWORDS and p.name not in slots
                     and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)), True


def _positional_slots(params: list[inspect.Parameter], count: int) -> list[inspect.Parameter]:
    """The parameters that receive the first ``count`` positional arguments (without *args)."""
    kinds = inspect.Parameter
    return [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)][:count]


# --------------------------------------------------------------------------
# Backend detection (probe)

_PROBE = np.array([[1.0, 2.0, 3.5], [-1.0, 0.5, 0.25]], dtype=np.float32)
_PROBE_TARGET = np.array([2, 0], dtype=np.int64)
_PROBE_PROBABILITIES = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]], dtype=np.float32)
_PROBE_DY = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]], dtype=np.float32)
_PROBE_DY_ROWS = np.array([0.75, -1.5], dtype=np.float32)
_TRIAL_VALUES: dict[str, object] = {
    "label_smoothing": 0.0, "ignore_index": -100, "weight": np.ones(3, np.float32), "reduction": "none",
}
"""Harmless values for the keyword trial of a loss function whose signature cannot be inspected."""


@dataclass(frozen=True)
class _ProbeLoss:
    """Stands in for inputs.LossInputs in the probe calls: the attributes ``call`` reads."""

    target: np.ndarray
    target_kind: str = "index"
    reduction: str = "none"
    passed: tuple[tuple[str, object], ...] = ()
    """The keywords to pass (when the function accepts them)."""
    weight: np.ndarray | None = None
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    out_of_range: bool = False

    def keywords(self) -> dict[str, object]:
        return dict(self.passed)


def _probe_exact() -> dict[str, np.ndarray]:
    """softmax, log_softmax and logsumexp of the probe input in float64 (its values are exact)."""
    x = _PROBE.astype(np.float64)
    lse = np.log(np.exp(x).sum(axis=-1))
    return {"softmax": np.exp(x - lse[:, None]), "log_softmax": x - lse[:, None], "logsumexp": lse}


def _probe_request(
    fname: str, keywords: frozenset[str], loss_style: str = "none",
    passed: tuple[tuple[str, object], ...] = (), probabilities: bool = False,
) -> tuple[CallRequest, dict[tuple[int, ...], np.ndarray]]:
    """The probe call of function ``fname`` and the outputs that are right, by shape.

    ``loss_style`` is "mean" when the candidate's cross_entropy returned a
    scalar: its cross_entropy_backward (if it takes no reduction keyword) then
    gets a scalar dloss. ``passed`` are keywords to pass (the keyword trial);
    ``probabilities`` probes with probability targets instead of [2, 0].
    """
    exact = _probe_exact()
    rows, n = _PROBE.shape
    if fname in ("softmax", "log_softmax", "logsumexp"):
        return CallRequest(fname, "forward", _PROBE, "float32"), {exact[fname].shape: exact[fname]}
    p = exact["softmax"]
    target = _PROBE_PROBABILITIES if probabilities else _PROBE_TARGET
    kind = "probability" if probabilities else "index"
    if fname == "cross_entropy":
        per_row = -exact["log_softmax"][np.arange(rows), _PROBE_TARGET]
        expected = {(rows,): per_row}
        if dict(passed).get("reduction") != "none":
            expected[()] = np.array(per_row.mean())
        loss = _ProbeLoss(target, kind, "none", passed)
        return CallRequest("cross_entropy", "forward", _PROBE, "float32", loss=loss), expected
    op = BACKWARD_FUNCTIONS[fname]
    d = _PROBE_DY.astype(np.float64)
    if op == "cross_entropy":
        kw = dict(passed)
        if "reduction" in keywords:
            kw["reduction"] = "none"
        if kw.get("reduction", loss_style) == "none":
            dloss, g = _PROBE_DY_ROWS, _PROBE_DY_ROWS.astype(np.float64)
        else:
            dloss = np.array(_PROBE_DY_ROWS[0])
            g = np.full(rows, float(dloss) / rows)
        loss = _ProbeLoss(target, kind, kw.get("reduction", loss_style), tuple(kw.items()))
        onehot = np.eye(n)[_PROBE_TARGET]
        request = CallRequest("cross_entropy", "backward", _PROBE, "float32", loss=loss, dy=dloss)
        return request, {(rows, n): g[:, None] * (p - onehot)}
    if op == "softmax":
        grad = p * (d - (p * d).sum(axis=-1, keepdims=True))
    elif op == "log_softmax":
        grad = d - p * d.sum(axis=-1, keepdims=True)
    else:
        d = _PROBE_DY_ROWS.astype(np.float64)
        grad = d[:, None] * p  # dy * exp(x - y)
    dy = _PROBE_DY if op != "logsumexp" else _PROBE_DY_ROWS
    request = CallRequest(op, "backward", _PROBE, "float32", dy=dy, y=exact[op].astype(np.float32))
    return request, {(rows, n): grad}


def _probe_quality(result: CallResult, expected: Mapping[tuple[int, ...], np.ndarray]) -> int:
    """2: right shape and values; 1: right shape, wrong values; 0: failed."""
    if result.error is not None or result.output is None:
        return 0
    out = result.output.astype(np.float64)
    want = expected.get(out.shape)
    if want is None:
        return 1
    ok = np.all(np.isfinite(out)) and np.allclose(out, want, rtol=2e-2, atol=1e-3)
    return 2 if ok else 1


def _torch_available() -> bool:
    """Whether torch can be imported (without importing it when it is not needed)."""
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def _check_device(device: str, target: str) -> None:
    """Raise CandidateError when an explicitly requested torch device is unusable."""
    import torch

    try:
        torch.empty(1, device=device)
    except Exception as exc:  # noqa: BLE001  (torch raises several kinds)
        raise CandidateError(f"{target}: device {device!r} is not usable here: {_one_line(str(exc))}") from None


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
        if fname in _LOSS_FUNCTIONS and p.name in LOSS_KEYWORDS and by_keyword:
            raise CandidateError(f"{target}: {fname}{sig}: keyword {p.name!r} needs a default "
                                 f"(loss keywords are passed only to the cases that need them)")
        passes = ", ".join(names) + (", the loss keywords it accepts" if fname in _LOSS_FUNCTIONS else "")
        raise CandidateError(f"{target}: {fname}{sig}: unexpected required parameter {p.name!r} "
                             f"(the contract passes only {passes}, and -1 to a dim or axis parameter)")


def _resolve(
    fname: str,
    fn: Callable[..., Any],
    mark: _Mark | None,
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
    if backend == "torch" and not _torch_available():
        raise CandidateError(f"{target}: {fname} needs torch, which is not installed")
    if backend == "torch" and device is not None:
        _check_device(device, target)

    dim_kw, signature_known = _dim_keyword(fn)
    keywords, keywords_known = _loss_keywords(fn, fname)
    if not probe:
        dev = _device_options(backend, device or requested_device, uses_triton)[0]
        return OpFunction(fname, fn, backend, dev, rowwise, dim_kw,
                          ("not probed: a probe call crashed or hung, so the backend is the static guess",),
                          keywords), None
    dim_options: list[str | None] = [dim_kw] if signature_known else [None, "dim", "axis"]
    row_options = [True] if rowwise else [False, True]
    backends = [backend]
    if not explicit_backend:
        other = "numpy" if backend == "torch" else "torch"
        if other == "numpy" or _torch_available():
            backends.append(other)

    request, expected = _probe_request(fname, keywords, loss_style)
    attempts: list[tuple[OpFunction, CallResult, int]] = []
    options = ((be, dev, rw, kw) for be in backends
               for dev in _device_options(be, device or requested_device, uses_triton)
               for rw in row_options for kw in dim_options)
    for be, dev, rw, kw in options:
        opfn = OpFunction(fname, fn, be, dev, rw, kw, (), keywords)
        result = _call_function(opfn, request)
        attempts.append((opfn, result, _probe_quality(result, expected)))
        if attempts[-1][2] == 2:
            break
    opfn, result = _with_notes(attempts, rowwise, signature_known)
    if fname in _LOSS_FUNCTIONS:
        opfn = _probe_loss(opfn, keywords_known, loss_style)
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
            request, expected = _probe_request(opfn.op, trial.keywords, loss_style, ((kw, _TRIAL_VALUES[kw]),))
            if _probe_quality(_call_function(trial, request), expected) == 2:
                found.append(kw)
        keywords.update(found)
        taken = ", ".join(found) if found else "none of " + ", ".join(LOSS_KEYWORDS)
        notes.append(f"takes {taken} (found by trial: its signature cannot be inspected)")
    opfn = dataclasses.replace(opfn, keywords=frozenset(keywords))
    request, _ = _probe_request(opfn.op, opfn.keywords, loss_style, probabilities=True)
    result = _call_function(opfn, request)
    if result.raised:
        notes.append(f"accepts class-index targets only (the probability-target probe {result.error})")
        return dataclasses.replace(opfn, notes=tuple(notes), probability_targets=False)
    return dataclasses.replace(opfn, notes=tuple(notes))


def _device_options(backend: str, device: str | None, uses_triton: bool) -> list[str]:
    """Devices to try for a backend: the requested one, else CUDA then the CPU where a CUDA
    device exists (the CPU first for Triton code that TRITON_INTERPRET runs there)."""
    if backend == "numpy":
        return ["cpu"]
    if device is not None:
        return [device]
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001  (a broken torch install: the probe will report it)
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


# --------------------------------------------------------------------------
# Calling

_BACKWARD_SIGNATURES = {
    "softmax": "softmax_backward(y, dy)",
    "log_softmax": "log_softmax_backward(y, dy)",
    "logsumexp": "logsumexp_backward(x, y, dy)",
    "cross_entropy": "cross_entropy_backward(logits, target, dloss)",
}
"""The explicit backward function of each op, as a reason for skipping names it."""


def backward_mode(cand: Candidate, op: str) -> tuple[str | None, str]:
    """How ``op``'s backward pass is audited: ("function", "") through the
    candidate's explicit backward function, ("autograd", "") through torch
    autograd of its forward function, or (None, reason) when it cannot be (the
    runner's SKIP reason)."""
    if op in cand.backward:
        return "function", ""
    opfn = cand.ops.get(op)
    if opfn is None:
        return None, f"{op} is not defined"
    if opfn.backend == "torch":
        return "autograd", ""
    return None, f"numpy candidate without {_BACKWARD_SIGNATURES[op]}: audited forward only"


def accepted_keywords(opfn: OpFunction) -> tuple[str, ...]:
    """The loss keywords a cross_entropy(_backward) function is audited with, in LOSS_KEYWORDS
    order: those it takes, less ``reduction`` row by row (each row's call gets reduction="none",
    so a case's mean or sum cannot be asked of it)."""
    return tuple(k for k in LOSS_KEYWORDS if k in opfn.keywords and not (k == "reduction" and opfn.rowwise))


def call(cand: Candidate, request: CallRequest) -> CallResult:
    """Run ``request.op`` of ``cand`` in ``request.direction`` on the request's arrays.

    The candidate gets fresh copies (numpy arrays or torch tensors on its
    device); nothing it raises or returns escapes as an exception. A backward
    pass that cannot be audited comes back with ``unsupported`` set. Raises
    ValueError only for a malformed request (the caller's fault).
    """
    fmt = FORMATS.get(request.fmt_name)
    if fmt is None:
        raise ValueError(f"unknown format {request.fmt_name!r}")
    if request.op not in OPS:
        raise ValueError(f"unknown op {request.op!r}")
    if request.direction == "forward":
        opfn = cand.ops.get(request.op)
        if opfn is None:
            raise ValueError(f"{cand.name} defines no {request.op}")
        return _call_forward(opfn, request, fmt)
    if request.direction != "backward":
        raise ValueError(f"unknown direction {request.direction!r}")
    mode, reason = backward_mode(cand, request.op)
    if mode is None:
        return CallResult(None, None, False, "", (), 0.0, unsupported=reason)
    if mode == "function":
        return _call_backward(cand.backward[request.op], request, fmt)
    return _call_autograd(cand.ops[request.op], request, fmt)


def call_op(opfn: OpFunction, x: np.ndarray, fmt: Format) -> CallResult:
    """Run one forward op (softmax, log_softmax or logsumexp) on a 2-D input ``x`` of format
    ``fmt``: ``call`` for a single function."""
    if opfn.op not in ("softmax", "log_softmax", "logsumexp"):
        raise ValueError(f"call_op runs softmax, log_softmax and logsumexp, not {opfn.op}: use call()")
    return _call_forward(opfn, CallRequest(opfn.op, "forward", x, fmt.name), fmt)


def _call_function(opfn: OpFunction, request: CallRequest) -> CallResult:
    """Call one function as ``call`` would call it (the probes try functions, not candidates)."""
    fmt = FORMATS[request.fmt_name]
    if opfn.op in BACKWARD_FUNCTIONS:
        return _call_backward(opfn, request, fmt)
    return _call_forward(opfn, request, fmt)


class _OutputError(Exception):
    """An output that cannot be judged; the message reads "returned ..."."""


class _Unsupported(Exception):
    """The call cannot be audited (an autograd output without grad_fn); the message is the reason."""


class Arguments:
    """The arrays of one call as the candidate gets them (fresh copies: numpy
    arrays, or torch tensors on its device), with their bits as given, to find
    the ones it changes."""

    def __init__(self, opfn: OpFunction) -> None:
        self.opfn = opfn
        self._given: list[tuple[str, Any, object, tuple[int, ...], np.ndarray]] = []

    def add(self, name: str, arr: np.ndarray, leaf: bool = False) -> Any:
        """A fresh copy of ``arr`` for the candidate; ``leaf``: a torch leaf that requires grad."""
        value: Any = np.array(arr, copy=True, order="C")
        if self.opfn.backend == "torch":
            value = to_torch(value, self.opfn.device)
            if leaf:
                value = value.clone().requires_grad_(True)
        self.track(name, value)
        return value

    def track(self, name: str, value: Any) -> None:
        """Remember ``value``'s dtype, shape and bits as the candidate receives it."""
        self._given.append((name, value, value.dtype, tuple(value.shape), _bits(value).copy()))

    def modified(self) -> list[str]:
        """Names of the arguments whose dtype, shape or any bit changed (NaN payloads included)."""
        names: list[str] = []
        for name, value, dtype, shape, bits in self._given:
            if value.dtype != dtype or tuple(value.shape) != shape or not np.array_equal(_bits(value), bits):
                if name not in names:
                    names.append(name)
        return names


def _bits(value: Any) -> np.ndarray:
    """The raw bits of an array or tensor as unsigned integers (on the CPU)."""
    if isinstance(value, np.ndarray):
        return value.view(f"u{value.dtype.itemsize}")
    return _torch_bits(value)


@dataclass
class _Run:
    """What the candidate's call(s) did."""

    raw: list[Any]
    error: str | None
    raised: bool
    unsupported: str | None
    seconds: float
    notes: tuple[str, ...]


def _run(opfn: OpFunction, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
         after: Callable[[Any, int], None] | None = None) -> _Run:
    """Make the calls (one, or one per row), timing them and recording warnings;
    ``after(output, i)`` runs inside the timing (autograd's backward)."""
    raw: list[Any] = []
    error: str | None = None
    unsupported: str | None = None
    raised = False
    i = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            for i, (args, kwargs) in enumerate(calls):
                out = opfn.fn(*args, **kwargs)
                raw.append(out)
                if after is not None:
                    after(out, i)
            _synchronize(opfn)
        except _Unsupported as exc:
            unsupported = str(exc)
        except _OutputError as exc:
            error = (f"row {i}: " if opfn.rowwise else "") + str(exc)
        except BaseException as exc:  # noqa: BLE001  (BaseException, GeneratorExit, a KeyboardInterrupt raised by the candidate)
            if _real_interrupt(exc):
                raise
            error = (f"row {i}: " if opfn.rowwise else "") + _describe(exc)
            raised = True
        seconds = time.perf_counter() - start
    return _Run(raw, error, raised, unsupported, seconds, _warning_notes(caught))


def call_arguments(opfn: OpFunction, values: list[tuple[Any, bool]], kwargs: dict[str, Any],
                   rows: int) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The positional arguments of each call: whole arrays, or (row by row) row ``i`` of
    every argument marked per-row and the others whole."""
    if not opfn.rowwise:
        return [(tuple(v for v, _ in values), kwargs)]
    return [(tuple(v[i] if per_row else v for v, per_row in values), kwargs) for i in range(rows)]


def _finish(opfn: OpFunction, run: _Run, args: Arguments, fmt: Format, expected: tuple[int, ...],
            allow: Iterable[tuple[int, ...]] = (), also: Iterable[tuple[int, ...]] = (),
            outputs: list[Any] | None = None, stack: bool = False, extra: Iterable[str] = ()) -> CallResult:
    """The CallResult of a run: input changes, errors, and the output(s) normalised into ``fmt``.

    ``stack``: the outputs are rows (``expected`` is a row's shape), stacked.
    ``outputs`` replaces the candidate's return values (autograd's x.grad).
    """
    notes = run.notes + tuple(extra)
    try:
        changed = args.modified()
    except Exception as exc:  # noqa: BLE001  (e.g. a device error surfacing late)
        if run.error is not None:
            # The call failed already, and its error made the input unreadable too (a CUDA error that
            # breaks the context, cuda_errors): the error is the finding, not a modified input.
            return CallResult(None, run.error, False, "", notes, run.seconds, run.raised)
        return CallResult(None, f"input could not be read back: {_describe(exc)}", True, "", notes, run.seconds,
                          run.raised)
    others = [name for name in changed if name not in ("x", "logits")]
    if others:
        notes += (f"changed its {', '.join(others)} argument{'s' if len(others) > 1 else ''} in place",)
    modified = bool(changed)
    if run.unsupported is not None:
        return CallResult(None, None, modified, "", notes, run.seconds, unsupported=run.unsupported)
    if run.error is not None:
        return CallResult(None, run.error, modified, "", notes, run.seconds, run.raised)
    items = run.raw if outputs is None else outputs
    allow, also = list(allow), list(also)
    if stack:
        parts, descs, rounding = [], [], []
        for i, item in enumerate(items):
            try:
                part, desc, note = _normalise(item, expected, fmt, allow=allow)
            except Exception as exc:  # noqa: BLE001  (_OutputError, or a failure reading a foreign array)
                problem = f"row {i}: {_output_problem(exc, item)}"
                return CallResult(None, problem, modified, _safe_desc(item), notes, run.seconds)
            parts.append(part)
            descs.append(desc)
            if note and note not in rounding:
                rounding.append(note)
        out = np.stack(parts) if parts else np.empty((0,) + expected, dtype=fmt.np_dtype)
        return CallResult(out, None, modified, descs[0] if descs else "", notes + tuple(rounding), run.seconds)
    try:
        out, desc, note = _normalise(items[0], expected, fmt, allow=allow, also=also)
    except Exception as exc:  # noqa: BLE001  (_OutputError, or a failure reading a foreign array)
        return CallResult(None, _output_problem(exc, items[0]), modified, _safe_desc(items[0]), notes, run.seconds)
    return CallResult(out, None, modified, desc, notes + ((note,) if note else ()), run.seconds)


def _placement_failure(opfn: OpFunction, exc: Exception) -> CallResult:
    return CallResult(None, f"cannot place the input on {opfn.device}: {_describe(exc)}", False, "", (), 0.0)


def _logits(request: CallRequest, fmt: Format) -> np.ndarray:
    """The request's x in ``fmt``, checked to be 2-D."""
    x = _as_format(np.asarray(request.x), fmt)
    if x.ndim != 2:
        raise ValueError(f"call needs a 2-D input, got shape {x.shape}")
    return x


def _array(value: np.ndarray | None, name: str, fmt: Format, shapes: Iterable[tuple[int, ...]]) -> np.ndarray:
    """A request's ``y`` or ``dy`` in ``fmt``, checked to have one of ``shapes``."""
    if value is None:
        raise ValueError(f"this call needs {name}")
    arr = _as_format(np.asarray(value), fmt)
    shapes = list(shapes)
    if arr.shape not in shapes:
        raise ValueError(f"{name} of shape {arr.shape}, expected {' or '.join(map(str, shapes))}")
    return arr


def _loss(request: CallRequest) -> LossInputs:
    if request.loss is None:
        raise ValueError("a cross_entropy call needs loss inputs")
    return request.loss


def _target(loss: LossInputs, fmt: Format, rows: int, n: int) -> np.ndarray:
    """Class indices as int64 (rows,), or probabilities in ``fmt`` (rows, n)."""
    if loss.target_kind == "probability":
        t = _as_format(np.asarray(loss.target), fmt)
        expected: tuple[int, ...] = (rows, n)
    else:
        t = np.asarray(loss.target)
        if t.dtype.kind not in "iu":
            raise ValueError(f"class-index targets must be integers, not {t.dtype}")
        t = t.astype(np.int64)
        expected = (rows,)
    if t.shape != expected:
        raise ValueError(f"{loss.target_kind} targets of shape {t.shape}, expected {expected}")
    return t


def _loss_keyword_args(opfn: OpFunction, loss: LossInputs, args: Arguments, fmt: Format) -> dict[str, Any]:
    """The case's keywords that the function accepts (weight converted like the logits); row by
    row, reduction="none" when it accepts reduction (each call sees one row)."""
    kwargs: dict[str, Any] = {}
    for key, value in loss.keywords().items():
        if key not in opfn.keywords:
            continue
        if isinstance(value, np.ndarray):
            value = args.add(key, _as_format(value, fmt))
        kwargs[key] = value
    if opfn.rowwise and "reduction" in opfn.keywords:
        kwargs["reduction"] = "none"
    return kwargs


def _rowwise_mean(opfn: OpFunction, dy: np.ndarray, loss: LossInputs | None) -> CallResult | None:
    """Row by row, a mean-reduced loss's gradient cannot be asked for (each call sees one row)."""
    if opfn.rowwise and loss is not None and dy.ndim == 0 and loss.reduction == "mean":
        return CallResult(None, None, False, "", (), 0.0, unsupported=(
            "a row-by-row cross_entropy cannot be differentiated through the mean over rows"))
    return None


def _call_forward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """A forward op: fn(x) or, for cross_entropy, fn(logits, target, **accepted keywords)."""
    x = _logits(request, fmt)
    rows, n = x.shape
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    try:
        if opfn.op == "cross_entropy":
            loss = _loss(request)
            target = _target(loss, fmt, rows, n)
            values = [(args.add("logits", x), True), (args.add("target", target), True)]
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
        else:
            values = [(args.add("x", x), True)]
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001  (an unusable device)
        return _placement_failure(opfn, exc)
    run = _run(opfn, call_arguments(opfn, values, kwargs, rows))
    if opfn.op == "cross_entropy":
        if opfn.rowwise:
            return _finish(opfn, run, args, fmt, (), allow=[(1,)], stack=True)
        if "reduction" in kwargs and kwargs["reduction"] == "none":
            return _finish(opfn, run, args, fmt, (rows,))
        if "reduction" in kwargs:
            return _finish(opfn, run, args, fmt, (), allow=[(1,)])
        return _finish(opfn, run, args, fmt, (rows,), allow=[(rows, 1)], also=[()])
    if opfn.op == "logsumexp":
        if opfn.rowwise:
            return _finish(opfn, run, args, fmt, (), allow=[(1,)], stack=True)
        return _finish(opfn, run, args, fmt, (rows,), allow=[(rows, 1)] + ([()] if rows == 1 else []))
    if opfn.rowwise:
        return _finish(opfn, run, args, fmt, (n,), stack=True)
    return _finish(opfn, run, args, fmt, (rows, n))


def _call_backward(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """An explicit backward function, positionally: softmax_backward(y, dy),
    log_softmax_backward(y, dy), logsumexp_backward(x, y, dy) or
    cross_entropy_backward(logits, target, dloss, **accepted keywords); -> (rows, n)."""
    op = BACKWARD_FUNCTIONS[opfn.op]
    x = _logits(request, fmt)
    rows, n = x.shape
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    loss = _loss(request) if op == "cross_entropy" else None
    row_shape = (rows,) if op in ("logsumexp", "cross_entropy") else (rows, n)
    dy = _array(request.dy, "dy", fmt, [row_shape, ()] if op == "cross_entropy" else [row_shape])
    skip = _rowwise_mean(opfn, dy, loss)
    if skip is not None:
        return skip
    try:
        if loss is not None:
            target = _target(loss, fmt, rows, n)
            values = [(args.add("logits", x), True), (args.add("target", target), True),
                      (args.add("dloss", dy), dy.ndim == 1)]
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
        else:
            y = _array(request.y, "y", fmt, [row_shape])
            values = [(args.add("y", y), True), (args.add("dy", dy), True)]
            if op == "logsumexp":
                values.insert(0, (args.add("x", x), True))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001  (an unusable device)
        return _placement_failure(opfn, exc)
    run = _run(opfn, call_arguments(opfn, values, kwargs, rows))
    if opfn.rowwise:
        return _finish(opfn, run, args, fmt, (n,), stack=True)
    return _finish(opfn, run, args, fmt, (rows, n))


def _call_autograd(opfn: OpFunction, request: CallRequest, fmt: Format) -> CallResult:
    """The backward pass of a torch forward function through autograd: x is a
    fresh leaf tensor, out = fn(x, ...), out.backward(dy); the output is x.grad."""
    if opfn.backend != "torch":
        raise ValueError(f"autograd needs a torch function, and {opfn.op} takes numpy arrays")
    import torch

    op = opfn.op
    x = _logits(request, fmt)
    rows, n = x.shape
    loss = _loss(request) if op == "cross_entropy" else None
    shapes = {"softmax": [(rows, n)], "log_softmax": [(rows, n)], "logsumexp": [(rows,)],
              "cross_entropy": [(rows,), ()]}[op]
    dy = _array(request.dy, "dy", fmt, shapes)
    skip = _rowwise_mean(opfn, dy, loss)
    if skip is not None:
        return skip
    args = Arguments(opfn)
    kwargs: dict[str, Any] = {opfn.dim_kw: -1} if opfn.dim_kw else {}
    try:
        leaf = args.add("x", x, leaf=True)
        values = [(leaf, True)]
        if loss is not None:
            values.append((args.add("target", _target(loss, fmt, rows, n)), True))
            kwargs.update(_loss_keyword_args(opfn, loss, args, fmt))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001  (an unusable device)
        return _placement_failure(opfn, exc)

    define = f"define {_BACKWARD_SIGNATURES[op]} to audit the backward pass"
    extra: list[str] = []

    def backward(out: Any, i: int) -> None:
        if not _is_tensor(out) or not out.requires_grad or out.grad_fn is None:
            raise _Unsupported(f"output is not differentiable by autograd (no grad_fn); {define}")
        g = dy[i] if opfn.rowwise and dy.ndim else dy
        if out.numel() != g.size:
            raise _OutputError(f"returned shape {tuple(out.shape)} but {g.shape} was expected")
        upstream = to_torch(np.array(g, copy=True), str(out.device)).to(out.dtype).reshape(out.shape)
        if out.dtype != fmt.torch_dtype:
            note = f"autograd: the output is {out.dtype}, so dy was passed in {out.dtype}"
            if note not in extra:
                extra.append(note)
        args.track("dy", upstream)
        out.backward(upstream)

    with torch.enable_grad():
        run = _run(opfn, call_arguments(opfn, values, kwargs, rows), after=backward)
    grad = leaf.grad
    if run.error is None and run.unsupported is None and grad is None:
        run.unsupported = f"the gradient did not reach the input (x.grad is None after backward); {define}"
    return _finish(opfn, run, args, fmt, (rows, n), outputs=[grad], extra=extra)


def _output_problem(exc: Exception, raw: object) -> str:
    """The one-line error for an output that could not be judged."""
    if isinstance(exc, _OutputError):
        return str(exc)
    return f"returned a {_safe_desc(raw)} that could not be read ({_describe(exc)})"


def _as_format(x: np.ndarray, fmt: Format) -> np.ndarray:
    """``x`` as an array of ``fmt`` (exactly rounded when it is in another format)."""
    if x.dtype == fmt.np_dtype:
        return x
    if format_of_dtype(x.dtype) is None:
        raise ValueError(f"input dtype {x.dtype} is not one of the audited formats")
    return round_float64_array(x.astype(np.float64), fmt)


def to_torch(x: np.ndarray, device: str) -> Any:
    """A torch tensor holding exactly the bits of ``x`` (bfloat16 through a uint16 view)."""
    import torch

    if x.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device == "cpu" else tensor.to(device)


_TORCH_INT_OF_WIDTH = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def _torch_bits(tensor: Any) -> np.ndarray:
    """The raw bits of a tensor as a numpy unsigned array (on the CPU)."""
    import torch

    t = tensor.detach().cpu().contiguous()
    as_int = t.view(getattr(torch, _TORCH_INT_OF_WIDTH[t.element_size()])).numpy()
    return as_int.view(f"u{t.element_size()}")


def _synchronize(opfn: OpFunction) -> None:
    """Wait for queued GPU work so that timings include it."""
    if opfn.backend == "torch" and opfn.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _is_tensor(obj: object) -> bool:
    """Whether ``obj`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_to_numpy(tensor: Any) -> tuple[np.ndarray, str]:
    """A CPU numpy copy of a tensor's values (bfloat16 via a bit view), and its description."""
    import torch

    desc = f"{tensor.dtype} on {tensor.device}"
    t = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16), desc
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        return t.to(torch.float64).numpy(), desc  # float8 and friends: exact in float64
    return t.numpy(), desc


def _safe_desc(obj: object) -> str:
    """A short description of what a candidate returned, for error results."""
    if _is_tensor(obj):
        return f"{obj.dtype} on {obj.device}"  # type: ignore[attr-defined]
    if isinstance(obj, (np.ndarray, np.generic)):
        return str(obj.dtype)
    return type(obj).__name__


def _to_array(raw: object) -> tuple[np.ndarray, str]:
    """Turn whatever a candidate returned into a numpy array, with a description."""
    if raw is None:
        raise _OutputError("returned None, not an array")
    if _is_tensor(raw):
        return _tensor_to_numpy(raw)
    if isinstance(raw, (np.ndarray, np.generic)):
        return np.asarray(raw), str(raw.dtype)
    if isinstance(raw, (str, bytes, dict, set, bool)):
        raise _OutputError(f"returned a {type(raw).__name__}, not an array")
    desc = type(raw).__name__
    try:
        if isinstance(raw, (list, tuple)) and any(_is_tensor(e) or isinstance(e, np.ndarray) for e in raw):
            return np.stack([_to_array(e)[0] for e in raw]), desc
        return np.asarray(raw), desc
    except _OutputError:
        raise
    except Exception as exc:  # noqa: BLE001  (ragged lists, foreign array types)
        raise _OutputError(f"returned a {desc} that is not a regular array ({_one_line(str(exc))})") from None


def _is_float_dtype(dtype: np.dtype) -> bool:
    """numpy floats (incl. longdouble) and ml_dtypes floats (bfloat16, float8...)."""
    if dtype.kind == "f":
        return True
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True


def _normalise(
    raw: object, expected: tuple[int, ...], fmt: Format, allow: Iterable[tuple[int, ...]] = (),
    also: Iterable[tuple[int, ...]] = (),
) -> tuple[np.ndarray, str, str | None]:
    """(output in ``fmt`` with shape ``expected``, description, rounding note).

    Shapes in ``allow`` (e.g. (rows, 1) for logsumexp) are accepted and
    reshaped; shapes in ``also`` (a scalar loss) are accepted as they are.
    Raises _OutputError for anything that cannot be judged.
    """
    arr, desc = _to_array(raw)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise _OutputError(f"returned a {desc} of non-numbers") from None
    if not _is_float_dtype(arr.dtype):
        raise _OutputError(f"returned {arr.dtype} values, not floating point")
    also = list(also)
    if arr.shape != expected and arr.shape not in also:
        if arr.shape not in list(allow):
            wanted = " or ".join(str(s) for s in [expected, *also])
            raise _OutputError(f"returned shape {arr.shape} but {wanted} was expected")
        arr = arr.reshape(expected)
    out_fmt = format_of_dtype(arr.dtype)
    if out_fmt is fmt:
        return arr.astype(fmt.np_dtype, copy=True), desc, None
    if arr.dtype == np.longdouble and np.finfo(np.longdouble).nmant > 52:
        rounded = _round_longdouble(arr, fmt)
    else:
        rounded = round_float64_array(arr.astype(np.float64), fmt)  # any narrower float -> float64 is exact
    note = f"returned {arr.dtype} for {fmt.name} input; judged after rounding to {fmt.name}"
    return rounded, desc, note


def _round_longdouble(v: np.ndarray, fmt: Format) -> np.ndarray:
    """Round long doubles correctly into ``fmt``.

    hi = v rounded to float64 is correct for float64. For narrower formats,
    rounding hi again is correct except where hi lies exactly halfway between
    two values of ``fmt`` and the remainder lo = v - hi (exact) breaks the tie.
    """
    hi = v.astype(np.float64)
    if fmt is FLOAT64:
        return hi
    lo = (v - hi.astype(np.longdouble)).astype(np.float64)
    near = round_float64_array(hi, fmt).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        other = 2 * hi - near  # the neighbour on hi's other side when hi is a midpoint
        midpoint = np.isfinite(near) & (near != hi) & (round_float64_array(other, fmt).astype(np.float64) == other)
    flip = midpoint & (lo != 0) & (np.sign(lo) == np.sign(other - hi))
    return np.where(flip, other, near).astype(fmt.np_dtype)


def _warning_notes(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """Distinct warnings raised during the call, as notes (a few at most)."""
    notes: list[str] = []
    for w in caught:
        note = f"warned {w.category.__name__}: {_one_line(str(w.message))}"
        if note not in notes:
            notes.append(note)
    if len(notes) > _MAX_WARNING_NOTES:
        notes = notes[:_MAX_WARNING_NOTES] + [f"and {len(notes) - _MAX_WARNING_NOTES} more warnings"]
    return tuple(notes)


def _describe(exc: BaseException) -> str:
    """ "raised TypeName: first line of the message"; a message that cannot be had (its __str__
    raises) is said so, never lost: the failure stays the call's."""
    name = getattr(type(exc), "__name__", "an exception")
    try:
        message = _one_line(str(exc))
    except BaseException as inner:  # noqa: BLE001  (an exception's __str__ is the candidate's code)
        if _real_interrupt(inner):
            raise
        message = f"<its message could not be read: str() raised {getattr(type(inner), '__name__', '?')}>"
    return f"raised {name}: {message}" if message else f"raised {name}"


def _real_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's Ctrl-C rather than the candidate's own raise. In softaudit's
    worker process (which ignores SIGINT: the CLI decides when to stop) every KeyboardInterrupt is
    the candidate's and is judged like any exception; in process, Ctrl-C must still stop the run."""
    return isinstance(exc, KeyboardInterrupt) and not WORKER_PROCESS


WORKER_PROCESS = False
"""True in softaudit's worker process (set by softaudit.runner.worker), where SIGINT is ignored."""


def _one_line(text: str) -> str:
    """The first non-empty line of ``text``, shortened to a readable length."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


__all__ = [
    "OPS",
    "FUNCTION_NAMES",
    "POSITIONAL",
    "BACKENDS",
    "CandidateError",
    "candidate",
    "OpFunction",
    "Candidate",
    "CallRequest",
    "CallResult",
    "load_target",
    "builtin_names",
    "call",
    "call_op",
    "backward_mode",
    "accepted_keywords",
]
