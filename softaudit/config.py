"""The CI gate's configuration: ``[tool.softaudit]`` in pyproject.toml, or a file given with --config.

Found from the current directory upward: the nearest pyproject.toml that has a ``[tool.softaudit]``
table. Paths in it (targets, cases_dirs, corpus) are relative to that file's directory. It is the
layer between the defaults and the command line (``GateConfig.over_audit``); values are checked by
softaudit.options' rules. Unknown keys and bad values raise ConfigError naming the key (bad input,
exit 2). Every key is documented in docs/ci-gate.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softaudit.errors import BadInput
from softaudit.formats import FORMATS, get_format
from softaudit.judging.verdicts import UNDEFINED_POLICIES, Gate, Limits
from softaudit.ops import DIRECTIONS, OPS
from softaudit.options import (
    AuditOptions,
    OptionError,
    WorkerOptions,
    check_choice,
    check_device_name,
    check_jobs,
    check_max_ulp,
    check_ratio_limit,
    check_relative_factor,
    check_relative_slack,
    check_seed,
    overridden,
)
from softaudit.runner.speed import parse_shape

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib


class ConfigError(BadInput):
    """The configuration file is malformed: one line naming the file and the key."""


@dataclass
class GateConfig:
    """What ``[tool.softaudit]`` sets; None and empty lists leave the command line's defaults."""

    source: Path
    targets: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    cases_dirs: list[Path] = field(default_factory=list)
    seed: int | None = None
    undefined: str | None = None
    strict: bool | None = None
    relative_to: str | None = None
    relative_factor: float | None = None
    relative_slack: float | None = None
    jobs: int | None = None
    bench: bool | None = None
    device: str | None = None
    """auto, cpu, cuda or cuda:N (options.check_device_name); whether it is usable is checked when
    the run starts."""
    corpus: Path | None = None
    """The corpus directory of found cases (search --save-to's default, run's --corpus)."""
    shapes: list[tuple[int, int]] = field(default_factory=list)
    """ROWSxN strings parsed (speed.parse_shape)."""
    ratio: float | None = None
    """limits.ratio: the stability-ratio limit for every op and format."""
    max_ulp: float | None = None
    """limits.max_ulp: the largest error in ulps for every op and format."""
    limits: dict[str, Limits] = field(default_factory=dict)
    """Per "op", "format" or "op.format" limits."""

    def over_gate(self, gate: Gate) -> Gate:
        """``gate`` with the limits and the undefined policy set here (not ``strict``: search has none)."""
        return overridden(gate, ratio_limit=self.ratio, max_ulp=self.max_ulp, undefined_policy=self.undefined,
                          limits=tuple(self.limits.items()))

    def over_worker(self, worker: WorkerOptions) -> WorkerOptions:
        """``worker`` with the device set here."""
        return overridden(worker, device=self.device)

    def over_audit(self, options: AuditOptions) -> AuditOptions:
        """``options`` with what this file sets: the layer between the defaults and the command line.
        ``targets`` and ``corpus`` are the command line's to use (they are not audit options)."""
        return overridden(
            options, ops=self.ops, directions=self.directions, formats=[get_format(f) for f in self.formats],
            case_patterns=self.cases, cases_dirs=self.cases_dirs, seed=self.seed, relative_to=self.relative_to,
            relative_factor=self.relative_factor, relative_slack=self.relative_slack, jobs=self.jobs,
            bench=self.bench, shapes=self.shapes, gate=overridden(self.over_gate(options.gate), strict=self.strict),
            worker=self.over_worker(options.worker))


_LIST_KEYS = ("targets", "ops", "directions", "formats", "cases", "cases_dirs", "shapes")
_KEYS = (*_LIST_KEYS, "seed", "undefined", "strict", "relative_to", "relative_factor", "relative_slack",
         "jobs", "bench", "device", "corpus", "limits")
