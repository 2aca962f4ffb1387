"""Loading candidates from a ``.py`` file or a built-in (``builtin:NAME``): both are executed as a
fresh module, whose functions are then collected into candidates.

Failures become a one-line CandidateError naming the target. Triton code without a CUDA device
runs under Triton's CPU interpreter, patched here to round bfloat16 correctly.
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
        raise CandidateError(f"{display}:{_line_in(exc, filename)}: {describe_exception(exc)}") from None
    except BaseException as exc:
        del sys.modules[modname]
        if real_interrupt(exc):
            raise
        raise CandidateImportError(f"{display}:{_line_in(exc, filename)}: {describe_exception(exc)} while importing") from None
    finally:
        if directory in sys.path:
            sys.path.remove(directory)
    return module, interpreted


OPTIONAL_PACKAGES = {"triton": "pip install 'softaudit[triton]'", "cupy": "pip install cupy-cuda12x",
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
    leaving every other conversion, and explicit rounding modes, to Triton. Without
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
    return True


def _line_in(exc: BaseException, filename: str) -> int | str:
    """The line of ``filename`` that was running when ``exc`` was raised."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return lines[-1] if lines and lines[-1] is not None else "?"
