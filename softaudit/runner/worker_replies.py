"""What the candidates' worker process (softaudit.worker) answers the executor (isolation.WorkerExecutor).

One small dataclass per kind of reply, pickled over the pipe: a load's failure travels as the
loader's own exception (its class says why), not as a string tag to be turned back into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from softaudit.candidates.calling import CallResult
from softaudit.candidates.errors import CandidateError
from softaudit.runner.cuda_errors import StickyError

if TYPE_CHECKING:
    from softaudit.runner.isolation import CandidateInfo


@dataclass(frozen=True)
class Imported:
    """Sent while loading, once the target's module has run: probing follows. A crash or hang
    after it belongs to a probe call, not to the import."""


@dataclass(frozen=True)
class Loaded:
    """The target loaded: its candidates."""

    candidates: list[CandidateInfo]


@dataclass(frozen=True)
class LoadRefused:
    """The target could not be loaded. ``error`` is the loader's exception: a CandidateImportError
    (the module raised: a FAIL record), a CandidateUnavailable (an optional package is missing: a
    SKIP), a NoOpsError or another CandidateError (bad input)."""

    error: CandidateError


@dataclass(frozen=True)
class ContextBroken:
    """Loading the target left the CUDA context unusable: the worker must be replaced."""

    why: str


@dataclass(frozen=True)
class Called:
    """A call's result, and the CUDA error that left the context unusable (None: none did)."""

    result: CallResult
    sticky: StickyError | None


@dataclass(frozen=True)
class CallFailed:
    """A call that produced no result: the worker could not run it, or could not send its output."""

    error: str
    sticky: StickyError | None


@dataclass(frozen=True)
class Benched:
    """A speed measurement (softaudit.runner.speed.bench): kind "speed" with the figures, or "speed-skip"
    with the reason; and the CUDA error that left the context unusable (None: none did)."""

    kind: str
    payload: object
    sticky: StickyError | None


Reply = Imported | Loaded | LoadRefused | ContextBroken | Called | CallFailed | Benched
"""Every reply the worker sends."""
