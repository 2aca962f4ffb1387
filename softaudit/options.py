"""The options of an audit and of a search: the parts they share, their defaults and their checks.

Every front end builds the same model: the defaults, then ``[tool.softaudit]`` (config.py), then
the command line, each layer applied with ``dataclasses.replace`` (``overridden``). Every rule on
a value (a ratio limit above 1, a seed of 0 or more, the device syntax) is written once, here; a
front end only says how it names the option in its messages (``Naming``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from softaudit.errors import BadInput
from softaudit.formats import Format
from softaudit.judging.envelope import DEFAULT_RELATIVE_FACTOR, DEFAULT_RELATIVE_SLACK
from softaudit.judging.verdicts import UNDEFINED_POLICIES, Gate
from softaudit.ops import DIRECTIONS, LINEAR_CROSS_ENTROPY, OPS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from softaudit.search.engine import SearchOptions

DEFAULT_TIMEOUT = 300.0
"""Seconds one call may take before it counts as hung: generous, since a pure-Python
row-by-row candidate on a 262,144-wide row is slow but not broken."""

MAX_TIMEOUT = 7 * 86400.0
"""The largest --timeout accepted (a week): beyond it the OS's wait primitives overflow."""

MAX_JOBS = 1024
"""The most processes an audit may use (--jobs, ``jobs`` in [tool.softaudit])."""

MAX_MEMORY_GIB = 2**20
"""The largest --memory-limit accepted, in GiB."""

DEVICE_SYNTAX = "auto, cpu, cuda or cuda:N"
"""The devices a run can name; runner.check_device says whether one is usable here."""


class OptionError(BadInput):
    """An option's value is out of its range; the message names the option as its front end does."""


# --------------------------------------------------------------------------
# The shared parts


@dataclass(frozen=True)
class WorkerOptions:
    """How candidates are called: in a worker process or not, on which device, within what limits."""

    isolated: bool = True
    """Run candidates in a worker process (crashes and hangs become FAIL records)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one call may take before it is a FAIL ("timed out") and the worker is restarted."""
    memory_limit: int | None = None
    """Address-space limit of the worker, in bytes; None: half the machine's memory."""
    rowwise: bool = False
    """Call every op one row (1-D vector) at a time."""
    device: str = "auto"
    """Where torch candidates that name no device run: "cpu", "cuda", "cuda:N", or "auto" (CUDA when
    available). Triton code runs under Triton's CPU interpreter when no CUDA device is used."""

    @property
    def explicit_device(self) -> str | None:
        """The device asked for, None for "auto" (what the executors and loaders take)."""
        return None if self.device == "auto" else self.device


@dataclass(frozen=True)
class CacheOptions:
    """Where the exact references are cached."""

    directory: Path | None = None
    """Reference cache directory; None uses the default location ($SOFTAUDIT_CACHE_DIR or ~/.cache/softaudit)."""
    enabled: bool = True
    """False: compute every reference afresh and store nothing."""


# --------------------------------------------------------------------------
# An audit's options


@dataclass
class AuditOptions:
    """Everything that shapes an audit besides its targets."""

    ops: Sequence[str] = ()
    """Ops to audit; empty means every op each target defines."""
    directions: Sequence[str] = ()
    """forward and/or backward; empty means both (backward where the candidate has one)."""
    formats: Sequence[Format] = ()
    """Formats; empty means all four."""
    case_patterns: Sequence[str] = ()
    """fnmatch patterns on case name or family; empty means the whole library."""
    cases_dirs: Sequence[Path] = ()
    """Extra case directories, added to the shipped library."""
    corpus_dir: Path | None = None
    """A corpus of cases ``softaudit search`` found (corpus.py): added to ``cases_dirs`` when it
    holds case files. None: no corpus."""
    seed: int = 0
    gate: Gate = field(default_factory=Gate)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    relative_to: str | None = None
    """A target (file or builtin:NAME) every other candidate is also judged against (the relative
    rule, verdicts.apply_relative_rule); audited alongside, its own FAILs do not set the exit code."""
    relative_factor: float = DEFAULT_RELATIVE_FACTOR
    relative_slack: float = DEFAULT_RELATIVE_SLACK
    jobs: int | None = None
    """Processes for the audit: references of later units are computed in jobs - 1 worker
    processes while the main loop calls candidates (prefetch.py); None: the machine's cores."""
    bench: bool = False
    """Also time every candidate x op x direction x format at ``shapes`` (speed.py), after the audit."""
    shapes: Sequence[tuple[int, int]] = ()
    """(rows, n) shapes to time at; empty means timing.DEFAULT_SHAPES."""


