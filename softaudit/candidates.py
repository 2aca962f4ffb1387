"""Candidates: loading the implementations under audit and calling them safely.

A *candidate* is one implementation of some of the ops ``softmax``,
``log_softmax`` and ``logsumexp`` (DESIGN §7). It comes from a Python file
(``impl.py``) or a built-in (``builtin:NAME``); both are loaded the same way,
from a file executed as a fresh module.

Loading decides, for every op function and without boilerplate in the user's
file: the backend (numpy arrays or torch tensors) and device, whether a
``dim``/``axis`` keyword is passed, and whether the function handles 2-D input
or must be called row by row. The static guess is confirmed by a probe call on
a tiny 2×3 float32 input; see docs/candidates.md for the rules.

``call_op`` then runs one op on one input: a fresh copy for every call, the
input checked bit for bit afterwards, exceptions and odd outputs turned into a
one-line ``error``, and outputs in a wider format rounded exactly (once) into
the input's format.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import itertools
import os
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ml_dtypes
import numpy as np

from softaudit.formats import FLOAT32, FLOAT64, Format, format_of_dtype, round_float64_array

from softaudit.ops import OPS
"""The ops a candidate may implement, in audit order."""

BACKENDS = ("numpy", "torch")
"""The array libraries a candidate can be called with."""

_MARK = "__softaudit_candidate__"
_BUILTIN_PREFIX = "builtin:"
_TORCH_ROOTS = frozenset({"torch", "triton"})
_NUMPY_ROOTS = frozenset({"numpy", "scipy", "ml_dtypes"})
_MAX_MESSAGE = 300
_MAX_WARNING_NOTES = 3

_F = TypeVar("_F", bound=Callable[..., Any])


class CandidateError(Exception):
    """A target cannot be loaded; the message is one line that names the target."""


class CandidateImportError(CandidateError):
    """The target's module raised while it was being imported (not a missing module).

    That is a fault of the candidate, not of the command line: the audit records
    it as a FAIL and goes on with the other targets.
    """


class NoOpsError(CandidateError):
    """The file defines none of the ops (a helper module in an audited directory, say)."""


# --------------------------------------------------------------------------
# The decorator


@dataclass(frozen=True)
class _Mark:
    """What one ``@candidate(...)`` says about the function it decorates."""

    name: str | None
    op: str
    backend: str | None
    device: str | None
    rowwise: bool


def candidate(
    name: str | Callable[..., Any] | None = None,
    *,
    op: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    rowwise: bool = False,
) -> Any:
    """Mark a function as (one op of) a named candidate; returns it unchanged.

    ``name`` defaults to the file's stem, ``op`` to the function's name. Give
    ``backend`` ("numpy" or "torch") and ``device`` to skip detection (a
    device implies torch); ``rowwise=True`` audits a 1-D function row by row.
    Several decorators may be stacked to put one function in several
    candidates. Bare ``@candidate`` works too. Mistakes raise at decoration
    time, so they surface as a load error naming the line.
    """
    if callable(name):
        return candidate()(name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"@candidate: name must be a non-empty string, not {name!r}")
    if op is not None and op not in OPS:
        raise ValueError(f"@candidate: op must be one of {', '.join(OPS)}, not {op!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"@candidate: backend must be 'numpy' or 'torch', not {backend!r}")
    if device is not None and backend == "numpy":
        raise ValueError("@candidate: device applies to torch only, not to backend='numpy'")

    def mark(fn: _F) -> _F:
        fn_op = op if op is not None else getattr(fn, "__name__", None)
        if fn_op not in OPS:
            raise ValueError(
                f"@candidate: {getattr(fn, '__name__', fn)!r} is not named after an op; "
                f"pass op= (one of {', '.join(OPS)})"
            )
        marks = _marks_of(fn) + (_Mark(name, fn_op, backend, device, bool(rowwise)),)
        try:
            setattr(fn, _MARK, marks)
        except (AttributeError, TypeError):
            raise TypeError(f"@candidate cannot mark {fn!r}; wrap it in a def") from None
        return fn

    return mark


def _marks_of(obj: object) -> tuple[_Mark, ...]:
    """The marks stored on ``obj`` (read from its ``__dict__`` only, so that
    objects answering every attribute, such as mocks, are not mistaken)."""
    try:
        marks = vars(obj).get(_MARK, ())
    except TypeError:
        return ()
    return marks if isinstance(marks, tuple) else ()


# --------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class OpFunction:
    """One op of a candidate, with everything needed to call it."""

    op: str
    """One of OPS."""
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


@dataclass(frozen=True)
class Candidate:
    """A named implementation of some of the ops."""

    name: str
    """Display name: the decorator's name, the file stem, or "builtin:NAME"."""
    target: str
    """Where it came from: the path as given, or "builtin:NAME"."""
    ops: Mapping[str, OpFunction]
    """The ops it implements, in OPS order."""
    description: str = ""
    """First line of its docstring (the functions' for decorated candidates, else the module's)."""


