"""The case reader: loads the declarative case library, TOML files of ``[[case]]`` tables,
into :class:`~softaudit.cases.model.Case` objects, and selects cases by pattern.

The shipped library lives in the top-level ``cases/`` directory (``softaudit/_cases`` in an
installed wheel); users add directories of their own. Every file is checked strictly when loaded,
so a typo is a one-line :class:`CaseError`, never a case that silently tests something else. docs/cases.md documents the format.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from softaudit.cases.model import (
    DEVICES,
    FINFO_SYMBOLS,
    LINEAR_KEYS,
    LINEAR_SHARED_KEYS,
    LOSS_KEYS,
    MASK_MODES,
    MASK_PATTERNS,
    OUT_OF_RANGE,
    PARAM_DEFAULTS,
    PROBABILITY_ZEROS,
    TARGET_CHOICES,
    TORCH_DEFAULT_IGNORE_INDEX,
    UPSTREAM_KINDS,
    VALUE_KINDS,
    WEIGHT_CHOICES,
    Case,
    CaseError,
    Value,
)
from softaudit.formats import FORMATS, FormatError, get_format
from softaudit.ops import DIRECTIONS, LINEAR_CROSS_ENTROPY, OPS, REDUCTIONS, SOFTMAX_FAMILY, TARGET_KINDS

_CASE_KEYS = ("name", "family", "description", "seen_in", "ops", "directions", "formats", "rows", "n", "seed",
              "devices")
_LINEAR_CASE_KEYS = ("name", "family", "description", "seen_in", "ops", "directions", "formats", "seed", "devices",
                     *LINEAR_KEYS, *LINEAR_SHARED_KEYS)
DEVICE_CASE_FACTOR = 64
"""A case restricted to ``devices = ["cuda"]`` may be this many times larger than the cap (a GPU's memory)."""
_INJECT_KEYS = ("value", "columns", "count", "rows")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")


# --------------------------------------------------------------------------
# Loading


def default_cases_dir() -> Path:
    """The shipped library: ``softaudit/_cases`` in a wheel, ``<repo>/cases`` in a checkout."""
    package = Path(__file__).resolve().parent.parent  # softaudit/, this module being softaudit/cases/reader.py
    installed = package / "_cases"
    if installed.is_dir():
        return installed
    return package.parent / "cases"


def load_cases(extra_dirs: Sequence[Path] = (), include_default: bool = True) -> list[Case]:
    """Load every ``*.toml`` file of the shipped library and of ``extra_dirs``.

    An entry of ``extra_dirs`` may also name a single ``.toml`` file. Cases come
    back sorted by (family, name). Raises :class:`CaseError` on a missing
    directory, a directory without case files, a malformed file or a duplicate
    name (a user case cannot replace a shipped one: give it another name).
    """
    dirs = ([default_cases_dir()] if include_default else []) + [Path(d) for d in extra_dirs]
    files: list[Path] = []
    seen_dirs: set[Path] = set()
    for d in dirs:
        resolved = d.resolve()
        if resolved in seen_dirs:
            continue
        seen_dirs.add(resolved)
        if d.suffix == ".toml" and d.exists() and not d.is_dir():
            files.append(d)  # _load_file refuses what is not a regular file
        elif d.is_dir():
            found = sorted(d.glob("*.toml"))
            if not found:
                raise CaseError(f"{d}: no *.toml case files in this directory")
            files.extend(found)
        else:
            raise CaseError(f"{d}: no such case directory")
    by_name: dict[str, Case] = {}
    for path in files:
        for case in _load_file(path):
            other = by_name.get(case.name)
            if other is not None:
                raise CaseError(f"{path}: case {case.name!r}: duplicate name (also defined in {other.source})")
            by_name[case.name] = case
    return sorted(by_name.values(), key=lambda c: (c.family, c.name))


def select_cases(cases: Sequence[Case], patterns: Sequence[str]) -> list[Case]:
    """Cases whose name or family matches any fnmatch pattern; no patterns: all.

    Order follows ``cases``. A pattern that matches nothing raises CaseError.
    """
    if not patterns:
        return list(cases)
    chosen: set[str] = set()
    for pattern in patterns:
        pat = pattern.strip().lower()
        hits = [c.name for c in cases if fnmatch.fnmatchcase(c.name, pat) or fnmatch.fnmatchcase(c.family, pat)]
        if not hits:
            raise CaseError(f"no case matches {pattern!r}")
        chosen.update(hits)
    return [c for c in cases if c.name in chosen]


MAX_CASE_ELEMENTS = 1 << 22
"""Elements (rows x n) one case may ask for: 16 times the largest shipped case (262,144), about
4.2 million. A case of 10^10 elements would pass every other check and then exhaust memory when
the audit generates it; a larger cap is one environment variable away."""

MAX_ELEMENTS_VARIABLE = "SOFTAUDIT_MAX_CASE_ELEMENTS"


def max_case_elements() -> int:
    """The cap on a case's elements: $SOFTAUDIT_MAX_CASE_ELEMENTS when set (a positive integer),
    else MAX_CASE_ELEMENTS."""
    raw = os.environ.get(MAX_ELEMENTS_VARIABLE, "").strip()
    if not raw:
        return MAX_CASE_ELEMENTS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise CaseError(f"${MAX_ELEMENTS_VARIABLE} is {raw!r}: give a positive whole number of elements")
    return value


def _load_file(path: Path) -> list[Case]:
    if not path.is_file():  # a FIFO or device named *.toml would block or never end
        raise CaseError(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{path}: invalid TOML: {_one_line(str(exc))}") from None
    except UnicodeDecodeError:
        raise CaseError(f"{path}: not UTF-8 text (a case file is TOML, which is UTF-8)") from None
    except RecursionError:
        raise CaseError(f"{path}: nested too deeply to be a case file") from None
    except OSError as exc:
        raise CaseError(f"{path}: cannot read: {_one_line(str(exc))}") from None
    unknown = [k for k in doc if k != "case"]
    if unknown:
        raise CaseError(f"{path}: unknown top-level key {unknown[0]!r} (a case file holds only [[case]] tables)")
    tables = doc.get("case", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise CaseError(f"{path}: 'case' must be an array of tables, written [[case]]")
    return [_CaseReader(path, i, t).read() for i, t in enumerate(tables)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _CaseReader:
    """Validates one ``[[case]]`` table; every complaint names file, case and key."""

    def __init__(self, path: Path, index: int, table: dict[str, Any]) -> None:
        self.path = path
        self.table = table
        raw_name = table.get("name")
        self.label = repr(raw_name) if isinstance(raw_name, str) else f"#{index + 1}"

    def fail(self, key: str, message: str) -> NoReturn:
        raise CaseError(_one_line(f"{self.path}: case {self.label}: key {key!r}: {message}"))

    # -- scalar helpers ------------------------------------------------------

    def text(self, key: str, required: bool = True) -> str:
        v = self.table.get(key)
        if v is None:
            if required:
                self.fail(key, "missing (required)")
            return ""
        if not isinstance(v, str) or not v.strip():
            self.fail(key, "must be a non-empty string")
        if "\n" in v.strip():
            self.fail(key, "must be a single line")
        return v.strip()

    def integer(self, key: str, v: Any, minimum: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {v!r}")
        if v < minimum:
            self.fail(key, f"must be at least {minimum}, got {v}")
        return v

    def value(self, key: str, v: Any) -> Value:
        """A number, a string such as "inf", "-0.0", "nan", or a finfo symbol."""
        if isinstance(v, str) and v.strip().lower() in FINFO_SYMBOLS:
            return v.strip().lower()
        return self.real(key, v, symbols_allowed=True)

    def real(self, key: str, v: Any, finite: bool = False, symbols_allowed: bool = False) -> float:
        """A float from a TOML number or a numeric string ("inf", "-0.0", "nan", "1e38")."""
        out = math.nan
        if isinstance(v, str):
            try:
                out = float(v.strip())
            except ValueError:
                extra = ", 'finfo.min', 'finfo.max'" if symbols_allowed else ""
                self.fail(key, f"{v!r} is not a number (use a number, 'inf', '-inf', 'nan', '-0.0'{extra})")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                out = float(v)
            except OverflowError:
                self.fail(key, f"{v!r} is beyond float64's range")
        else:
            self.fail(key, f"must be a number, got {v!r}")
        if finite and not math.isfinite(out):
            self.fail(key, f"must be finite, got {v!r}")
        return math.nan if math.isnan(out) else out  # one NaN object, so equal cases compare equal

    def choice(self, key: str, v: Any, allowed: Sequence[str]) -> str:
        if not isinstance(v, str) or v not in allowed:
            self.fail(key, f"must be one of {', '.join(allowed)}; got {v!r}")
        return v

    def index_list(self, key: str, v: Any, size: int, what: str) -> tuple[int, ...]:
        """Row or column indices (negative counts from the end), sorted and unique."""
        if not isinstance(v, list) or not v:
            self.fail(key, f"must be a non-empty list of {what} indices")
        out: set[int] = set()
        for i in v:
            if isinstance(i, bool) or not isinstance(i, int) or not -size <= i < size:
                self.fail(key, f"{i!r} is not a {what} index in [{-size}, {size})")
            out.add(i % size)
        return tuple(sorted(out))

    # -- the case ------------------------------------------------------------

    def read(self) -> Case:
        t = self.table
        ops_given = t.get("ops")
        if (isinstance(ops_given, list) and LINEAR_CROSS_ENTROPY in ops_given) or any(k in t for k in LINEAR_KEYS):
            return self.read_linear()
        for key in t:
            if key not in _CASE_KEYS and key not in PARAM_DEFAULTS:
                self.fail(key, "unknown key (see docs/cases.md)")
        name, family, description, seen_in = self.header()
        ops = self.ops()
        directions = self.directions()
        formats = self.formats()
        devices = self.devices()
        seed = self.integer("seed", t["seed"], 0) if "seed" in t else zlib.crc32(name.encode())

        params: dict[str, Any] = {}
        kind = self.choice("values", t.get("values", "normal"), VALUE_KINDS)
        if "values" in t:
            params["values"] = kind
        data = self.data(kind)
        rows, n = self.shape(data)
        if data is not None:
            params["data"] = data
        self.params_for_values(kind, n, params)
        self.offset(params)
        if "gap" in t:
            if n < 2:
                self.fail("gap", "needs n >= 2 (the gap is measured from the other entries)")
            params["gap"] = self.real("gap", t["gap"], finite=True)
        if "ties" in t:
            ties = self.integer("ties", t["ties"], 1)
            if ties > n:
                self.fail("ties", f"{ties} tied entries do not fit in a row of n = {n}")
            params["ties"] = ties
        if kind == "explicit":
            for key in ("gap", "ties"):
                if key in t:
                    self.fail(key, "does not apply to values = 'explicit' (write the values you want)")
        if kind == "constant" and ("gap" in t or "ties" in t) and isinstance(params.get("value"), float) \
                and not math.isfinite(params["value"]):
            self.fail("gap" if "gap" in t else "ties", "needs finite constant values")
        self.mask(rows, params)
        if "inject" in t:
            params["inject"] = self.inject(rows, n)
        self.loss(ops, rows, n, params)
        if "upstream" in t:
            if "backward" not in directions:
                self.fail("upstream", "only applies to the backward direction (add 'backward' to directions)")
            params["upstream"] = self.choice("upstream", t["upstream"], UPSTREAM_KINDS)
        return Case(name=name, family=family, description=description, seen_in=seen_in, ops=ops,
                    formats=formats, rows=rows, n=n, seed=seed, directions=directions,
                    params=MappingProxyType(params), source=str(self.path), devices=devices)

    def header(self) -> tuple[str, str, str, str]:
        """name, family, description and seen_in, checked."""
        name = self.text("name")
        if not _NAME_RE.match(name):
            self.fail("name", f"{name!r} is not kebab-case (lowercase letters, digits, '-', '.')")
        family = self.text("family")
        if not _NAME_RE.match(family):
            self.fail("family", f"{family!r} is not kebab-case (lowercase letters, digits, '-', '.')")
        return name, family, self.text("description"), self.text("seen_in", required=False)

    def ops(self) -> tuple[str, ...]:
        """The ops (default: the softmax family; linear_cross_entropy only by name, in a case of its own)."""
        ops = self._subset("ops", OPS, "op", default=SOFTMAX_FAMILY)
        if LINEAR_CROSS_ENTROPY in ops:
            self.fail("ops", "linear_cross_entropy takes hidden states and a weight, not logits: give it a case of "
                             "its own (ops = ['linear_cross_entropy'], keys tokens, vocab, hidden_size)")
        return ops

    def devices(self) -> tuple[str, ...]:
        """The devices the case is restricted to (() when not said)."""
        if "devices" not in self.table:
            return ()
        return self._subset("devices", DEVICES, "device")

    def read_linear(self) -> Case:
        """A linear_cross_entropy case: tokens x vocab logits from hidden states and a weight."""
        t = self.table
        if t.get("ops") != [LINEAR_CROSS_ENTROPY]:
            if "ops" not in t:
                key = next(k for k in LINEAR_KEYS if k in t)
                self.fail(key, f"only applies to {LINEAR_CROSS_ENTROPY} (set ops = ['{LINEAR_CROSS_ENTROPY}'])")
            self.fail("ops", f"{LINEAR_CROSS_ENTROPY} takes hidden states and a weight, not logits: its case applies "
                             f"to it alone (ops = ['{LINEAR_CROSS_ENTROPY}'])")
        for key in t:
            if key not in _LINEAR_CASE_KEYS:
                known = key in _CASE_KEYS or key in PARAM_DEFAULTS
                self.fail(key, f"does not apply to a {LINEAR_CROSS_ENTROPY} case" if known
                          else "unknown key (see docs/cases.md#linear-cross-entropy-cases)")
        name, family, description, seen_in = self.header()
        directions = self.directions()
        formats = self.formats()
        devices = self.devices()
        seed = self.integer("seed", t["seed"], 0) if "seed" in t else zlib.crc32(name.encode())
        for key in ("tokens", "vocab", "hidden_size"):
            if key not in t:
                self.fail(key, f"missing (required by a {LINEAR_CROSS_ENTROPY} case)")
        tokens = self.integer("tokens", t["tokens"], 1)
        vocab = self.integer("vocab", t["vocab"], 2)
        hidden = self.integer("hidden_size", t["hidden_size"], 1)
        cap = max_case_elements() * (DEVICE_CASE_FACTOR if devices == ("cuda",) else 1)
        if tokens * vocab > cap:
            self.fail("tokens", f"{tokens:,} tokens x {vocab:,} classes = {tokens * vocab:,} logits is over the cap of "
                                f"{cap:,} per case (${MAX_ELEMENTS_VARIABLE} raises it; devices = ['cuda'] allows "
                                f"{DEVICE_CASE_FACTOR}x)")
        if vocab * hidden > 4 * cap:
            self.fail("hidden_size", f"a {vocab:,} x {hidden:,} weight is over the cap of {4 * cap:,} elements per case")
        params: dict[str, Any] = {"hidden_size": hidden}
        for key, positive in (("logit_std", True), ("confident_margin", True), ("z_loss", False), ("softcap", True)):
            if key in t:
                v = self.real(key, t[key], finite=True)
                if v < 0 or (positive and v == 0):
                    self.fail(key, f"must be {'> 0' if positive else '>= 0'}, got {t[key]!r}")
                params[key] = v
        if "confident_tokens" in t:
            f = self.real("confident_tokens", t["confident_tokens"], finite=True)
            if not 0.0 <= f <= 1.0:
                self.fail("confident_tokens", f"must lie in [0, 1] (a fraction of the tokens), got {t['confident_tokens']!r}")
            params["confident_tokens"] = f
        if "bias" in t:
            if not isinstance(t["bias"], bool):
                self.fail("bias", f"must be true or false, got {t['bias']!r}")
            params["bias"] = t["bias"]
        ignore = self.int64("ignore_index", t["ignore_index"]) if "ignore_index" in t else TORCH_DEFAULT_IGNORE_INDEX
        if 0 <= ignore < vocab:
            self.fail("ignore_index", f"{ignore} is a class in [0, {vocab}): tokens of that class would be ignored")
        params["ignore_index"] = ignore
        if "ignored_tokens" in t:
            params["ignored_tokens"] = self.integer("ignored_tokens", t["ignored_tokens"], 0)
            if params["ignored_tokens"] > tokens:
                self.fail("ignored_tokens", f"{params['ignored_tokens']} is more than the {tokens} tokens")
        if "label_smoothing" in t:
            eps = self.real("label_smoothing", t["label_smoothing"], finite=True)
            if not 0.0 <= eps < 1.0:
                self.fail("label_smoothing", f"must lie in [0, 1), got {t['label_smoothing']!r}")
            params["label_smoothing"] = eps
        params["reduction"] = self.choice("reduction", t.get("reduction", "mean"), REDUCTIONS)
        if params["reduction"] == "mean" and params.get("ignored_tokens", 0) == tokens:
            self.fail("ignored_tokens", "every token is ignored: the mean is 0/0 (use reduction = 'sum' or 'none')")
        if "upstream" in t:
            if "backward" not in directions:
                self.fail("upstream", "only applies to the backward direction (add 'backward' to directions)")
            params["upstream"] = self.choice("upstream", t["upstream"], UPSTREAM_KINDS)
        return Case(name=name, family=family, description=description, seen_in=seen_in, ops=(LINEAR_CROSS_ENTROPY,),
                    formats=formats, rows=tokens, n=vocab, seed=seed, directions=directions,
                    params=MappingProxyType(params), source=str(self.path), devices=devices)

    def directions(self) -> tuple[str, ...]:
        return self._subset("directions", DIRECTIONS, "direction")

    def _subset(self, key: str, allowed: tuple[str, ...], what: str,
                default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """A non-empty list drawn from ``allowed`` (when not given: ``default``, else all), in ``allowed``'s order."""
        v = self.table.get(key, list(allowed if default is None else default))
        if not isinstance(v, list) or not v:
            self.fail(key, f"must be a non-empty list drawn from {', '.join(allowed)}")
        for item in v:
            if item not in allowed:
                self.fail(key, f"unknown {what} {item!r} (known: {', '.join(allowed)})")
        return tuple(item for item in allowed if item in v)

    def formats(self) -> tuple[str, ...]:
        if "formats" not in self.table:
            return ()
        v = self.table["formats"]
        if not isinstance(v, list) or not v:
            self.fail("formats", f"must be a non-empty list drawn from {', '.join(FORMATS)}")
        names: set[str] = set()
        for f in v:
            if not isinstance(f, str):
                self.fail("formats", f"{f!r} is not a format name")
            try:
                names.add(get_format(f).name)
            except FormatError:
                self.fail("formats", f"unknown format {f!r} (known: {', '.join(FORMATS)})")
        return tuple(f for f in FORMATS if f in names)

    def data(self, kind: str) -> tuple[tuple[Value, ...], ...] | None:
        t = self.table
        if "data" not in t:
            if kind == "explicit":
                self.fail("data", "missing (required by values = 'explicit')")
            return None
        if kind != "explicit":
            self.fail("data", "only applies to values = 'explicit'")
        v = t["data"]
        if not isinstance(v, list) or not v:
            self.fail("data", "must be a non-empty list of numbers (one row) or of rows")
        rows = v if all(isinstance(r, list) for r in v) else [v]
        if any(not isinstance(r, list) or not r for r in rows):
            self.fail("data", "mixes numbers and rows, or holds an empty row")
        if len({len(r) for r in rows}) != 1:
            self.fail("data", "rows have different lengths")
        return tuple(tuple(self.value("data", x) for x in r) for r in rows)

    def shape(self, data: tuple[tuple[Value, ...], ...] | None) -> tuple[int, int]:
        rows, n = self._shape(data)
        cap = max_case_elements()
        if rows * n > cap:
            self.fail("n", f"{rows:,} x {n:,} = {rows * n:,} elements is over the cap of {cap:,} elements per case "
                           f"(${MAX_ELEMENTS_VARIABLE} raises it)")
        return rows, n

    def _shape(self, data: tuple[tuple[Value, ...], ...] | None) -> tuple[int, int]:
        t = self.table
        rows = self.integer("rows", t["rows"], 1) if "rows" in t else None
        n = self.integer("n", t["n"], 1) if "n" in t else None
        if data is None:
            if n is None:
                self.fail("n", "missing (required unless values = 'explicit')")
            return rows or 1, n
        if n is not None and n != len(data[0]):
            self.fail("n", f"is {n} but the data rows hold {len(data[0])} values")
        if len(data) > 1 and rows is not None and rows != len(data):
            self.fail("rows", f"is {rows} but data holds {len(data)} rows")
        return (rows or 1) if len(data) == 1 else len(data), len(data[0])

    def params_for_values(self, kind: str, n: int, params: dict[str, Any]) -> None:
        t = self.table
        spread_kinds = ("normal", "uniform", "ramp")
        if "scale" in t and "scale_fraction_of_max" in t:
            self.fail("scale_fraction_of_max", "give either scale or scale_fraction_of_max, not both")
        for key in ("scale", "scale_fraction_of_max"):
            if key in t:
                if kind not in spread_kinds:
                    self.fail(key, f"only applies to values = {', '.join(spread_kinds)}")
                s = self.real(key, t[key], finite=True)
                if s < 0:
                    self.fail(key, f"must be >= 0, got {t[key]!r}")
                params[key] = s
        if "value" in t:
            if kind != "constant":
                self.fail("value", "only applies to values = 'constant'")
            params["value"] = self.value("value", t["value"])
        if kind == "confident" or "p_max" in t:
            if kind != "confident":
                self.fail("p_max", "only applies to values = 'confident'")
            if "p_max" not in t:
                self.fail("p_max", "missing (required by values = 'confident')")
            p = self.real("p_max", t["p_max"], finite=True)
            if not 0.0 < p < 1.0:
                self.fail("p_max", f"must lie strictly between 0 and 1, got {t['p_max']!r}")
            if n < 2:
                self.fail("p_max", "a confident row needs n >= 2")
            params["p_max"] = p

    def offset(self, params: dict[str, Any]) -> None:
        t = self.table
        if "offset" in t and "offset_fraction_of_max" in t:
            self.fail("offset_fraction_of_max", "give either offset or offset_fraction_of_max, not both")
        if "offset" in t:
            params["offset"] = self.real("offset", t["offset"], finite=True)
        if "offset_fraction_of_max" in t:
            f = self.real("offset_fraction_of_max", t["offset_fraction_of_max"], finite=True)
            if not -1.0 <= f <= 1.0:
                self.fail("offset_fraction_of_max", f"must lie in [-1, 1], got {t['offset_fraction_of_max']!r}")
            params["offset_fraction_of_max"] = f

    def mask(self, rows: int, params: dict[str, Any]) -> None:
        t = self.table
        pattern = self.choice("mask", t.get("mask", "none"), MASK_PATTERNS)
        if pattern == "none":
            for key in ("mask_fraction", "mask_value", "mask_mode", "mask_rows"):
                if key in t:
                    self.fail(key, "needs a mask pattern (key 'mask')")
            return
        params["mask"] = pattern
        if "mask_fraction" in t:
            if pattern not in ("prefix", "suffix", "scattered"):
                self.fail("mask_fraction", "only applies to mask = prefix, suffix, scattered")
            f = self.real("mask_fraction", t["mask_fraction"], finite=True)
            if not 0.0 <= f <= 1.0:
                self.fail("mask_fraction", f"must lie in [0, 1], got {t['mask_fraction']!r}")
            params["mask_fraction"] = f
        if "mask_value" in t:
            params["mask_value"] = self.value("mask_value", t["mask_value"])
        if "mask_mode" in t:
            params["mask_mode"] = self.choice("mask_mode", t["mask_mode"], MASK_MODES)
        if "mask_rows" in t:
            params["mask_rows"] = self.index_list("mask_rows", t["mask_rows"], rows, "row")

    def inject(self, rows: int, n: int) -> tuple[Mapping[str, Any], ...]:
        v = self.table["inject"]
        if not isinstance(v, list) or not v or not all(isinstance(e, dict) for e in v):
            self.fail("inject", "must be a non-empty list of tables, e.g. [{ value = 'nan', columns = [3] }]")
        out: list[Mapping[str, Any]] = []
        for e in v:
            for key in e:
                if key not in _INJECT_KEYS:
                    self.fail("inject", f"unknown key {key!r} in an injection (known: {', '.join(_INJECT_KEYS)})")
            if "value" not in e:
                self.fail("inject", "an injection needs a 'value'")
            entry: dict[str, Any] = {"value": self.value("inject", e["value"])}
            if ("columns" in e) == ("count" in e):
                self.fail("inject", "an injection needs exactly one of 'columns' or 'count'")
            if "columns" in e:
                entry["columns"] = self.index_list("inject", e["columns"], n, "column")
            else:
                count = self.integer("inject", e["count"], 1)
                if count > n:
                    self.fail("inject", f"count {count} exceeds n = {n}")
                entry["count"] = count
            if "rows" in e:
                entry["rows"] = self.index_list("inject", e["rows"], rows, "row")
            out.append(MappingProxyType(entry))
        return tuple(out)

    # -- cross-entropy -------------------------------------------------------

    def int64(self, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {v!r}")
        if not -2**63 <= v < 2**63:
            self.fail(key, f"{v} does not fit in int64")
        return v

    def loss(self, ops: tuple[str, ...], rows: int, n: int, params: dict[str, Any]) -> None:
        """The cross-entropy keys (LOSS_KEYS): targets, smoothing, ignore_index, weights, reduction."""
        t = self.table
        given = [k for k in LOSS_KEYS if k in t]
        if not given:
            return
        if "cross_entropy" not in ops:
            self.fail(given[0], "only applies to cross_entropy (add it to ops)")
        kind = self.choice("target_kind", t.get("target_kind", "index"), TARGET_KINDS)
        if "target_kind" in t:
            params["target_kind"] = kind
        if kind != "index":
            for key in ("ignore_index", "ignored_rows", "out_of_range", "out_of_range_rows"):
                if key in t:
                    self.fail(key, "only applies to class-index targets (target_kind = 'index')")
        zeros = "none"
        if "probability_zeros" in t:
            if kind != "probability":
                self.fail("probability_zeros", "only applies to target_kind = 'probability'")
            zeros = params["probability_zeros"] = self.choice("probability_zeros", t["probability_zeros"],
                                                              PROBABILITY_ZEROS)
        if "target" in t:
            if kind == "probability" and zeros != "one-hot":
                self.fail("target", "only applies to class-index targets and to probability_zeros = 'one-hot'")
            params["target"] = self.target(t["target"], rows, n, one_hot=kind == "probability")
        if "label_smoothing" in t:
            eps = self.real("label_smoothing", t["label_smoothing"], finite=True)
            if not 0.0 <= eps <= 1.0:
                self.fail("label_smoothing", f"must lie in [0, 1], got {t['label_smoothing']!r}")
            params["label_smoothing"] = eps
        ignore = None
        if "ignore_index" in t:
            ignore = params["ignore_index"] = self.int64("ignore_index", t["ignore_index"])
        if "ignored_rows" in t:
            if ignore is None:
                self.fail("ignored_rows", "needs ignore_index (the value written into those rows' targets)")
            v = t["ignored_rows"]
            if isinstance(v, str):
                if v != "all":
                    self.fail("ignored_rows", f"must be 'all' or a non-empty list of row indices, got {v!r}")
                params["ignored_rows"] = "all"
            else:
                params["ignored_rows"] = self.index_list("ignored_rows", v, rows, "row")
        if "weight" in t:
            params["weight"] = self.weight(t["weight"], n)
        if "reduction" in t:
            params["reduction"] = self.choice("reduction", t["reduction"], REDUCTIONS)
        self.out_of_range(rows, n, ignore, params)
        explicit = params.get("target")
        if isinstance(explicit, tuple) and ignore is None and TORCH_DEFAULT_IGNORE_INDEX in explicit:
            self.fail("target", f"{TORCH_DEFAULT_IGNORE_INDEX} is torch's default ignore_index: set ignore_index = "
                                f"{TORCH_DEFAULT_IGNORE_INDEX} to ignore the row, or pick another target")

    def target(self, v: Any, rows: int, n: int, one_hot: bool) -> str | tuple[int, ...]:
        if isinstance(v, str):
            return self.choice("target", v, TARGET_CHOICES)
        if not isinstance(v, list) or len(v) != rows:
            self.fail("target", f"must be one of {', '.join(TARGET_CHOICES)} or a list of {rows} class indices "
                                f"(one per row), got {v!r}")
        out = tuple(self.int64("target", i) for i in v)
        if one_hot:
            for i in out:
                if not 0 <= i < n:
                    self.fail("target", f"{i} is not a class in [0, {n}) (a one-hot probability target needs one)")
        return out

    def weight(self, v: Any, n: int) -> str | tuple[float, ...]:
        if isinstance(v, str):
            return self.choice("weight", v, WEIGHT_CHOICES)
        if not isinstance(v, list) or len(v) != n:
            self.fail("weight", f"must be one of {', '.join(WEIGHT_CHOICES)} or a list of {n} numbers "
                                f"(one per class), got {v!r}")
        out = tuple(self.real("weight", w, finite=True) for w in v)
        for w, raw in zip(out, v):
            if w < 0:
                self.fail("weight", f"class weights must be >= 0, got {raw!r}")
        return out

    def out_of_range(self, rows: int, n: int, ignore: int | None, params: dict[str, Any]) -> None:
        t = self.table
        kind = self.choice("out_of_range", t.get("out_of_range", "none"), OUT_OF_RANGE)
        if "out_of_range_rows" in t and kind == "none":
            self.fail("out_of_range_rows", "needs out_of_range = 'high' or 'negative'")
        if kind == "none":
            return
        params["out_of_range"] = kind
        bad = n if kind == "high" else -1
        if ignore == bad:
            self.fail("out_of_range", f"the {kind} target {bad} equals ignore_index: it would be ignored, "
                                      f"not out of range")
        if "out_of_range_rows" in t:
            params["out_of_range_rows"] = self.index_list("out_of_range_rows", t["out_of_range_rows"], rows, "row")
        oor_rows = set(params.get("out_of_range_rows", PARAM_DEFAULTS["out_of_range_rows"]))
        ignored = params.get("ignored_rows")
        both = sorted(oor_rows & set(range(rows) if ignored == "all" else ignored or ()))
        if both:
            self.fail("out_of_range_rows", f"row {both[0]} is also one of ignored_rows")


def case_from_table(table: Mapping[str, Any], source: str = "<search>") -> Case:
    """One ``[[case]]`` table (as TOML would parse it) checked and read into a Case, exactly as a
    case file's would be: the search builds its inputs this way, so what it saves is what it judged."""
    return _CaseReader(Path(source), 0, dict(table)).read()
