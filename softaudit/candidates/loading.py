"""Loading candidates from a ``.py`` file or a built-in (``builtin:NAME``): both are executed as a
fresh module, whose functions are then collected into candidates.

Failures become a one-line CandidateError naming the target. Triton code without a CUDA device
runs under Triton's CPU interpreter, patched here to round bfloat16 correctly: code that imports
triton itself, and code that reaches it through a library (Liger-Kernel's kernels).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from softaudit.candidates.collection import candidates_from_module
from softaudit.candidates.detection import cuda_available
from softaudit.candidates.errors import (
    CandidateError,
    CandidateImportError,
    CandidateUnavailable,
    describe_exception,
    one_line,
    real_interrupt,
)
from softaudit.candidates.model import Candidate

_BUILTIN_PREFIX = "builtin:"


def builtin_names() -> list[str]:
    """Names of the built-in candidates, as typed after ``builtin:``."""
    from softaudit.builtins import BUILTINS

    return list(BUILTINS)


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
    candidates = candidates_from_module(module, target, default_name, rowwise, probe, device=device)
    return [_noted(c, INTERPRETED_NOTE) for c in candidates] if interpreted else candidates


def _noted(cand: Candidate, note: str) -> Candidate:
    """``cand`` with ``note`` first in every function's notes (its Triton kernels run interpreted)."""
    ops = {op: dataclasses.replace(f, notes=(note, *f.notes)) for op, f in cand.ops.items()}
    backward = {op: dataclasses.replace(f, notes=(note, *f.notes)) for op, f in cand.backward.items()}
    return dataclasses.replace(cand, ops=types.MappingProxyType(ops), backward=types.MappingProxyType(backward))


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
        raise CandidateError(f"{display}: {one_line(str(exc))}") from None
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
    # Before the import, where a library's kernels are decorated; kept only if the file reaches triton.
    set_now = False if interpreted else interpret_triton_on_cpu(device)
    triton_before = "triton" in sys.modules
    imported = False
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
        imported = True
    except ModuleNotFoundError as exc:
        del sys.modules[modname]
        if exc.name and exc.name.partition(".")[0] in OPTIONAL_PACKAGES:
            package = exc.name.partition(".")[0]
            raise CandidateUnavailable(f"{display} needs {package}, which is not installed "
                                       f"({OPTIONAL_PACKAGES[package]})") from None
        if exc.name:
            raise CandidateError(f"{display} imports {exc.name!r}, which is not installed") from None
        raise CandidateError(f"{display}:{_line_in(exc, filename)}: {describe_exception(exc)}") from None
    except BaseException as exc:
        del sys.modules[modname]
        if real_interrupt(exc):
            raise
        raise CandidateImportError(f"{display}:{_line_in(exc, filename)}: {describe_exception(exc)} while importing") from None
    finally:
        if directory in sys.path:
            sys.path.remove(directory)
        if set_now and not imported:
            os.environ.pop("TRITON_INTERPRET", None)
    reached = (not triton_before and "triton" in sys.modules) or _reaches_triton(module)
    if not interpreted and reached and os.environ.get("TRITON_INTERPRET") == "1":
        interpreted = correct_interpreter_bfloat16() or True
    elif set_now and not reached:
        os.environ.pop("TRITON_INTERPRET", None)  # a file without Triton leaves the process as it was
    return module, interpreted


def interpret_triton_on_cpu(device: str | None = None) -> bool:
    """Set TRITON_INTERPRET=1 where Triton is installed and no CUDA device is used (``device`` is
    "cpu", or None with no GPU), unless the user set TRITON_INTERPRET: so that kernels reached
    through a library (imported without ``import triton`` in the candidate's file) run on the CPU
    instead of failing with "0 active drivers". The worker calls it before importing any
    candidate; loading calls it before each import (and unsets it again after a file that does
    not reach triton). Returns whether it set the variable now."""
    if os.environ.get("TRITON_INTERPRET", ""):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    if device != "cpu" and cuda_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


_NOT_TRITON_USERS = frozenset({"softaudit", "builtins", "torch", "numpy", "ml_dtypes", "scipy", "mpmath", "typing",
                               "collections", "functools", "math", "os", "sys"})
"""Packages whose modules are never taken as Triton code reached through a library (torch's own
Triton use is Inductor's, compiled for a GPU)."""


def _reaches_triton(module: types.ModuleType) -> bool:
    """Whether a package the module refers to (a module, class or function among its globals, by
    its top-level package) has a loaded module that imports triton: the candidate reaches Triton
    kernels through a library, as a file calling Liger-Kernel does. For a library imported by an
    earlier target, where sys.modules cannot tell who brought triton in."""
    packages = set()
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name:
            packages.add(name.partition(".")[0])
    packages -= _NOT_TRITON_USERS | {"triton", module.__name__.partition(".")[0]}
    for name, loaded in list(sys.modules.items()):
        if loaded is None or name.partition(".")[0] not in packages:
            continue
        for value in list(vars(loaded).values()):
            if isinstance(value, types.ModuleType) and value.__name__.partition(".")[0] == "triton":
                return True
    return False


