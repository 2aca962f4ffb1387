"""Active experiments: small discriminating inputs that settle what the records leave open.

Each experiment is a handful of tiny cases (TOML tables in the format of docs/cases.md, family
``diagnosis``), written to a temporary directory and audited through the public
``softaudit.audit(...)`` API with ``cases_dirs=[that directory]`` — the same candidate, the same
reference engine and judging as the audit. An experiment returns the records of its cases, keyed
by the case name's suffix, as plain dicts of the results document. They cost a few seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CaseTable = dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A named set of cases for one op x direction x format."""

    id: str
    purpose: str
    op: str
    direction: str
    dtype: str
    cases: tuple[tuple[str, CaseTable], ...]   # (suffix, table without name/family/description)


@dataclass
class ExperimentResult:
    """What an experiment gave: records by case suffix, or the error that prevented it."""

    experiment: Experiment
    records: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def ratio(self, suffix: str) -> float | None:
        """The record's max_ratio; inf for a hard failure (class mismatch or error), None if absent."""
        r = self.records.get(suffix)
        if r is None or r.get("verdict") == "SKIP":
            return None
        if r.get("mismatch_kinds") or r.get("error"):
            return math.inf
        v = r.get("max_ratio")
        return float(v) if isinstance(v, (int, float)) else None

    def failed(self, suffix: str) -> bool | None:
        r = self.records.get(suffix)
        if r is None or r.get("verdict") == "SKIP":
            return None
        return r.get("verdict") in ("FAIL", "WARN")

    def worst(self, suffix: str) -> tuple[float, float] | None:
        """(computed, exact) at the worst (else first mismatching) element."""
        r = self.records.get(suffix) or {}
        loc = r.get("worst") or r.get("first_mismatch")
        if not loc:
            return None
        try:
            return float(loc["computed"]), float(loc["exact"])
        except (KeyError, TypeError, ValueError):
            return None


# --------------------------------------------------------------------------------------------
# The experiments

def _ops(op: str) -> list[str]:
    return [op]


def _base(op: str, direction: str, **kw: Any) -> CaseTable:
    t: CaseTable = {"ops": _ops(op), "directions": [direction]}
    t.update(kw)
    return t


LADDER = (8.0, 10.0, 12.5, 20.0, 40.0, 60.0, 80.0, 86.0, 92.0, 100.0, 130.0, 200.0, 400.0, 700.0, 706.0,
          714.0, 750.0, 1000.0)
"""Offsets of the overflow ladder: points just below and above exp's limits (11.09, 88.72, 709.78)."""


LADDER_N = 4
"""Row length of the ladder: a sum of n terms overflows log(n) before a single exp does."""


def offset_ladder(op: str, direction: str, dtype: str) -> Experiment:
    """Rows of 4 (sigma 0.1) at rising offsets: where does the first failure start?"""
    cases = tuple((f"off-{o:g}", _base(op, direction, rows=2, n=LADDER_N, scale=0.1, offset=o, seed=11)) for o in LADDER)
    return Experiment("offset-ladder", "the overflow threshold: exp's limit (no shift) or elsewhere (a fixed shift)",
                      op, direction, dtype, cases)


def shift_invariance(op: str, direction: str, dtype: str) -> Experiment:
    """The same row at offsets 0, 1e3 and 1e6 (1e2 and 1e4 in 16-bit formats)."""
    offs = (0.0, 1e2, 1e4) if dtype in ("float16", "bfloat16") else (0.0, 1e3, 1e6)
    cases = tuple((f"shift-{i}", _base(op, direction, rows=4, n=64, scale=4.0, offset=o, seed=12))
                  for i, o in enumerate(offs))
    return Experiment("shift-invariance", "error growing with the offset: absorption into a large max",
                      op, direction, dtype, cases)


LENGTHS = (64, 256, 1024, 4096, 16384, 65536)


