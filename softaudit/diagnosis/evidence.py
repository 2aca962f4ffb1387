"""Features read from a candidate's records: the plain dicts of the results document.

Nothing here imports the audit machinery: a record is the JSON object docs/json-schema.md
describes (``verdict``, ``case``, ``family``, ``parameters``, ``max_ratio``, ``mismatch_kinds``,
``worst``, ``first_mismatch``, ``input_summary``, ``dtype``, ``op``, ``direction``...), so the
diagnosis works on a live audit and on a results file read back alike.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PRECISION = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}
"""Significand bits of each format."""
MIN_EXP = {"float64": -1022, "float32": -126, "float16": -14, "bfloat16": -126}
"""Exponent of the smallest normal number of each format."""
EXP_OVERFLOW = {"float16": 11.09, "float32": 88.72, "float64": 709.78}
"""exp's overflow threshold of each working format (bfloat16 shares float32's)."""
SIXTEEN_BIT = ("float16", "bfloat16")


def num(v: Any) -> float | None:
    """A JSON number or one of the strings "nan", "inf", "-inf" (or a decimal string) as a float."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def ulp(value: float, fmt: str) -> float:
    """The spacing of ``fmt`` at ``value`` (subnormal spacing below the normal range)."""
    p, emin = PRECISION[fmt], MIN_EXP[fmt]
    if not math.isfinite(value) or value == 0:
        return 2.0 ** (emin - p + 1)
    e = max(math.frexp(abs(value))[1] - 1, emin)
    return 2.0 ** (e - p + 1)


@dataclass
class RecordView:
    """One record, with the fields the diagnosis reads parsed once."""

    raw: Mapping[str, Any]
    id: str
    candidate: str
    op: str
    direction: str
    dtype: str
    case: str
    family: str
    verdict: str
    kinds: dict[str, int]
    max_ratio: float | None
    input_modified: bool
    error: str | None
    n: int
    rows: int
    offset: float
    range: float | None
    neg_inf: int
    nan: int
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, r: Mapping[str, Any]) -> RecordView:
        s = r.get("input_summary") or {}
        return cls(
            raw=r, id=str(r.get("id", "")), candidate=str(r.get("candidate", "")), op=str(r.get("op", "")),
            direction=str(r.get("direction", "forward")), dtype=str(r.get("dtype", "")),
            case=str(r.get("case", "")), family=str(r.get("family", "")), verdict=str(r.get("verdict", "")),
            kinds=dict(r.get("mismatch_kinds") or {}), max_ratio=num(r.get("max_ratio")),
            input_modified=bool(r.get("input_modified")), error=r.get("error"),
            n=int(s.get("n") or 0), rows=int(s.get("rows") or 0), offset=num(s.get("offset")) or 0.0,
            range=num(s.get("range")), neg_inf=int(s.get("neg_inf") or 0), nan=int(s.get("nan") or 0),
            params=dict(r.get("parameters") or {}))

    # --- verdict-level features -------------------------------------------------------------
    @property
    def failing(self) -> bool:
        return self.verdict in ("FAIL", "WARN")

    @property
    def passing(self) -> bool:
        return self.verdict == "PASS"

    @property
    def hard(self) -> bool:
        """A class mismatch (NaN/inf where the exact value is finite, or the reverse)."""
        return bool(self.kinds)

    def kind(self, *prefixes: str) -> int:
        """Elements whose mismatch kind starts with any of ``prefixes`` ("finite->nan", "nan->")."""
        return sum(c for k, c in self.kinds.items() if any(k.startswith(p) for p in prefixes))

    @property
    def undefined_other(self) -> int:
        return int((self.raw.get("undefined_rows") or {}).get("other", 0))

    @property
    def undefined_only(self) -> bool:
        """Failing only through its undefined rows: every defined element is within the envelope."""
        reasons = " ".join(self.raw.get("reasons") or []).lower()
        return (self.failing and not self.hard and not self.error and "undefined" in reasons
                and (self.max_ratio is None or self.max_ratio <= 1.0))

    @property
    def tensors(self) -> dict[str, float]:
        """linear_cross_entropy: the failing tensors and their worst ratios (evidence.tensor_ratios)."""
        return tensor_ratios(self.raw)

    # --- element-level features -------------------------------------------------------------
    def location(self) -> Mapping[str, Any] | None:
        return self.raw.get("first_mismatch") or self.raw.get("worst")

    def worst_values(self) -> tuple[float, float] | None:
        """(computed, exact) at the worst element, as floats (None without one)."""
        w = self.raw.get("worst")
        if not w:
            return None
        c, e = num(w.get("computed")), num(w.get("exact"))
        if c is None or e is None:
            return None
        return c, e

    def error_in(self, fmt: str) -> float | None:
        """The worst element's error in ulps of ``fmt`` (a lower format: "how early was it rounded")."""
        v = self.worst_values()
        if v is None or not all(math.isfinite(x) for x in v):
            return None
        c, e = v
        return abs(c - e) / ulp(e, fmt)


Group = tuple[str, str, str]
"""(candidate, op, direction): the unit a diagnosis is given for."""


def group_records(records: Iterable[Mapping[str, Any]]) -> dict[Group, list[RecordView]]:
    """The records by candidate x op x direction, in their order (import records left out)."""
    out: dict[Group, list[RecordView]] = defaultdict(list)
    for r in records:
        v = RecordView.of(r)
        if v.op in ("", "import"):
            continue
        out[(v.candidate, v.op, v.direction)].append(v)
    return dict(out)


def worst_first(views: Iterable[RecordView]) -> list[RecordView]:
    """Failing records, hard failures and higher ratios first."""
    def key(v: RecordView) -> tuple[int, int, float]:
        return (0 if v.verdict == "FAIL" else 1, 0 if v.hard or v.error else 1, -(v.max_ratio or 0.0))
    return sorted((v for v in views if v.failing), key=key)


LINEAR_TENSORS = {"hidden gradient": "hidden", "weight gradient": "weight", "bias gradient": "bias"}
"""linear_cross_entropy's backward reasons name their tensor with these prefixes (judging.linear_rules)."""
_RATIO = re.compile(r"\(ratio ([^)]+)\)")


def tensor_ratios(record: Mapping[str, Any]) -> dict[str, float]:
    """A linear_cross_entropy record's failing or warning tensors ("loss" forward; "hidden",
    "weight", "bias" backward) and each one's worst stability ratio (inf for a wrong class)."""
    out: dict[str, float] = {}
    if record.get("verdict") not in ("FAIL", "WARN") or record.get("error"):
        return out
    for reason in record.get("reasons") or []:
        head, _, rest = str(reason).partition(": ")
        name = LINEAR_TENSORS.get(head)
        if name is None:
            if record.get("direction", "forward") != "forward" or "modified its input" in reason:
                continue
            name, rest = "loss", str(reason)
        m = _RATIO.search(rest)
        ratio = math.inf if "wrong class" in rest else (num(m.group(1)) if m else None)
        if ratio is None:
            ratio = num(record.get("max_ratio")) or 0.0
        out[name] = max(out.get(name, 0.0), ratio)
    return out