OPTIONAL_PACKAGES = {"triton": "pip install 'softaudit[triton]'", "cupy": "pip install cupy-cuda12x",
                     "scipy": "pip install 'softaudit[scipy]'", "liger_kernel": "pip install 'softaudit[liger]'",
                     "jax": "pip install 'softaudit[jax]'", "optax": "pip install 'softaudit[jax]'"}
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
    leaving every other conversion, and explicit rounding modes, to Triton; and it computes
    arithmetic kept in bfloat16 on the values, not on their bit patterns
    (``_correct_bfloat16_arithmetic``). Without
    triton, or with an interpreter that no longer has the function, nothing is changed."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except Exception:
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
    _correct_bfloat16_arithmetic(interpreter, tl)
    return True


def _bf16_bits(result: Any) -> Any:
    """A result computed in ml_dtypes' bfloat16 back into the interpreter's uint16 storage (other
    results, such as a comparison's booleans, as they are)."""
    result = np.asarray(result)
    return result.view(np.uint16) if result.dtype == ml_dtypes.bfloat16 else result


def _on_bf16(op: Any) -> Any:
    """A numpy reduction (``np.nanmax``, ``np.nanargmax``) applied to uint16 storage as bfloat16."""
    if op is None:
        return None
    return lambda a, **kw: _bf16_bits(op(a.view(ml_dtypes.bfloat16), **kw))


def _correct_bfloat16_arithmetic(interpreter: Any, tl: Any) -> None:
    """Make Triton's interpreter compute on bfloat16 values instead of their bit patterns.

    The interpreter stores bfloat16 as uint16 and applies numpy's ufuncs to that storage: a
    bfloat16 product (``dy * y``, which Triton keeps in bfloat16), exp, comparison, fma, sum or max
    multiplies or compares the integers (Liger-Kernel 0.8.5's bfloat16 softmax backward came out
    as NaN and 1e38). A GPU computes each such operation in bfloat16, rounded to nearest; this
    does it through ml_dtypes' bfloat16 (the float32 result rounded to nearest-even), the sum in
    numpy's pairwise order with every partial sum rounded to bfloat16."""
    builder = interpreter.InterpreterBuilder
    if getattr(builder.binary_op, "softaudit_corrected", False):
        return

    def bf16(handle: Any) -> bool:
        return handle.dtype.scalar == tl.bfloat16 and handle.data.dtype == np.uint16

    def view(data: Any) -> Any:
        return data.view(ml_dtypes.bfloat16)

    original_binary, original_unary, original_fma = builder.binary_op, builder.unary_op, builder.create_fma

    def binary_op(self: Any, lhs: Any, rhs: Any, op: Any) -> Any:
        if bf16(lhs) and bf16(rhs):
            return original_binary(self, lhs, rhs, lambda a, b: _bf16_bits(op(view(a), view(b))))
        return original_binary(self, lhs, rhs, op)

    def unary_op(self: Any, arg: Any, op: Any) -> Any:
        if bf16(arg):
            return original_unary(self, arg, lambda a: _bf16_bits(op(view(a))))
        return original_unary(self, arg, op)

    def create_fma(self: Any, x: Any, y: Any, z: Any) -> Any:
        if bf16(x) and bf16(y) and bf16(z):
            exact = np.add(np.multiply(view(x.data), view(y.data), dtype=np.float64), view(z.data), dtype=np.float64)
            return interpreter.TensorHandle(_bf16_bits(exact.astype(np.float32).astype(ml_dtypes.bfloat16)),
                                            z.dtype.scalar)
        return original_fma(self, x, y, z)

    reduce_ops = interpreter.ReduceOps
    original_sum, original_min_max = reduce_ops.sum, reduce_ops.min_max

    def reduce_sum(self: Any, input: Any) -> Any:
        if bf16(input.handle):
            total = np.sum(view(input.handle.data), axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(_bf16_bits(total), input.dtype)
        return original_sum(self, input)

    def min_max(self: Any, input: Any, val_reduce_op: Any, idx_reduce_op: Any = None) -> Any:
        value = input[0] if isinstance(input, tuple) else input
        if bf16(value.handle):
            return original_min_max(self, input, _on_bf16(val_reduce_op), _on_bf16(idx_reduce_op))
        return original_min_max(self, input, val_reduce_op, idx_reduce_op)

    for fn in (binary_op, unary_op, create_fma, reduce_sum, min_max):
        setattr(fn, "softaudit_corrected", True)  # noqa: B010 (a function attribute mypy cannot see)
    builder.binary_op, builder.unary_op, builder.create_fma = binary_op, unary_op, create_fma
    reduce_ops.sum, reduce_ops.min_max = reduce_sum, min_max


def _line_in(exc: BaseException, filename: str) -> int | str:
    """The line of ``filename`` that was running when ``exc`` was raised."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines and lines[-1] is not None else "?"
