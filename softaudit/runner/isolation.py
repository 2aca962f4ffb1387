"""Running candidates where their crashes cannot take the audit down.

Candidates execute in one worker process (``WorkerExecutor``) that loads every
target once and then serves many calls over a pipe. A segfault, an abort, an
exit, a hang past the timeout or a memory blow-up ends that worker, becomes
the result of the call that caused it, and the next call starts a fresh
worker. So does a CUDA error that leaves the worker's CUDA context unusable (a
device-side assert, an illegal memory access: softaudit.runner.cuda_errors): the
worker checks the GPU after every call, and the executor replaces it.
``InProcessExecutor`` runs the same protocol in the CLI's own process
(``--no-isolation``): faster to start, but unprotected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from softaudit.candidates.calling import CallRequest, CallResult, accepted_keywords, backward_mode, call
from softaudit.candidates.errors import CandidateImportError, CandidateUnavailable, describe_exception
from softaudit.candidates.loading import load_target
from softaudit.candidates.model import Candidate
from softaudit.ops import LINEAR_CROSS_ENTROPY, backward_name
from softaudit.options import DEFAULT_TIMEOUT
from softaudit.runner import cuda_errors
from softaudit.runner.worker_replies import (
    Benched,
    Called,
    CallFailed,
    ContextBroken,
    Imported,
    Loaded,
    LoadRefused,
    Reply,
)

LOSS_FUNCTIONS = ("cross_entropy", "cross_entropy_backward", LINEAR_CROSS_ENTROPY, backward_name(LINEAR_CROSS_ENTROPY))
"""The functions that take keywords, passed only when accepted."""

CONSECUTIVE_FAILURE_LIMIT = 3
"""After this many calls in a row of one function (a candidate's op in one direction) that hung or
took the worker down, its remaining calls are not made and their records say why (SKIP): a
function that hangs on every input would otherwise cost the whole --timeout on every case (96
records of a hanging softmax took 11 minutes at --timeout 5; at the default 300 s, days)."""

MIN_IMPORT_TIMEOUT = 60.0
"""Seconds a fresh worker may take to start and import a target (with its probe calls), at least:
starting Python and importing numpy and torch takes seconds on a busy machine, so a short
--timeout meant for calls (the test suite uses 2 s) must not fail the import itself."""


def default_memory_limit() -> int:
    """Half the machine's physical memory, in bytes: a runaway candidate fails, the machine survives."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 8 << 30


_HELD = np.empty((0, 0))
"""What a call request carries in place of the input the worker already holds (IsolatedExecutor._shipped)."""

@dataclass(frozen=True)
class CandidateInfo:
    """What the audit needs to know about a candidate that lives in a worker."""

    name: str
    target: str
    ops: tuple[str, ...]
    """Its forward ops, in OPS order."""
    backends: tuple[str, ...]
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per function: how it is called (row by row, the backend found by the probe...). Keys: the
    op for the forward, f"{op}_backward" for the backward pass (the explicit function's notes, or
    the forward's when the backward goes through autograd or jax.vjp)."""
    description: str = ""
    loaded_name: str = ""
    """The name the loader gave it: the key in the worker, even after the audit renames it."""
    backward: dict[str, str] = field(default_factory=dict)
    """op -> "function" (explicit backward function), "autograd" or "vjp" (jax.vjp), for the ops whose backward pass
    can be audited."""
    backward_missing: dict[str, str] = field(default_factory=dict)
    """op -> why its backward pass cannot be audited (a SKIP reason), for the other ops."""
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """"cross_entropy" / "cross_entropy_backward" / "linear_cross_entropy" / "linear_cross_entropy_backward"
    (when defined) -> the keywords it is passed when a case has them (``accepted_keywords``)."""
    probability_targets: dict[str, bool] = field(default_factory=dict)
    """Function name (op, or f"{op}_backward" for an explicit backward) -> whether it takes
    probability targets (False only for a cross-entropy function whose probability probe raised)."""

    @staticmethod
    def of(c: Candidate) -> CandidateInfo:
        functions = {**c.ops, **{f.op: f for f in c.backward.values()}}
        notes = {name: tuple(f.notes) for name, f in functions.items()}
        backward: dict[str, str] = {}
        missing: dict[str, str] = {}
        for op in c.ops:
            mode, reason = backward_mode(c, op)
            if mode is None:
                missing[op] = reason
            else:
                backward[op] = mode
                if mode in ("autograd", "vjp"):
                    notes[f"{op}_backward"] = tuple(c.ops[op].notes)
        return CandidateInfo(
            name=c.name, target=c.target, ops=tuple(c.ops),
            backends=tuple(sorted({f.backend for f in functions.values()})),
            notes=notes, description=c.description, loaded_name=c.name,
            backward=backward, backward_missing=missing,
            keywords={name: accepted_keywords(f) for name, f in functions.items()
                      if name in LOSS_FUNCTIONS},
            probability_targets={name: f.probability_targets for name, f in functions.items()},
        )


@dataclass(frozen=True)
class LoadFailure:
    """A target whose module raised or crashed while loading: a FAIL record, not bad input; or
    (``unavailable``) one that needs an optional package that is not installed: a SKIP record."""

    target: str
    reason: str
    unavailable: bool = False


class Executor(Protocol):
    """Loads targets and calls their ops; implementations differ in isolation only."""

    def load(self, target: str) -> list[CandidateInfo] | LoadFailure: ...

    def call(self, cand: CandidateInfo, request: CallRequest) -> CallResult: ...

    def bench(self, cand: CandidateInfo, op: str, direction: str, fmt_name: str, rows: int, n: int,
              seed: int) -> tuple[str, object]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------
# CUDA errors that outlive their call


RESTARTED_NOTE = "the CUDA context was unusable after this call: softaudit's worker was replaced by a fresh one"
"""The note of a call whose CUDA error ended its worker (softaudit.runner.cuda_errors)."""

IN_PROCESS_NOTE = ("the CUDA context is unusable after this call, and softaudit runs the candidates in its own "
                   "process (--no-isolation): later CUDA calls fail too")


def checked(result: CallResult, device: str | None = None) -> tuple[CallResult, cuda_errors.StickyError | None]:
    """``result`` after the GPU's queued work is waited for (where CUDA is in use), and whether the
    call left the CUDA context unusable. An error the synchronisation reports is the call's own (a
    kernel's asynchronous error): the result then fails with it, as raised by the candidate."""
    late = cuda_errors.synchronize(device)
    if late is not None and result.error is None:
        result = CallResult(None, f"{describe_exception(late)} (reported when the GPU was synchronised after the call)",
                            result.input_modified, result.output_dtype, result.notes, result.seconds, raised=True)
    text = result.error
    if late is not None and text is not None and str(late) not in text:
        text = f"{text}\n{late}"
    sticky = cuda_errors.diagnose(text, device)
    if sticky is not None:
        result.cuda_error = sticky.key
        result.output = None
        result.unsupported = None
    return result, sticky


def _with_cause(result: CallResult, sticky: cuda_errors.StickyError, note: str) -> CallResult:
    """The result of a call that left the CUDA context unusable: its error names the cause."""
    if sticky.cause not in (result.error or ""):
        result.error = f"{result.error}; {sticky.cause}, which leaves the CUDA context unusable"
    result.notes = tuple(result.notes) + (note,)
    return result


# --------------------------------------------------------------------------
# In the CLI's own process


class InProcessExecutor:
    """Calls candidates directly: no protection, no overhead (``--no-isolation``)."""

    def __init__(self, rowwise: bool = False, device: str | None = None) -> None:
        self.rowwise = rowwise
        self.device = device
        self._candidates: dict[tuple[str, str], Candidate] = {}
        self._preloaded: dict[str, list[Candidate]] = {}
        self._meter: Any = None  # a speed.SpeedMeter, made on the first bench (importing speed costs nothing else)

    def add(self, target: str, candidates: list[Candidate]) -> None:
        """Hold candidates built in this process (the Python API's callables) under ``target``."""
        self._preloaded[target] = list(candidates)

    def load(self, target: str) -> list[CandidateInfo] | LoadFailure:
        if target in self._preloaded:
            loaded = self._preloaded[target]
            for c in loaded:
                self._candidates[(c.target, c.name)] = c
            return [CandidateInfo.of(c) for c in loaded]
        try:
            loaded = load_target(target, rowwise=self.rowwise, device=self.device)
        except CandidateImportError as exc:
            return LoadFailure(target, str(exc))
        except CandidateUnavailable as exc:
            return LoadFailure(target, str(exc), unavailable=True)
        for c in loaded:
            self._candidates[(c.target, c.name)] = c
        return [CandidateInfo.of(c) for c in loaded]

    def call(self, cand: CandidateInfo, request: CallRequest) -> CallResult:
        result, sticky = checked(call(self._candidates[(cand.target, cand.loaded_name)], request), self.device)
        return result if sticky is None else _with_cause(result, sticky, IN_PROCESS_NOTE)

    def bench(self, cand: CandidateInfo, op: str, direction: str, fmt_name: str, rows: int, n: int,
              seed: int) -> tuple[str, object]:
        """A speed measurement (softaudit.runner.speed.bench) in this process."""
        from softaudit.runner.speed import SpeedMeter, bench

        self._meter = self._meter or SpeedMeter()
        return bench(self._meter, self._candidates[(cand.target, cand.loaded_name)], op, direction, fmt_name,
                     rows, n, seed)

    def close(self) -> None:
        self._candidates.clear()


# --------------------------------------------------------------------------
# In a worker process


def _describe_exit(code: int | None) -> str:
    """A dead worker's exit status in words: the signal's name where there is one."""
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"crashed with {name}{hint}"
    return f"exited the process with status {code}"


def _failed_call(error: str) -> CallResult:
    """The result of a call that produced nothing: the worker died, hung or could not run it."""
    return CallResult(output=None, error=error, input_modified=False, output_dtype="", notes=(), seconds=0.0)


class WorkerExecutor:
    """One worker process serving many calls; restarted after a crash or a hang."""

    def __init__(self, rowwise: bool = False, timeout: float = DEFAULT_TIMEOUT,
                 memory_limit: int | None = None, device: str | None = None) -> None:
        self.rowwise = rowwise
        self.device = device
        self.timeout = timeout
        self.import_timeout = max(timeout, MIN_IMPORT_TIMEOUT)
        self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._send_conn: Connection | None = None
        self._good: list[str] = []
        """Targets that loaded cleanly: the ones every fresh worker loads."""
        self._unprobed: set[str] = set()
        """Targets whose probe crashed or hung: loaded without probing."""
        self._lost: set[str] = set()
        """Targets a restarted worker failed to load again: their calls FAIL saying so."""
        self._fatal_streak: dict[tuple[str, str, str, str], tuple[int, str]] = {}
        """Per (target, candidate, op, direction): calls in a row that hung or crashed, and the last cause."""
        self.imported = False
        """Whether the last load request reported its module run (see _request)."""
        self._held_x: Any = None
        """The input array the running worker holds (the last one sent): the audit calls every
        candidate, op and direction of a unit on one input, so it crosses the pipe once per unit."""
        self._held_linear: Any = None
        """The linear_cross_entropy inputs the running worker holds, likewise."""

    # -- process management

    def _start(self) -> None:
        """Start ``python -m softaudit.runner.worker`` with a pipe each way (no fork, no re-import of __main__)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *sys.path[1:], env.get("PYTHONPATH", "")]).strip(os.pathsep)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "softaudit.runner.worker", str(to_child_r), str(from_child_w),
                 str(self.memory_limit), "1" if self.rowwise else "0", self.device or "auto"],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C goes to softaudit, which decides what to stop
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._proc = proc
        self._held_x = self._held_linear = None
        self._send_conn = Connection(to_child_w, readable=False)
        self._conn = Connection(from_child_r, writable=False)

    def _kill(self, grace: float = 0.0) -> int | None:
        """End the worker (after ``grace`` seconds for one that is already dying) and return its exit code."""
        proc, self._proc = self._proc, None
        for conn in (self._conn, self._send_conn):
            if conn is not None:
                conn.close()
        self._conn = self._send_conn = None
        if proc is None:
            return None
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        # The worker leads its own process group: end what the candidate started too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return code

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _ensure(self) -> None:
        if self._alive():
            return
        if self._proc is not None:
            self._kill()
            self.restarts += 1  # it died between calls
        self._start()
        for target in self._good:
            if target in self._lost:
                continue
            reply, _ = self._request(("load", target, target not in self._unprobed), self.import_timeout)
            if not isinstance(reply, Loaded):
                self._lost.add(target)  # flaky at import: its later calls say so
                if isinstance(reply, ContextBroken):
                    self._replace()
                if not self._alive():
                    self._start()

    def _request(self, message: tuple, timeout: float) -> tuple[Reply | None, str]:
        """Send one message, wait for its reply; (None, what went wrong) if the worker died or hung.
        A load's Imported on the way is noted in ``imported`` (the module ran; probing followed)."""
        assert self._conn is not None and self._send_conn is not None
        self.imported = False
        deadline = time.monotonic() + timeout
        try:
            self._send_conn.send(message)
            while self._conn.poll(max(0.0, deadline - time.monotonic())):
                reply = self._conn.recv()
                if isinstance(reply, Imported):
                    self.imported = True
                    continue
                return reply, ""
        except (EOFError, OSError):
            code = self._kill(grace=2.0)  # it closed the pipe: it is exiting, let it say how
            self.restarts += 1
            return None, _describe_exit(code)
        self._kill()
        self.restarts += 1
        return None, f"timed out after {timeout:g} s"

    # -- Executor

    def load(self, target: str) -> list[CandidateInfo] | LoadFailure:
        self._ensure()
        reply, failure = self._request(("load", target, True), self.import_timeout)
        if isinstance(reply, ContextBroken):
            failure = reply.why
            reply = None  # importing or probing it broke the CUDA context: as a crash
            self._replace()
        if reply is None and not self.imported:
            # The import itself crashed or hung (it never reported the module run): once is enough.
            return LoadFailure(target, f"{target}: {failure} while importing it")
        if reply is None:
            # One of the probe calls crashed or hung. Import again without probing: if that
            # works, the fault belongs to the calls and is recorded there.
            self._ensure()
            reply, again = self._request(("load", target, False), self.import_timeout)
            if isinstance(reply, ContextBroken):
                self._replace()
                return LoadFailure(target, f"{target}: {reply.why} while importing it")
            if reply is None:
                return LoadFailure(target, f"{target}: {again} while importing it")
            if isinstance(reply, Loaded):
                self._unprobed.add(target)
        if isinstance(reply, Loaded):
            self._good.append(target)
            return reply.candidates
        assert isinstance(reply, LoadRefused), reply
        if isinstance(reply.error, CandidateImportError):
            return LoadFailure(target, str(reply.error))
        if isinstance(reply.error, CandidateUnavailable):
            return LoadFailure(target, str(reply.error), unavailable=True)
        raise reply.error  # no ops, or a bad target: bad input

    def call(self, cand: CandidateInfo, request: CallRequest) -> CallResult:
        key = (cand.target, cand.loaded_name, request.op, request.direction)
        streak, cause = self._fatal_streak.get(key, (0, ""))
        if streak >= CONSECUTIVE_FAILURE_LIMIT:
            label = request.op if request.direction == "forward" else f"{request.op} backward"
            return dataclasses.replace(_failed_call(""), error=None, unsupported=(
                f"not run: {label} hung or crashed on {streak} calls in a row (last: {cause}); softaudit "
                f"stops calling a function after {CONSECUTIVE_FAILURE_LIMIT}"))
        self._ensure()
        if cand.target in self._lost:
            return _failed_call("could not be loaded again after a worker restart")
        reply, failure = self._request(("call", cand.target, cand.loaded_name, *self._shipped(request)), self.timeout)
        if reply is None:
            self._fatal_streak[key] = (streak + 1, failure)
            return _failed_call(failure)
        self._fatal_streak.pop(key, None)
        assert isinstance(reply, (Called, CallFailed)), reply
        result = reply.result if isinstance(reply, Called) else _failed_call(reply.error)
        sticky = reply.sticky
        if sticky is None:
            return result
        self._replace()
        result.cuda_error = sticky.key
        return _with_cause(result, sticky, RESTARTED_NOTE)

    def _shipped(self, request: CallRequest) -> tuple[CallRequest, bool]:
        """The request as sent, and whether the worker is to use the inputs it holds: the same input
        array (and linear_cross_entropy inputs: the weight is V x D) as the last ones sent to this
        worker process are not sent again."""
        if request.x is self._held_x and request.linear is self._held_linear:
            return dataclasses.replace(request, x=_HELD, linear=None), True
        self._held_x, self._held_linear = request.x, request.linear
        return request, False

    def _replace(self) -> None:
        """End a worker whose CUDA context is unusable; the next request starts a fresh one."""
        self._kill()
        self.restarts += 1

    def bench(self, cand: CandidateInfo, op: str, direction: str, fmt_name: str, rows: int, n: int,
              seed: int) -> tuple[str, object]:
        """A speed measurement in the worker (softaudit.runner.speed.bench): ("speed", figures) or
        ("speed-skip", reason). It may take MIN_REPEATS + WARMUP_CALLS + 1 calls' timeouts."""
        from softaudit.runner import timing

        self._ensure()
        if cand.target in self._lost:
            return "speed-skip", "could not be loaded again after a worker restart"
        budget = self.timeout * (timing.MIN_REPEATS + timing.WARMUP_CALLS + 1)
        reply, failure = self._request(("bench", cand.target, cand.loaded_name, op, direction, fmt_name, rows, n,
                                        seed), budget)
        if reply is None:
            return "speed-skip", failure
        assert isinstance(reply, Benched), reply
        kind, payload, sticky = reply.kind, reply.payload, reply.sticky
        if sticky is None:
            return kind, payload
        self._replace()
        said = f"{payload} " if kind == "speed-skip" else ""
        return "speed-skip", f"{said}({sticky.cause}, which leaves the CUDA context unusable: the worker was replaced)"

    def close(self) -> None:
        if self._alive() and self._send_conn is not None:
            with contextlib.suppress(OSError):
                self._send_conn.send(("stop",))
        self._kill(grace=2.0)


def make_executor(isolated: bool, rowwise: bool, timeout: float, memory_limit: int | None,
                  device: str | None = None) -> Executor:
    """The executor an audit uses: a worker process unless isolation is turned off (``device``:
    "cpu", "cuda" or None for auto, for torch candidates that name no device)."""
    if isolated:
        return WorkerExecutor(rowwise=rowwise, timeout=timeout, memory_limit=memory_limit, device=device)
    return InProcessExecutor(rowwise=rowwise, device=device)

