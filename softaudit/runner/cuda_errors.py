"""CUDA errors that leave a process's CUDA context unusable ("sticky" errors), in one place.

A kernel that trips a device-side assert (``F.cross_entropy`` on a CUDA tensor with a target out of
range), reads or writes out of bounds, or otherwise crashes on the GPU does not just fail its own
call: CUDA reports the error again on every later operation of the process, so every later call of
every candidate sharing the worker would fail with it ("cannot place the input on cuda: raised
AcceleratorError: CUDA error: device-side assert triggered", issue 19). Only a new process has a
working context again.

So after every candidate call the worker (and the in-process executor) runs ``check_call``:

1. where torch is imported and CUDA initialised (never importing torch or initialising CUDA for
   this), it synchronises, so that an asynchronous error is charged to the call that caused it;
2. it recognises a sticky error by CUDA's own texts (``STICKY_ERRORS``: torch's
   "CUDA error: device-side assert triggered", Triton's "Triton Error [CUDA]: an illegal memory
   access was encountered", ...) and, after any error while CUDA is initialised, by a trivial
   probe (``torch.zeros(1, device=...) + 1``, synchronised) that fails.

The worker executor then discards the worker and starts a fresh one (candidates reloaded), and the
call's record names the cause in plain words; no other record is charged (softaudit.runner.isolation).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

STICKY_ERRORS: tuple[tuple[str, str, str], ...] = (
    # (key, text CUDA reports (runtime and driver APIs alike, matched case-insensitively), plain words)
    ("device-side assert", "device-side assert triggered",
     "a kernel's device-side assert fired (an index out of range?)"),
    ("illegal memory access", "illegal memory access",
     "a kernel read or wrote memory out of bounds (illegal memory access)"),
    ("unspecified launch failure", "unspecified launch failure",
     "a kernel crashed on the GPU (unspecified launch failure)"),
    ("misaligned address", "misaligned address",
     "a kernel accessed memory at a misaligned address"),
    ("illegal instruction", "illegal instruction was encountered",
     "a kernel executed an illegal instruction"),
    ("hardware stack error", "hardware stack error",
     "a kernel overflowed its stack on the GPU (hardware stack error)"),
    ("invalid program counter", "invalid program counter",
     "a kernel jumped to an invalid program counter"),
    ("launch timeout", "launch timed out and was terminated",
     "a kernel ran past the display watchdog and was terminated"),
    ("ecc error", "uncorrectable ecc error",
     "the GPU reported an uncorrectable ECC memory error"),
)
"""The errors after which CUDA keeps failing every operation of the process: (key, the text CUDA
reports, the cause in plain words). The key is what ``CallResult.cuda_error`` holds."""

UNUSABLE_CONTEXT = "unusable context"
"""The key of an error not in STICKY_ERRORS after which the probe (a trivial CUDA operation) failed."""

DEVICE_ASSERT = "device-side assert"
"""The key of a device-side assert: on a cross-entropy case whose target is out of range, the
clear error the case asks for (torch's CUDA kernels assert where its CPU code raises IndexError)."""


@dataclass(frozen=True)
class StickyError:
    """A call's error that left the CUDA context unusable."""

    key: str
    """One of STICKY_ERRORS' keys, or UNUSABLE_CONTEXT."""
    cause: str
    """The cause in plain words."""


def sticky_error(text: str | None) -> StickyError | None:
    """The sticky CUDA error an error message reports, by CUDA's own texts (STICKY_ERRORS), or None."""
    if not text:
        return None
    lowered = text.lower()
    for key, pattern, cause in STICKY_ERRORS:
        if pattern in lowered:
            return StickyError(key, cause)
    return None


def cuda_in_use() -> bool:
    """Whether this process has imported torch and initialised CUDA (neither is done here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def synchronize(device: str | None = None) -> BaseException | None:
    """Wait for the GPU's queued work where CUDA is in use; the error it reports, or None.
    ``device``: "cuda:N" to wait for that device too (the current one always)."""
    if not cuda_in_use():
        return None
    import torch

    try:
        torch.cuda.synchronize()
        if device is not None and device.startswith("cuda:"):
            torch.cuda.synchronize(device)
    except Exception as exc:
        return exc
    return None


def probe(device: str | None = None) -> str | None:
    """Run a trivial CUDA operation (``torch.zeros(1) + 1`` on the device, synchronised) where CUDA
    is in use: None when it works, else what it raised ("raised TypeName: message")."""
    if not cuda_in_use():
        return None
    import torch

    try:
        where = device if device is not None and device.startswith("cuda") else f"cuda:{torch.cuda.current_device()}"
        value = (torch.zeros(1, device=where) + 1).sum()
        torch.cuda.synchronize(where)
        if float(value.item()) != 1.0:
            return "returned a wrong result"
    except Exception as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        return f"raised {type(exc).__name__}" + (f": {first}" if first else "")
    return None


def diagnose(error: str | None, device: str | None = None) -> StickyError | None:
    """Whether a call that failed with ``error`` (or, with None, one that did not) left the CUDA
    context unusable: by CUDA's texts, else, after an error while CUDA is in use, by the probe."""
    found = sticky_error(error)
    if found is not None or error is None:
        return found
    broken = probe(device)
    if broken is None:
        return None
    return StickyError(UNUSABLE_CONTEXT, f"a trivial CUDA operation {broken} after it")