# --------------------------------------------------------------------------
# Layering

T = TypeVar("T", bound="DataclassInstance")


def overridden(base: T, **changes: Any) -> T:
    """``base`` (a dataclass) with the ``changes`` a layer gives, by ``dataclasses.replace``; None and
    empty sequences are what a layer leaves unset, so the layer below stays in force."""
    given = {key: value for key, value in changes.items()
             if value is not None and not (isinstance(value, (list, tuple)) and not value)}
    return dataclasses.replace(base, **given) if given else base


# --------------------------------------------------------------------------
# The checks


@dataclass(frozen=True)
class Naming:
    """How a front end names each option in its messages: the Python API's keywords by default;
    the command line gives its flags, ``[tool.softaudit]`` an empty name (it prefixes file and key)."""

    seed: str = "seed"
    ratio_limit: str = "ratio_limit"
    max_ulp: str = "max_ulp"
    undefined_policy: str = "undefined_policy"
    """Used as "unknown {name} 'x'"."""
    relative_factor: str = "relative_factor"
    relative_slack: str = "relative_slack"
    jobs: str = "jobs"
    timeout: str = "timeout"
    device: str = ""
    """Prefixes "unknown device 'x' (...)"."""
    op: str = "op"
    """Used as "unknown {name} 'x'"."""
    direction: str = "direction"
    """Used as "unknown {name} 'x'"."""
    budget: str = "budget"
    patience: str = "patience"


KEYWORDS = Naming()
"""The Python API's names: its keyword arguments."""


def _bad(name: str, why: str) -> OptionError:
    return OptionError(f"{name} {why}" if name else why)


def _real(value: object) -> float | None:
    """``value`` as a float when it is an int or a float (not a bool); None otherwise."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _shown(value: object) -> str:
    """A number as the messages print it (1e+03, inf), anything else as its repr."""
    real = _real(value)
    return f"{real:g}" if real is not None else repr(value)


def check_seed(value: object, name: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(name, f"must be an integer 0 or more, got {value!r}")
    return value


def check_ratio_limit(value: object, name: str = "") -> float:
    """A stability-ratio limit: finite and above 1 (the envelope itself)."""
    x = _real(value)
    if x is None or not 1.0 < x < math.inf:
        raise _bad(name, f"must be a finite number greater than 1 (the envelope itself), got {value!r}")
    return x


def check_max_ulp(value: object, name: str = "") -> float:
    x = _real(value)
    if x is None or not 0.0 <= x < math.inf:
        raise _bad(name, f"must be a finite number of ulps, 0 or more, got {value!r}")
    return x


def check_relative_factor(value: object, name: str = "") -> float:
    x = _real(value)
    if x is None or not 1.0 <= x < math.inf:
        raise _bad(name, f"must be a finite number of at least 1, got {value!r}")
    return x


def check_relative_slack(value: object, name: str = "") -> float:
    x = _real(value)
    if x is None or not 0.0 <= x < math.inf:
        raise _bad(name, f"must be a finite number, 0 or more (stability ratio), got {value!r}")
    return x


def check_jobs(value: object, name: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS:
        raise _bad(name, f"must be between 1 and {MAX_JOBS}, got {value!r}")
    return value


def check_timeout(value: object, name: str = "") -> float:
    x = _real(value)
    if x is None or not 0 < x <= MAX_TIMEOUT:
        raise _bad(name, f"must be between 0 and {MAX_TIMEOUT:g} seconds, got {_shown(value)}")
    return x


def memory_limit_bytes(gib: object, name: str = "") -> int:
    """A memory limit given in GiB (--memory-limit), checked, in bytes."""
    x = _real(gib)
    if x is None or not 0 < x <= MAX_MEMORY_GIB:
        raise _bad(name, f"must be a positive number of GiB (at most 2^20), got {_shown(gib)}")
    return int(x * 2**30)


def check_device_name(value: object, name: str = "") -> str:
    """A device the syntax allows (auto, cpu, cuda, cuda:N); whether it is usable here is
    runner.check_device's question."""
    if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda")
                                          or (value.startswith("cuda:") and value[5:].isdigit())):
        raise _bad(name, f"unknown device {value!r} (choose {DEVICE_SYNTAX})")
    return value