@dataclass
class CallResult:
    """The outcome of one ``call_op``."""

    output: np.ndarray | None
    """Output in the input's format: (rows, n), or (rows,) for logsumexp; None on error."""
    error: str | None
    """One line when the call failed: an exception, a wrong shape, a non-array."""
    input_modified: bool
    """True when the candidate changed its input (compared bit for bit)."""
    output_dtype: str
    """What the candidate returned, e.g. "float32", "torch.float64 on cpu", "list"."""
    notes: tuple[str, ...]
    """Remarks: a different output format rounded into the input's, warnings raised."""
    seconds: float
    """Wall time of the candidate's own call(s), device synchronised."""


def builtin_names() -> list[str]:
    """Names of the built-in candidates, as typed after ``builtin:``."""
    from softaudit.builtins import BUILTINS

    return list(BUILTINS)


# --------------------------------------------------------------------------
# Loading


def load_target(target: str, rowwise: bool = False, probe: bool = True) -> list[Candidate]:
    """Load the candidates of a ``.py`` file or of ``builtin:NAME``.

    ``rowwise=True`` audits every op row by row. ``probe=False`` skips the probe
    calls and keeps the static guesses (the worker's retry after a probe call
    crashed or hung, so that the fault is charged to the audit's own calls).
    Raises CandidateError with a one-line message when the target cannot be used.
    """
    if target.startswith(_BUILTIN_PREFIX):
        from softaudit.builtins import BUILTINS, builtin_path

        key = target[len(_BUILTIN_PREFIX):]
        if key not in BUILTINS:
            known = ", ".join(BUILTINS)
            raise CandidateError(f"unknown built-in {target!r} (known: {known})")
        path, default_name = builtin_path(key), target
    else:
        path = Path(target)
        if not path.exists():
            raise CandidateError(f"{target}: no such file")
        if path.is_dir():
            raise CandidateError(f"{target}: is a directory, not a .py file")
        if path.suffix != ".py":
            raise CandidateError(f"{target}: not a .py file (give a .py path or builtin:NAME)")
        default_name = path.stem
    module = _exec_file(path, target)
    return _collect(module, target, default_name, rowwise, probe)


_module_counter = itertools.count()