_LIMIT_KEYS = ("ratio", "max_ulp")


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` that has a [tool.softaudit] table."""
    for d in [start.resolve(), *start.resolve().parents]:
        candidate = d / "pyproject.toml"
        if candidate.is_file():
            data = _read(candidate)  # a malformed one is an error, not passed over silently
            if isinstance(data.get("tool"), dict) and "softaudit" in data["tool"]:
                return candidate
    return None


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: Path) -> GateConfig:
    """Read the gate's settings from a pyproject.toml ([tool.softaudit]) or a softaudit TOML file
    (the same keys at top level, or under [tool.softaudit])."""
    data = _read(path)
    table = (data.get("tool") or {}).get("softaudit") if isinstance(data.get("tool"), dict) else None
    prefix = "tool.softaudit"
    if table is None:
        if path.name == "pyproject.toml":
            raise ConfigError(f"{path}: no [tool.softaudit] table")
        table, prefix = data, ""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {prefix} must be a table")
    return _parse(table, path, prefix)


def _key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parse(table: dict, path: Path, prefix: str) -> GateConfig:
    cfg = GateConfig(source=path)
    base = path.parent

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {_key(prefix, key)}: {why}")

    for key, value in table.items():
        if key not in _KEYS:
            raise bad(key, f"unknown key (known: {', '.join(_KEYS)})")
        try:
            _parse_key(cfg, key, value, base, bad)
        except OptionError as exc:
            raise bad(key, str(exc)) from None
    return cfg


def _parse_key(cfg: GateConfig, key: str, value: Any, base: Path, bad: Callable[[str, str], ConfigError]) -> None:
    """Set ``key`` of ``cfg`` from its TOML value; OptionError (softaudit.options' rules) or ``bad``
    for a bad value."""
    if key in _LIST_KEYS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, "must be a list of strings")
        known = {"ops": OPS, "directions": DIRECTIONS, "formats": tuple(FORMATS)}.get(key)
        for v in value:
            if known is not None:
                check_choice(v, known, "value")
        if key == "targets":
            cfg.targets = [v if v.startswith("builtin:") else str(base / v) for v in value]
        elif key == "cases_dirs":
            cfg.cases_dirs = [base / v for v in value]
        elif key == "shapes":
            try:
                cfg.shapes = [parse_shape(v) for v in value]
            except ValueError as exc:
                raise bad(key, str(exc)) from None
        else:
            setattr(cfg, key, list(value))
    elif key == "seed":
        cfg.seed = check_seed(value)
    elif key == "jobs":
        cfg.jobs = check_jobs(value)
    elif key == "undefined":
        cfg.undefined = check_choice(value, UNDEFINED_POLICIES, "policy")
    elif key in ("strict", "bench"):
        if not isinstance(value, bool):
            raise bad(key, f"must be true or false, got {value!r}")
        setattr(cfg, key, value)
    elif key == "device":
        cfg.device = check_device_name(value)
    elif key == "corpus":
        if not isinstance(value, str) or not value:
            raise bad(key, "must be a directory path (relative to this file)")
        cfg.corpus = base / value
    elif key == "relative_to":
        if not isinstance(value, str) or not value:
            raise bad(key, "must be a target: a .py path or builtin:NAME")
        cfg.relative_to = value if value.startswith("builtin:") else str(base / value)
    elif key == "relative_factor":
        cfg.relative_factor = check_relative_factor(value)
    elif key == "relative_slack":
        cfg.relative_slack = check_relative_slack(value)
    else:
        _parse_limits(value, cfg, lambda k, why: bad(f"limits{'.' + k if k else ''}", why))


def _checked(check: Any, value: Any, bad: Any) -> float:
    """``check(value)`` (a softaudit.options rule), its OptionError turned into ``bad(why)``."""
    try:
        return check(value)
    except OptionError as exc:
        raise bad(str(exc)) from None


def _limits(table: Any, where: str, bad: Any, nested: tuple[str, ...]) -> tuple[Limits, dict]:
    """One limits table: its own ratio/max_ulp and the nested tables named in ``nested``."""
    if not isinstance(table, dict):
        raise bad(where, "must be a table")
    own: dict[str, float] = {}
    inner: dict[str, Any] = {}
    for k, v in table.items():
        path = f"{where}.{k}" if where else k
        if k == "ratio":
            own["ratio"] = _checked(check_ratio_limit, v, lambda why: bad(path, why))
        elif k == "max_ulp":
            own["max_ulp"] = _checked(check_max_ulp, v, lambda why: bad(path, why))
        elif k in nested:
            inner[k] = v
        else:
            known = ", ".join((*_LIMIT_KEYS, *nested))
            raise bad(path, f"unknown key (known: {known})")
    return Limits(**own), inner


def _parse_limits(value: Any, cfg: GateConfig, bad: Any) -> None:
    top, by_name = _limits(value, "", bad, (*OPS, *FORMATS))
    cfg.ratio, cfg.max_ulp = top.ratio, top.max_ulp
    for name, sub in by_name.items():
        own, per_format = _limits(sub, name, bad, tuple(FORMATS) if name in OPS else ())
        cfg.limits[name] = own
        for fmt, subsub in per_format.items():
            cfg.limits[f"{name}.{fmt}"] = _limits(subsub, f"{name}.{fmt}", bad, ())[0]
