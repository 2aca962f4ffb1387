"""The CI gate's configuration: ``[tool.softaudit]`` in pyproject.toml, or a file given with --config.

Found from the current directory upward: the nearest pyproject.toml that has a ``[tool.softaudit]``
table. Paths in it (targets, cases_dirs, corpus) are relative to that file's directory. Command-line options
override it. Unknown keys and bad values raise ConfigError naming the key (bad input, exit 2).
Every key is documented in docs/ci-gate.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softaudit.formats import FORMATS
from softaudit.ops import DIRECTIONS, OPS
from softaudit.speed import parse_shape
from softaudit.judging.verdicts import UNDEFINED_POLICIES, Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib


class ConfigError(ValueError):
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
    """auto, cpu, cuda or cuda:N (runner.environment.DEVICES); checked when the run starts."""
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
        if key in _LIST_KEYS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(key, "must be a list of strings")
            known = {"ops": OPS, "directions": DIRECTIONS, "formats": tuple(FORMATS)}.get(key)
            for v in value:
                if known is not None and v not in known:
                    raise bad(key, f"unknown value {v!r} (known: {', '.join(known)})")
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
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, f"must be an integer 0 or more, got {value!r}")
            cfg.seed = value
        elif key == "jobs":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                raise bad(key, f"must be an integer from 1 to 1024, got {value!r}")
            cfg.jobs = value
        elif key == "undefined":
            if value not in UNDEFINED_POLICIES:
                raise bad(key, f"unknown policy {value!r} (known: {', '.join(UNDEFINED_POLICIES)})")
            cfg.undefined = value
        elif key in ("strict", "bench"):
            if not isinstance(value, bool):
                raise bad(key, f"must be true or false, got {value!r}")
            setattr(cfg, key, value)
        elif key == "device":
            if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda") or
                                                  (value.startswith("cuda:") and value[5:].isdigit())):
                raise bad(key, f"must be auto, cpu, cuda or cuda:N, got {value!r}")
            cfg.device = value
        elif key == "corpus":
            if not isinstance(value, str) or not value:
                raise bad(key, "must be a directory path (relative to this file)")
            cfg.corpus = base / value
        elif key == "relative_to":
            if not isinstance(value, str) or not value:
                raise bad(key, "must be a target: a .py path or builtin:NAME")
            cfg.relative_to = value if value.startswith("builtin:") else str(base / value)
        elif key == "relative_factor":
            cfg.relative_factor = _number(value, 1.0, "a number of at least 1", lambda why: bad(key, why))
        elif key == "relative_slack":
            cfg.relative_slack = _number(value, 0.0, "a number, 0 or more (stability ratio)", lambda why: bad(key, why))
        else:
            _parse_limits(value, cfg, lambda k, why: bad(f"limits{'.' + k if k else ''}", why))
    return cfg


def _number(value: Any, minimum: float, what: str, bad: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum \
            or value == float("inf"):
        raise bad(f"must be {what}, got {value!r}")
    return float(value)


def check_ratio_limit(value: Any, bad: Any) -> float:
    """A stability-ratio limit: finite and above 1 (the envelope itself)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 < value < float("inf"):
        raise bad(f"must be a finite number greater than 1 (the envelope itself), got {value!r}")
    return float(value)


def _limits(table: Any, where: str, bad: Any, nested: tuple[str, ...]) -> tuple[Limits, dict]:
    """One limits table: its own ratio/max_ulp and the nested tables named in ``nested``."""
    if not isinstance(table, dict):
        raise bad(where, "must be a table")
    own: dict[str, float] = {}
    inner: dict[str, Any] = {}
    for k, v in table.items():
        path = f"{where}.{k}" if where else k
        if k == "ratio":
            own["ratio"] = check_ratio_limit(v, lambda why: bad(path, why))
        elif k == "max_ulp":
            own["max_ulp"] = _number(v, 0.0, "a number of ulps, 0 or more", lambda why: bad(path, why))
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
