"""The worker process that runs candidates: ``python -m softaudit.runner.worker R W MEMORY ROWWISE``.

It reads requests from pipe fd R and answers on pipe fd W (multiprocessing
Connection framing): ("load", target, probe), ("call", target, name,
request), the request a candidates.calling.CallRequest, and ("bench", target, name, op,
direction, format, rows, n, seed): a speed measurement (softaudit.runner.speed), so that
timing runs in the process that runs the audit's calls. It answers with the
dataclasses of softaudit.worker_replies. After every call and bench it checks the
GPU where CUDA is in use (isolation.checked): the reply's ``sticky`` is the
cuda_errors.StickyError that left the CUDA context unusable, or None, and a load
that left it so answers ContextBroken; the executor then replaces this process.
On a CPU with triton installed it sets TRITON_INTERPRET=1 before importing any candidate.
It ignores Ctrl-C (the CLI decides when to stop), limits its own address space,
and sends what C code prints to /dev/null so that junk cannot garble the report;
Python-level prints are captured and reported as notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from softaudit.candidates import errors as candidate_errors
from softaudit.candidates.calling import CallResult, call
from softaudit.candidates.errors import CandidateError, CandidateImportError, describe_exception
from softaudit.candidates.loading import interpret_triton_on_cpu, load_target
from softaudit.candidates.model import Candidate
from softaudit.runner import cuda_errors
from softaudit.runner.isolation import CandidateInfo, checked
from softaudit.runner.speed import SpeedMeter, bench
from softaudit.runner.worker_replies import Benched, Called, CallFailed, ContextBroken, Imported, Loaded, LoadRefused


def _serve(requests: Connection, conn: Connection, rowwise: bool, memory_limit: int,
           device: str | None = None) -> None:
    """The worker's loop: load targets, answer calls, until told to stop or killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the CLI decides when to stop, not Ctrl-C
    candidate_errors.WORKER_PROCESS = True  # so a KeyboardInterrupt here is the candidate's own
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    _silence_fds()
    interpret_triton_on_cpu(device)  # before any candidate is imported: Triton reached through a library too
    candidates: dict[tuple[str, str], Candidate] = {}
    meter: SpeedMeter | None = None
    held: tuple[Any, Any] = (None, None)  # the unit's input and linear inputs (IsolatedExecutor._shipped)
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] == "load":
            reply = _load(message[1], rowwise, message[2], candidates, device, lambda: conn.send(Imported()))
            sticky = _unusable(str(reply.error) if isinstance(reply, LoadRefused) else None, device)
            conn.send(reply if sticky is None else ContextBroken(f"left the CUDA context unusable: {sticky.cause}"))
        elif message[0] == "bench":
            _, target, name, *spec = message
            meter = meter or SpeedMeter()
            kind, payload = bench(meter, candidates[(target, name)], *spec)
            conn.send(Benched(kind, payload, _unusable(str(payload) if kind == "speed-skip" else None, device)))
        elif message[0] == "call":
            _, target, name, request, reuse = message
            held = held if reuse else (request.x, request.linear)  # sent once a unit (_shipped)
            request = _fresh(request, *held)
            label = request.op if request.direction == "forward" else f"{request.op} backward"
            try:
                with _captured_output() as printed:
                    result = call(candidates[(target, name)], request)
            except Exception as exc:
                text = f"{label}: softaudit's worker failed: {type(exc).__name__}: {exc}"
                conn.send(CallFailed(text, _unusable(text, device)))
                continue
            result, sticky = checked(result, device)
            if printed.getvalue().strip():
                result = _with_note(result, _printed_note(printed.getvalue()))
            try:
                conn.send(Called(result, sticky))
            except Exception as exc:
                conn.send(CallFailed(f"{label} returned something softaudit cannot transfer: "
                                     f"{type(exc).__name__}: {exc}", sticky))


def _fresh(request: Any, x: Any, linear: Any) -> Any:
    """The request with copies of the held inputs: a candidate writing into its input spoils no
    later call."""
    if linear is not None:
        linear = dataclasses.replace(linear, hidden=linear.hidden.copy(), weight=linear.weight.copy(),
                                     bias=None if linear.bias is None else linear.bias.copy(),
                                     target=linear.target.copy())
    return dataclasses.replace(request, x=x if x is None else x.copy(), linear=linear)


def _load(target: str, rowwise: bool, probe: bool, candidates: dict[tuple[str, str], Candidate],
          device: str | None = None, on_imported: Callable[[], None] | None = None) -> Loaded | LoadRefused:
    try:
        with _captured_output():
            loaded = load_target(target, rowwise=rowwise, probe=probe, device=device, on_imported=on_imported)
    except CandidateError as exc:
        return LoadRefused(exc)
    except MemoryError:
        return LoadRefused(CandidateImportError(f"{target}: raised MemoryError while importing or probing it"))
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return LoadRefused(CandidateImportError(
            f"{target}: {type(exc).__name__} while loading ({last.filename}:{last.lineno}): {exc}"))
    for c in loaded:
        candidates[(c.target, c.name)] = c
    return Loaded([CandidateInfo.of(c) for c in loaded])


def _unusable(error: str | None, device: str | None) -> cuda_errors.StickyError | None:
    """Whether the CUDA context is unusable after a load or a bench that answered ``error`` (None:
    no error): what the synchronisation then raises counts as the error (isolation.checked for calls)."""
    late = cuda_errors.synchronize(device)
    if late is not None:
        error = f"{error}\n{describe_exception(late)}" if error else describe_exception(late)
    return cuda_errors.diagnose(error, device)


def _silence_fds() -> None:
    """Send what C code writes to stdout/stderr to /dev/null: junk must not garble the report."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


@contextlib.contextmanager
def _captured_output():
    """Capture Python-level prints of the candidate, to report them as a note."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def _printed_note(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0].strip()
    if len(first) > 60:
        first = first[:57] + "..."
    return f"printed {len(lines)} line(s) during the call (first: {first!r})"


def _with_note(result: CallResult, note: str) -> CallResult:
    result.notes = tuple(result.notes) + (note,)
    return result



def main() -> None:
    read_fd, write_fd, memory_limit, rowwise = (int(a) for a in sys.argv[1:5])
    device = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "auto" else None
    _serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False), bool(rowwise), memory_limit,
           device)


if __name__ == "__main__":
    main()