def length_scaling(op: str, direction: str, dtype: str) -> Experiment:
    """Rows of n = 2^k entries, half 0 and half log(1/3): the sum's error against n."""
    cases = tuple((f"len-{n}", _base(op, direction, rows=1, n=n, values="constant", value=0.0,
                                     inject=[{"value": -1.0986122886681098, "count": n // 2}], seed=13))
                  for n in LENGTHS)
    return Experiment("length-scaling", "error against the row length: linear growth, or saturation at 256/2048",
                      op, direction, dtype, cases)


def sum_overflow(op: str, direction: str, dtype: str) -> Experiment:
    """Constant rows of 49152 and 98304 zeros: a sum of n ones crosses float16's 65504."""
    cases = tuple((f"zeros-{n}", _base(op, direction, rows=1, n=n, values="constant", value=0.0, seed=14))
                  for n in (49152, 98304))
    return Experiment("sum-overflow", "the denominator crossing float16's largest finite value", op, direction,
                      dtype, cases)


def first_tile_masked(op: str, direction: str, dtype: str) -> Experiment:
    """A row of 8192 whose first 6144 entries are -inf, against one with a 16-entry masked prefix."""
    cases = (("long-prefix", _base(op, direction, rows=2, n=8192, mask="prefix", mask_fraction=0.75, seed=15)),
             ("short-prefix", _base(op, direction, rows=2, n=8192, mask="prefix", mask_fraction=16 / 8192, seed=15)))
    return Experiment("first-tile-masked", "a fully masked first tile: the online rescale from -inf",
                      op, direction, dtype, cases)


def nan_at_max(op: str, direction: str, dtype: str) -> Experiment:
    """A NaN where the row's max would be, beside a clean row."""
    row = [0.5, -1.25, "nan", 0.25, -0.75, 1.125, -2.0, 0.0]
    clean = [0.5, -1.25, 3.0, 0.25, -0.75, 1.125, -2.0, 0.0]
    cases = (("nan", _base(op, direction, values="explicit", data=[row, clean])),)
    return Experiment("nan-at-max", "a NaN at the max position: does it propagate to its row?", op, direction,
                      dtype, cases)


GAPS = (5.0, 12.0, 20.0, 35.0, 50.0, 70.0, 85.0, 100.0, 150.0, 300.0, 600.0, 800.0)


def gap_ladder(op: str, direction: str, dtype: str) -> Experiment:
    """Rows of 8 zeros with one entry g below: its probability e^-g / 7 against g."""
    extra: CaseTable = {"target": "min"} if op == "cross_entropy" else {}   # the loss's target: the far entry
    cases = tuple((f"gap-{g:g}", _base(op, direction, rows=1, n=8, values="constant", value=0.0, gap=-g, seed=16,
                                       **extra)) for g in GAPS)
    return Experiment("gap-ladder", "one score far below the max: saturation (clamp, eps) or -inf (log of 0)",
                      op, direction, dtype, cases)


def exp_accuracy(op: str, direction: str, dtype: str) -> Experiment:
    """Short rows (n = 8) ramping from 0 to -20 at offset 0: only exp's own error is left."""
    cases = (("ramp", _base(op, direction, rows=2, n=8, values="ramp", scale=20.0, seed=17)),)
    return Experiment("exp-accuracy", "offset-free relative error of exp on short rows", op, direction, dtype, cases)


def smoothing(op: str, direction: str, dtype: str) -> Experiment:
    """Smoothing: eps = 0.3, and eps = 0.1 over finfo.min-masked logits, against eps = 0 (reduction none)."""
    common = dict(rows=8, n=64, scale=2.0, seed=18)
    cases = (("eps-0.3", _base(op, direction, label_smoothing=0.3, **common)),
             ("eps-0.1-finfo-min", _base(op, direction, label_smoothing=0.1, mask="scattered",
                                         mask_value="finfo.min", **common)),
             ("eps-0", _base(op, direction, **common)))
    return Experiment("smoothing", "label smoothing against its closed form", op, direction, dtype, cases)


def ignored_mean(op: str, direction: str, dtype: str) -> Experiment:
    """Ignored rows under reduction mean, against the same rows with reduction none."""
    common = dict(rows=8, n=64, scale=2.0, seed=19, ignore_index=-100, ignored_rows=[1, 2, 5])
    cases = (("mean", _base(op, direction, reduction="mean", **common)),
             ("none", _base(op, direction, reduction="none", **common)))
    return Experiment("ignored-mean", "the mean over kept rows only", op, direction, dtype, cases)


# linear_cross_entropy's experiments: its cases have shape keys of their own (tokens, vocab,
# hidden_size: docs/cases.md#linear-cross-entropy-cases), small enough for references in a second.

LINEAR_TOKENS = (1, 128)
"""Token counts of the token-count experiment: one token is one chunk whatever the chunking."""


def token_count(op: str, direction: str, dtype: str) -> Experiment:
    """The same projection (vocabulary 256, hidden 32) with 1 token and with 128: a gradient summed
    over the tokens (across chunks) in a narrow accumulator fails with many, never with one."""
    cases = tuple((f"tokens-{t}", _base(op, direction, tokens=t, vocab=256, hidden_size=32, logit_std=4.0,
                                        reduction="sum", seed=21)) for t in LINEAR_TOKENS)
    return Experiment("token-count", "the weight gradient over 1 token (a single chunk) and over 128",
                      op, direction, dtype, cases)


LOGIT_MARGINS = (4.0, 32.0)
"""Target logits of the logit-scale experiment's confident tokens."""


def logit_scale(op: str, direction: str, dtype: str) -> Experiment:
    """Confident tokens whose target logit is 4 and 32: a logit rounded to the format moves by
    u |z|, so the loss's relative error grows with the logit; the working precision's does not."""
    cases = tuple((f"margin-{m:g}", _base(op, direction, tokens=8, vocab=256, hidden_size=32, logit_std=1.0,
                                          confident_tokens=1.0, confident_margin=m, reduction="none", seed=22))
                  for m in LOGIT_MARGINS)
    return Experiment("logit-scale", "the error against the logits' magnitude: logits rounded to the format",
                      op, direction, dtype, cases)


SMOOTHING_VOCABS = (1024, 16384)
"""Vocabularies of the smoothing-vocabulary experiment: sum_c -log p_c about 7e3 and 1.6e5."""


def smoothing_vocabulary(op: str, direction: str, dtype: str) -> Experiment:
    """Label smoothing 0.1 over 1024 and 16384 classes: a plain sum of -log p_c over the classes
    (about V log V) stays below float16's 65504 at 1024 and overflows at 16384."""
    cases = tuple((f"vocab-{v}", _base(op, direction, tokens=4, vocab=v, hidden_size=16, logit_std=2.0,
                                       label_smoothing=0.1, reduction="none", seed=23)) for v in SMOOTHING_VOCABS)
    return Experiment("smoothing-vocabulary", "label smoothing's sum over the classes against the vocabulary",
                      op, direction, dtype, cases)


# --------------------------------------------------------------------------------------------
# Case files

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} to TOML")


def case_names(exp: Experiment, tag: str) -> dict[str, str]:
    """Case name -> suffix for an experiment written with ``tag``."""
    return {f"diag-{tag}-{exp.id}-{suffix}".replace("_", "-"): suffix for suffix, _ in exp.cases}


def write_cases(exp: Experiment, directory: Path, tag: str) -> Path:
    """Write the experiment's cases as one TOML file in ``directory``; its path."""
    lines: list[str] = []
    for name, (suffix, table) in zip(case_names(exp, tag), exp.cases):
        lines += ["[[case]]", f"name = {_toml_value(name)}", 'family = "diagnosis"',
                  f"description = {_toml_value(exp.purpose + ' (' + suffix + ')')}",
                  f"formats = {_toml_value([exp.dtype])}"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path = directory / f"{tag}-{exp.id}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Running them through the public API

@dataclass
class Subject:
    """The candidate a diagnosis is for: its name in the records and how to get it back.

    ``impl`` is what ``softaudit.audit`` accepts (a callable, a mapping, a module); without it
    the module is imported from ``target`` (a file path, or ``builtin:NAME``).
    """

    name: str
    target: str | None = None
    impl: Any = None


Runner = Callable[[Subject, Experiment], ExperimentResult]


def load_subject(subject: Subject) -> Any:
    if subject.impl is not None:
        return subject.impl
    target = subject.target or ""
    if target.startswith("builtin:"):
        mod = target.split(":", 1)[1].replace("-", "_")
        mod = {"torch": "torch_ops", "jax": "jax_ops"}.get(mod, mod)
        for pkg in ("softaudit.builtins", "softaudit.candidates.builtins"):
            try:
                return importlib.import_module(f"{pkg}.{mod}")
            except ImportError:
                continue
        raise ImportError(f"cannot import {target}")
    path = Path(target)
    if not path.is_file():
        raise ImportError(f"{target}: not a file this process can import")
    text = path.read_text(errors="replace")
    if "triton" in text and "TRITON_INTERPRET" not in os.environ:
        try:
            import torch
            if not torch.cuda.is_available():
                os.environ["TRITON_INTERPRET"] = "1"
        except ImportError:
            pass
    name = f"_softaudit_diag_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{target}: cannot import")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


class AuditRunner:
    """Runs experiments with ``softaudit.audit`` on the imported candidate; caches the import."""

    def __init__(self, cache_dir: str | Path | None = None, device: str = "cpu") -> None:
        self.cache_dir = cache_dir
        self.device = device
        self._impls: dict[str, Any] = {}
        self._count = 0

    def __call__(self, subject: Subject, exp: Experiment) -> ExperimentResult:
        import softaudit

        t0 = time.perf_counter()
        result = ExperimentResult(exp)
        try:
            key = subject.target or subject.name
            if key not in self._impls:
                self._impls[key] = load_subject(subject)
            impl = self._impls[key]
            self._count += 1
            tag = f"x{os.getpid()}n{self._count}"
            with tempfile.TemporaryDirectory(prefix="softaudit-diag-") as tmp:
                write_cases(exp, Path(tmp), tag)
                names = case_names(exp, tag)
                report = softaudit.audit(impl, ops=[exp.op], directions=[exp.direction], dtypes=[exp.dtype],
                                         cases=list(names), cases_dirs=[tmp], cache_dir=self.cache_dir,
                                         device=self.device, diagnose=False)
                out = Path(tmp) / "r.json"
                report.to_json(out)
                doc = json.loads(out.read_text())
            many = {r.get("candidate") for r in doc.get("results", [])}
            for r in doc.get("results", []):
                if len(many) > 1 and r.get("candidate") != subject.name:
                    continue
                suffix = names.get(r.get("case", ""))
                if suffix is not None:
                    result.records[suffix] = r
        except Exception as exc:  # an experiment that cannot run leaves the records to decide
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        result.seconds = time.perf_counter() - t0
        return result