def check_choice(value: object, known: Iterable[str], name: str) -> str:
    """One of ``known`` (an op, a direction, an undefined policy)."""
    known = tuple(known)
    if not isinstance(value, str) or value not in known:
        raise OptionError(f"unknown {name} {value!r} (known: {', '.join(known)})")
    return value


def check_budget(value: object, name: str = "") -> float:
    x = _real(value)
    if x is None or not 0 < x < math.inf:
        raise _bad(name, f"must be a positive number of seconds, got {_shown(value)}")
    return x


def check_patience(value: object, name: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(name, f"must be 1 or more inputs, got {value!r}")
    return value


def checked_gate(gate: Gate, names: Naming = KEYWORDS) -> Gate:
    """``gate`` with its values checked (numbers as floats)."""
    return dataclasses.replace(
        gate, undefined_policy=check_choice(gate.undefined_policy, UNDEFINED_POLICIES, names.undefined_policy),
        ratio_limit=check_ratio_limit(gate.ratio_limit, names.ratio_limit),
        max_ulp=None if gate.max_ulp is None else check_max_ulp(gate.max_ulp, names.max_ulp))


def checked_worker(worker: WorkerOptions, names: Naming = KEYWORDS) -> WorkerOptions:
    """``worker`` with its values checked."""
    return dataclasses.replace(worker, timeout=check_timeout(worker.timeout, names.timeout),
                               device=check_device_name(worker.device, names.device))


def checked_audit_options(options: AuditOptions, names: Naming = KEYWORDS) -> AuditOptions:
    """``options`` with every value checked: OptionError names the first bad one."""
    for op in options.ops:
        check_choice(op, OPS, names.op)
    for direction in options.directions:
        check_choice(direction, DIRECTIONS, names.direction)
    return dataclasses.replace(
        options, seed=check_seed(options.seed, names.seed),
        relative_factor=check_relative_factor(options.relative_factor, names.relative_factor),
        relative_slack=check_relative_slack(options.relative_slack, names.relative_slack),
        jobs=None if options.jobs is None else check_jobs(options.jobs, names.jobs),
        gate=checked_gate(options.gate, names), worker=checked_worker(options.worker, names))


def checked_search_options(options: SearchOptions, names: Naming = KEYWORDS) -> SearchOptions:
    """``options`` (softaudit.search's) with every value checked: OptionError names the first bad one."""
    check_choice(options.op, OPS, names.op)
    if options.op == LINEAR_CROSS_ENTROPY:
        raise OptionError(f"{names.op} {LINEAR_CROSS_ENTROPY}: search and shrink do not support this op yet "
                          f"(audit its cases with softaudit run --op {LINEAR_CROSS_ENTROPY})")
    check_choice(options.direction, DIRECTIONS, names.direction)
    return dataclasses.replace(
        options, budget=check_budget(options.budget, names.budget), seed=check_seed(options.seed, names.seed),
        patience=check_patience(options.patience, names.patience),
        gate=checked_gate(options.gate, names), worker=checked_worker(options.worker, names))


__all__ = ["AuditOptions", "WorkerOptions", "CacheOptions", "Naming", "KEYWORDS", "OptionError",
           "DEFAULT_TIMEOUT", "MAX_TIMEOUT", "overridden", "checked_audit_options", "checked_search_options",
           "checked_gate", "checked_worker", "check_seed", "check_ratio_limit", "check_max_ulp",
           "check_relative_factor", "check_relative_slack", "check_jobs", "check_timeout", "memory_limit_bytes",
           "check_device_name", "check_choice", "check_budget", "check_patience"]
