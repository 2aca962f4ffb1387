"""Kernel compilations: counted where the kernels are launched, reported in the results.

The Triton built-ins launch their kernels through ``softaudit.builtins.triton_math``, which
calls :func:`note` once per kernel variant (a kernel and its compile-time signature: the
constexpr arguments, the tensors' dtypes, num_warps and the integer specialisations Triton
makes) the first time it is launched in a process, with how long that launch took. On a GPU
that is Triton's JIT compilation (counted from Triton's own cache of compiled kernels when it
grows); under Triton's CPU interpreter nothing is compiled, and the variants are counted the
same way, marked ``interpreted``, with the first launch's time.

The audit collects the notes of its worker process through a file named by the environment
variable ``SOFTAUDIT_KERNEL_LOG`` (one JSON object a line, appended; a restarted worker
appends to the same file), and the results JSON gives each candidate's ``kernels``:
compilations, their seconds, and the variants per kernel (:func:`summary`). This module imports
nothing heavy: the report reads it without triton or torch.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

LOG_ENV = "SOFTAUDIT_KERNEL_LOG"

_lock = threading.Lock()
_noted: list[dict[str, Any]] = []


def note(target: str, kernel: str, signature: str, seconds: float, interpreted: bool) -> None:
    """One kernel variant launched for the first time in this process (compiled, on a GPU)."""
    entry = {"target": target, "kernel": kernel, "signature": signature, "seconds": round(seconds, 6),
             "interpreted": interpreted}
    with _lock:
        _noted.append(entry)
    path = os.environ.get(LOG_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass  # a count in the report is not worth failing a call for


def totals() -> tuple[int, float]:
    """(variants noted, their seconds) in this process so far."""
    with _lock:
        return len(_noted), sum(e["seconds"] for e in _noted)


def noted() -> list[dict[str, Any]]:
    """The notes made in this process (copies)."""
    with _lock:
        return [dict(e) for e in _noted]


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a log file (a missing file or a torn last line: what could be read)."""
    out: list[dict[str, Any]] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "target" in entry:
            out.append(entry)
    return out


def summary(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target: {"compilations": n, "seconds": s, "interpreted": bool, "variants": {kernel: n}}.
    Under the interpreter "compilations" counts distinct variants launched (nothing is compiled)."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        s = out.setdefault(e["target"], {"compilations": 0, "seconds": 0.0, "interpreted": False, "variants": {}})
        s["compilations"] += 1
        s["seconds"] = round(s["seconds"] + float(e.get("seconds", 0.0)), 6)
        s["interpreted"] = s["interpreted"] or bool(e.get("interpreted"))
        s["variants"][e["kernel"]] = s["variants"].get(e["kernel"], 0) + 1
    return out
