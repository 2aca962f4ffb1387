"""What goes wrong with a candidate, in words: the load errors, and any exception said in one line.

Shared by loading (errors naming the target), calling (a candidate's raise becomes a result's
``error``) and the worker (which sets WORKER_PROCESS).
"""

from __future__ import annotations

from softaudit.errors import BadInput

_MAX_MESSAGE = 300

class CandidateError(BadInput):
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


def describe_exception(exc: BaseException) -> str:
    """ "raised TypeName: first line of the message"; a message that cannot be had (its __str__
    raises) is said so, never lost: the failure stays the call's."""
    name = getattr(type(exc), "__name__", "an exception")
    try:
        message = one_line(str(exc))
    except BaseException as inner:
        if real_interrupt(inner):
            raise
        message = f"<its message could not be read: str() raised {getattr(type(inner), '__name__', '?')}>"
    return f"raised {name}: {message}" if message else f"raised {name}"


def real_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's Ctrl-C rather than the candidate's own raise. In softaudit's
    worker process (which ignores SIGINT: the CLI decides when to stop) every KeyboardInterrupt is
    the candidate's and is judged like any exception; in process, Ctrl-C must still stop the run."""
    return isinstance(exc, KeyboardInterrupt) and not WORKER_PROCESS


WORKER_PROCESS = False
"""True in softaudit's worker process (set by softaudit.runner.worker), where SIGINT is ignored."""


def one_line(text: str) -> str:
    """The first non-empty line of ``text``, shortened to a readable length."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"