def _exec_file(path: Path, display: str) -> types.ModuleType:
    """Execute ``path`` as a fresh module (no bytecode cache written next to it).

    The file's directory is on sys.path while it runs, so it can import its
    siblings. Every failure becomes a CandidateError naming ``display``.
    """
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise CandidateError(f"{display}: cannot read: {exc.strerror or exc}") from None
    filename = str(path.resolve())
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CandidateError(f"{display}:{exc.lineno}: {type(exc).__name__}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes in the source
        raise CandidateError(f"{display}: {_one_line(str(exc))}") from None

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
        if exc.name:
            raise CandidateError(f"{display} imports {exc.name!r}, which is not installed") from None
        raise CandidateError(f"{display}:{_line_in(exc, filename)}: {_describe(exc)}") from None
    except (Exception, SystemExit) as exc:
        del sys.modules[modname]
        raise CandidateImportError(f"{display}:{_line_in(exc, filename)}: {_describe(exc)} while importing") from None
    finally:
        if directory in sys.path:
            sys.path.remove(directory)
    return module


def _line_in(exc: BaseException, filename: str) -> int | str:
    """The line of ``filename`` that was running when ``exc`` was raised."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines and lines[-1] is not None else "?"


def _collect(module: types.ModuleType, target: str, default_name: str, rowwise: bool,
             probe: bool = True) -> list[Candidate]:
    """Group a loaded module's op functions into candidates and resolve each op."""
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
        for op in OPS:
            if op in namespace:
                if not callable(namespace[op]):
                    kind = type(namespace[op]).__name__
                    raise CandidateError(f"{target}: {op} is a {kind}, not a function")
                group[op] = (namespace[op], None)
        if not group:
            raise NoOpsError(f"{target} defines none of {', '.join(OPS)}")
        groups[default_name] = group

    module_roots = _module_roots(module)
    candidates = []
    for name, group in groups.items():
        ops = {
            op: _resolve(op, *group[op], module_roots=module_roots, force_rowwise=rowwise, target=target,
                         probe=probe)
            for op in OPS
            if op in group
        }
        fn_docs = [_first_line(getattr(fn, "__doc__", None)) for fn, mark in group.values() if mark]
        description = next((d for d in fn_docs if d), module_doc)
        candidates.append(Candidate(name, target, types.MappingProxyType(ops), description))
    return candidates


def _first_line(doc: str | None) -> str:
    """First non-empty line of a docstring, or ""."""
    if not isinstance(doc, str):
        return ""
    return next((line.strip() for line in doc.strip().splitlines() if line.strip()), "")


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


# --------------------------------------------------------------------------
# Backend detection (probe)

_PROBE = np.array([[1.0, 2.0, 3.5], [-1.0, 0.5, 0.25]], dtype=np.float32)


def _probe_reference(op: str) -> np.ndarray:
    """The op on the probe input in float64 (the input values are exact)."""
    x = _PROBE.astype(np.float64)
    lse = np.log(np.exp(x).sum(axis=-1))
    if op == "softmax":
        return np.exp(x - lse[:, None])
    if op == "log_softmax":
        return x - lse[:, None]
    return lse


def _probe_quality(result: CallResult, op: str) -> int:
    """2: right shape and values; 1: right shape, wrong values; 0: failed."""
    if result.error is not None or result.output is None:
        return 0
    out = result.output.astype(np.float64)
    ok = np.all(np.isfinite(out)) and np.allclose(out, _probe_reference(op), rtol=2e-2, atol=1e-3)
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


def _check_signature(fn: Callable[..., Any], op: str, target: str) -> None:
    """The contract passes x and, to a ``dim``/``axis`` parameter, -1: any other
    required parameter makes the function uncallable, said in one line."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # C functions and the like: the probe call tells
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    takes_x = any(p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.VAR_POSITIONAL) for p in params)
    if not takes_x:
        raise CandidateError(f"{target}: {op}{sig} takes no positional parameter for the input x")
    first = next(p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.VAR_POSITIONAL))
    for p in params:
        by_keyword = p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        if p is first or (p.name in ("dim", "axis") and by_keyword) or p.kind in (kinds.VAR_POSITIONAL,
                                                                                      kinds.VAR_KEYWORD):
            continue
        if p.default is kinds.empty:
            raise CandidateError(f"{target}: {op}{sig}: unexpected required parameter {p.name!r} "
                                 f"(the contract passes only x, and -1 to a dim or axis parameter)")


def _resolve(
    op: str,
    fn: Callable[..., Any],
    mark: _Mark | None,
    *,
    module_roots: set[str],
    force_rowwise: bool,
    target: str,
    probe: bool = True,
) -> OpFunction:
    """Decide backend, device, keyword and row mode for one op function.

    The static guess (or the decorator) comes first; a probe call on a 2×3
    float32 input confirms it. Alternatives (the other backend, CUDA, row by
    row, a dim/axis keyword for callables without a signature) are tried only
    when the first choice does not give the right values, and the first that
    does is kept, with a note saying why.
    """
    _check_signature(fn, op, target)
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
        raise CandidateError(f"{target}: {op} needs torch, which is not installed")
    if backend == "torch" and device is not None:
        _check_device(device, target)

    dim_kw, signature_known = _dim_keyword(fn)
    if not probe:
        dev = device or "cpu"
        return OpFunction(op, fn, backend, dev, rowwise, dim_kw,
                          ("not probed: a probe call crashed or hung, so the backend is the static guess",))
    dim_options: list[str | None] = [dim_kw] if signature_known else [None, "dim", "axis"]
    row_options = [True] if rowwise else [False, True]
    backends = [backend]
    if not explicit_backend:
        other = "numpy" if backend == "torch" else "torch"
        if other == "numpy" or _torch_available():
            backends.append(other)

    attempts: list[tuple[OpFunction, CallResult, int]] = []
    for be in backends:
        for dev in _device_options(be, device, uses_triton):
            for rw in row_options:
                for kw in dim_options:
                    opfn = OpFunction(op, fn, be, dev, rw, kw)
                    result = call_op(opfn, _PROBE, FLOAT32)
                    attempts.append((opfn, result, _probe_quality(result, op)))
                    if attempts[-1][2] == 2:
                        return _with_notes(attempts, rowwise, signature_known)
    return _with_notes(attempts, rowwise, signature_known)


def _device_options(backend: str, device: str | None, uses_triton: bool) -> list[str]:
    """Devices to try for a backend: the requested one, else CPU then CUDA
    (CUDA first for triton code, unless TRITON_INTERPRET runs it on the CPU)."""
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
    if uses_triton and os.environ.get("TRITON_INTERPRET") != "1":
        return ["cuda", "cpu"]
    return ["cpu", "cuda"]


def _with_notes(
    attempts: list[tuple[OpFunction, CallResult, int]], requested_rowwise: bool, signature_known: bool
) -> OpFunction:
    """Keep the first attempt that gave the right values (else the first that
    gave the right shape, else the very first) and note how it departs from
    the static guess."""
    first, first_result, _ = attempts[0]
    best = max(range(len(attempts)), key=lambda i: (attempts[i][2], -i))
    opfn, _, quality = attempts[best] if attempts[best][2] else attempts[0]
    notes: list[str] = []
    if quality == 0:
        notes.append(f"the 2×3 float32 probe failed: {first_result.error}")
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
    return OpFunction(opfn.op, opfn.fn, opfn.backend, opfn.device, opfn.rowwise, opfn.dim_kw, tuple(notes))


def _probe_failure(result: CallResult) -> str:
    """How a probe attempt went wrong, phrased to follow "the probe ..."."""
    if result.error is not None:
        return result.error
    return "gave wrong values on a 2×3 input (a reduction over more than the last axis?)"


# --------------------------------------------------------------------------
# Calling


def call_op(opfn: OpFunction, x: np.ndarray, fmt: Format) -> CallResult:
    """Run one op of a candidate on a 2-D input ``x`` of format ``fmt``.

    The candidate gets a fresh copy (numpy array or torch tensor on its
    device); nothing it raises or returns escapes as an exception.
    """
    x = _as_format(np.asarray(x), fmt)
    if x.ndim != 2:
        raise ValueError(f"call_op needs a 2-D input, got shape {x.shape}")
    rows, n = x.shape
    pristine = x.view(fmt.uint_dtype).copy()
    kwargs = {opfn.dim_kw: -1} if opfn.dim_kw else {}

    fresh = np.array(x, copy=True, order="C")
    try:
        arg = _to_torch(fresh, fmt, opfn.device) if opfn.backend == "torch" else fresh
    except Exception as exc:  # noqa: BLE001  (an unusable device)
        return CallResult(None, f"cannot place the input on {opfn.device}: {_describe(exc)}", False, "", (), 0.0)

    raw: list[Any] = []
    error: str | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            if opfn.rowwise:
                for row in arg:
                    raw.append(opfn.fn(row, **kwargs))
            else:
                raw.append(opfn.fn(arg, **kwargs))
            _synchronize(opfn)
        except (Exception, SystemExit) as exc:
            where = f"row {len(raw)}: " if opfn.rowwise else ""
            error = where + _describe(exc)
        seconds = time.perf_counter() - start

    notes = _warning_notes(caught)
    try:
        modified = _input_modified(arg, pristine, fmt)
    except Exception as exc:  # noqa: BLE001  (e.g. a device error surfacing late)
        return CallResult(None, error or f"input could not be read back: {_describe(exc)}", True, "", notes, seconds)
    if error is not None:
        return CallResult(None, error, modified, "", notes, seconds)

    if opfn.rowwise:
        row_shape: tuple[int, ...] = (n,) if opfn.op != "logsumexp" else ()
        parts, descs, extra = [], [], []
        for i, item in enumerate(raw):
            try:
                part, desc, note = _normalise(item, row_shape, fmt, allow=[(1,)] if not row_shape else [])
            except Exception as exc:  # noqa: BLE001  (_OutputError, or a failure reading a foreign array)
                problem = f"row {i}: {_output_problem(exc, item)}"
                return CallResult(None, problem, modified, _safe_desc(item), notes, seconds)
            parts.append(part)
            descs.append(desc)
            if note and note not in extra:
                extra.append(note)
        out = np.stack(parts) if parts else np.empty((0,) + row_shape, dtype=fmt.np_dtype)
        return CallResult(out, None, modified, descs[0] if descs else "", notes + tuple(extra), seconds)

    expected = (rows, n) if opfn.op != "logsumexp" else (rows,)
    allow = [(rows, 1)] + ([()] if rows == 1 else []) if opfn.op == "logsumexp" else []
    try:
        out, desc, note = _normalise(raw[0], expected, fmt, allow=allow)
    except Exception as exc:  # noqa: BLE001  (_OutputError, or a failure reading a foreign array)
        return CallResult(None, _output_problem(exc, raw[0]), modified, _safe_desc(raw[0]), notes, seconds)
    return CallResult(out, None, modified, desc, notes + ((note,) if note else ()), seconds)


class _OutputError(Exception):
    """An output that cannot be judged; the message reads "returned ..."."""


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


def _to_torch(x: np.ndarray, fmt: Format, device: str) -> Any:
    """A torch tensor holding exactly the bits of ``x`` (bfloat16 through a uint16 view)."""
    import torch

    if fmt.name == "bfloat16":
        tensor = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device == "cpu" else tensor.to(device)


_TORCH_INT_OF_WIDTH = {2: "int16", 4: "int32", 8: "int64"}


def _torch_bits(tensor: Any) -> np.ndarray:
    """The raw bits of a float tensor as a numpy unsigned array (on the CPU)."""
    import torch

    t = tensor.detach().cpu().contiguous()
    as_int = t.view(getattr(torch, _TORCH_INT_OF_WIDTH[t.element_size()])).numpy()
    return as_int.view(f"u{t.element_size()}")


def _input_modified(arg: Any, pristine: np.ndarray, fmt: Format) -> bool:
    """Whether the candidate changed its input's shape, dtype or any bit."""
    if isinstance(arg, np.ndarray):
        if arg.dtype != fmt.np_dtype or arg.shape != pristine.shape:
            return True
        return not np.array_equal(arg.view(fmt.uint_dtype), pristine)
    if arg.dtype != fmt.torch_dtype or tuple(arg.shape) != pristine.shape:
        return True
    return not np.array_equal(_torch_bits(arg), pristine)


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
    raw: object, expected: tuple[int, ...], fmt: Format, allow: Iterable[tuple[int, ...]] = ()
) -> tuple[np.ndarray, str, str | None]:
    """(output in ``fmt`` with shape ``expected``, description, rounding note).

    Shapes in ``allow`` (e.g. (rows, 1) for logsumexp) are accepted and
    reshaped. Raises _OutputError for anything that cannot be judged.
    """
    arr, desc = _to_array(raw)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise _OutputError(f"returned a {desc} of non-numbers") from None
    if not _is_float_dtype(arr.dtype):
        raise _OutputError(f"returned {arr.dtype} values, not floating point")
    if arr.shape != expected:
        if arr.shape not in list(allow):
            raise _OutputError(f"returned shape {arr.shape} but {expected} was expected")
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
    """ "raised TypeName: first line of the message"."""
    message = _one_line(str(exc))
    return f"raised {type(exc).__name__}: {message}" if message else f"raised {type(exc).__name__}"


def _one_line(text: str) -> str:
    """The first non-empty line of ``text``, shortened to a readable length."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


__all__ = [
    "OPS",
    "BACKENDS",
    "CandidateError",
    "candidate",
    "OpFunction",
    "Candidate",
    "CallResult",
    "load_target",
    "builtin_names",
    "call_op",
]
