"""The worker process that runs candidates: ``python -m softaudit.worker R W MEMORY ROWWISE``.

It reads requests from pipe fd R and answers on pipe fd W (multiprocessing
Connection framing): ("load", target, probe), ("call", target, name,
request), the request a candidates.CallRequest, and ("bench", target, name, op,
direction, format, rows, n, seed): a speed measurement (softaudit.speed), so that
timing runs in the process that runs the audit's calls. It ignores Ctrl-C (the CLI
decides when to stop), limits its own address space, and sends what C code
prints to /dev/null so that junk cannot garble the report; Python-level prints
are captured and reported as notes.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from softaudit.candidates import (
    CallResult,
    Candidate,
    CandidateError,
    CandidateImportError,
    CandidateUnavailable,
    NoOpsError,
    call,
    load_target,
)
from softaudit.isolation import CandidateInfo
from softaudit.speed import SpeedMeter, bench


def _serve(requests: Connection, conn: Connection, rowwise: bool, memory_limit: int,
           device: str | None = None) -> None:
    """The worker's loop: load targets, answer calls, until told to stop or killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the CLI decides when to stop, not Ctrl-C
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    _silence_fds()
    candidates: dict[tuple[str, str], Candidate] = {}
    meter: SpeedMeter | None = None
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] == "load":
            conn.send(_load(message[1], rowwise, message[2], candidates, device))
        elif message[0] == "bench":
            _, target, name, *spec = message
            meter = meter or SpeedMeter()
            conn.send(bench(meter, candidates[(target, name)], *spec))
        elif message[0] == "call":
            _, target, name, request = message
            label = request.op if request.direction == "forward" else f"{request.op} backward"
            try:
                with _captured_output() as printed:
                    result = call(candidates[(target, name)], request)
            except Exception as exc:  # noqa: BLE001  (call catches the candidate's own errors)
                conn.send(("error", f"{label}: softaudit's worker failed: {type(exc).__name__}: {exc}"))
                continue
            if printed.getvalue().strip():
                result = _with_note(result, _printed_note(printed.getvalue()))
            try:
                conn.send(("result", result))
            except Exception as exc:  # noqa: BLE001  (an output that cannot be pickled)
                conn.send(("error", f"{label} returned something softaudit cannot transfer: "
                                    f"{type(exc).__name__}: {exc}"))


def _load(target: str, rowwise: bool, probe: bool,
          candidates: dict[tuple[str, str], Candidate], device: str | None = None) -> tuple[str, Any]:
    try:
        with _captured_output():
            loaded = load_target(target, rowwise=rowwise, probe=probe, device=device)
    except CandidateImportError as exc:
        return "import-failed", str(exc)
    except CandidateUnavailable as exc:
        return "unavailable", str(exc)
    except NoOpsError as exc:
        return "no-ops", str(exc)
    except CandidateError as exc:
        return "bad-target", str(exc)
    except MemoryError:
        return "import-failed", f"{target}: raised MemoryError while importing or probing it"
    except Exception as exc:  # noqa: BLE001  (a loader bug must still reach the user in one line)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return "import-failed", f"{target}: {type(exc).__name__} while loading ({last.filename}:{last.lineno}): {exc}"
    for c in loaded:
        candidates[(c.target, c.name)] = c
    return "loaded", [CandidateInfo.of(c) for c in loaded]


def _silence_fds() -> None:
    """Send what C code writes to stdout/stderr to /dev/null: junk must not garble the report."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


@contextlib.contextmanager
def _captured_output():  # type: ignore[no-untyped-def]
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
