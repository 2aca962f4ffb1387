"""A diagnosis as the results document holds it: the ranked likely causes of one candidate x op x
direction's failures (softaudit.diagnosis computes them; docs/diagnosis.md, docs/json-schema.md).

Plain data, written and read back with the rest of the results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ExperimentRun:
    """An experiment as a cause reports it."""

    id: str
    purpose: str
    dtype: str
    outcome: str
    seconds: float


@dataclass
class Cause:
    """One likely cause of a group's failures."""

    class_id: str
    title: str
    confidence: float
    finding: str
    evidence: list[str]
    experiments: list[ExperimentRun] = field(default_factory=list)
    settled_by: str | None = None
    explanation: str = ""
    fix: str = ""
    sketch: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confidence"] = round(self.confidence, 2)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Cause:
        """A cause as ``to_dict`` wrote it (KeyError, TypeError or ValueError when malformed)."""
        conf = d["confidence"]
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
            raise ValueError(f"confidence {conf!r} is not a number in [0, 1]")
        runs = []
        for e in d.get("experiments") or []:
            runs.append(ExperimentRun(str(e["id"]), str(e.get("purpose", "")), str(e.get("dtype", "")),
                                      str(e.get("outcome", "")), float(e.get("seconds", 0.0))))
        evidence = d.get("evidence") or []
        if not isinstance(evidence, list):
            raise ValueError("evidence is not a list of record ids")
        settled = d.get("settled_by")
        return Cause(str(d["class_id"]), str(d.get("title", "")), float(conf), str(d.get("finding", "")),
                     [str(x) for x in evidence], runs, None if settled is None else str(settled),
                     str(d.get("explanation", "")), str(d.get("fix", "")), str(d.get("sketch", "")))


@dataclass
class Diagnosis:
    """The ranked causes of one candidate x op x direction."""

    candidate: str
    op: str
    direction: str
    verdict: str
    failing_records: int
    causes: list[Cause]
    failing: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    """(dtype, case) -> record id of every failing record (not in to_dict)."""

    def summary_line(self) -> str:
        head = f"{self.candidate} {self.op}{' bwd' if self.direction == 'backward' else ''}"
        if not self.causes:
            return f"{head}: no cause"
        c = self.causes[0]
        more = f" (+{len(self.causes) - 1} more)" if len(self.causes) > 1 else ""
        by = f"; settled by {c.settled_by}" if c.settled_by else ""
        return f"{head}: {c.class_id} ({c.confidence:.2f}) {c.finding}{by}{more}"

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Diagnosis:
        """A diagnosis as ``to_dict`` wrote it (KeyError, TypeError or ValueError when malformed)."""
        if d.get("direction") not in ("forward", "backward"):
            raise ValueError(f"direction {d.get('direction')!r} is not forward or backward")
        if d.get("verdict") not in ("FAIL", "WARN"):
            raise ValueError(f"verdict {d.get('verdict')!r} is not FAIL or WARN")
        causes = d["causes"]
        if not isinstance(causes, list):
            raise ValueError("causes is not a list")
        return Diagnosis(str(d["candidate"]), str(d["op"]), str(d["direction"]), str(d["verdict"]),
                         int(d.get("failing_records", 0)), [Cause.from_dict(c) for c in causes])

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "op": self.op, "direction": self.direction, "verdict": self.verdict,
                "failing_records": self.failing_records, "causes": [c.to_dict() for c in self.causes]}
