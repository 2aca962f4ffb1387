"""A results document: one audit's records with their context, as reports, compare and repro read it.

Reports are built from this form only, so ``softaudit report r.json`` after the fact and
``softaudit run --html`` in one go give the same file. results/schema.py reads and writes its JSON;
a malformed file raises ResultsError (bad input: one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from softaudit.errors import BadInput
from softaudit.results.records import Record, SpeedRecord

if TYPE_CHECKING:
    from softaudit.results.diagnoses import Diagnosis


class ResultsError(BadInput):
    """The results file cannot be read or is not a softaudit results file."""


@dataclass
class ResultsDocument:
    """One audit's results with their context (environment, options, candidates, summary)."""

    records: list[Record]
    environment: dict = field(default_factory=dict)
    speed: list[SpeedRecord] = field(default_factory=list)
    """With --bench: the speed measurements (one per candidate x op x direction x format x shape)."""
    options: dict = field(default_factory=dict)
    candidates: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    complete: bool = True
    softaudit_version: str | None = None
    schema_version: int = 1
    source: str = ""
    """Where the document came from: the JSON path, or "" for an audit just run."""
    diagnoses: list[Diagnosis] | None = None
    """The diagnosis of every candidate x op x direction with a FAIL or WARN (docs/diagnosis.md);
    None when the diagnosis did not run (--no-diagnose, or a file written without it)."""

    def record(self, record_id: str) -> Record:
        """The record with this id; ResultsError naming near matches when there is none."""
        for r in self.records:
            if r.id == record_id:
                return r
        near = [r.id for r in self.records if record_id.split("/")[-1] in r.id][:5]
        hint = f"; did you mean {', '.join(near)}?" if near else "; ids are candidate/op/direction/dtype/case"
        raise ResultsError(f"no record {record_id!r} in {self.source or 'the results'}{hint}")

    @property
    def baseline(self) -> str | None:
        """The relative rule's baseline candidate: reported, but its FAILs do not set the exit code."""
        return self.options.get("baseline")

    def counts(self, gated_only: bool = False) -> dict[str, int]:
        """Records per verdict; ``gated_only`` leaves out the baseline's (they do not gate)."""
        out = {"PASS": 0, "WARN": 0, "FAIL": 0, "SKIP": 0}
        for r in self.records:
            if gated_only and r.candidate == self.baseline:
                continue
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out

def rerun_command(record: Record, document: ResultsDocument) -> str:
    """The ``softaudit run`` line that audits just this record again (shell-quoted); for a callable
    audited through the Python API (target ``python:NAME``), a note to rerun the test instead."""
    import shlex

    if record.target.startswith("python:"):
        return f"# {record.target} was audited through softaudit.audit(): rerun the test that called it"
    args = ["softaudit", "run", record.target]
    if record.op != "import":
        args += ["--op", record.op, "--direction", record.direction, "--dtype", record.dtype, "--case", record.case]
    for d in document.options.get("cases_dirs") or []:
        args += ["--cases-dir", str(d)]
    seed = document.options.get("seed", document.environment.get("seed", 0))
    if seed:
        args += ["--seed", str(seed)]
    if document.options.get("rowwise"):
        args.append("--rowwise")
    device = document.options.get("device")
    if device and device != "auto":
        args += ["--device", str(device)]
    return " ".join(shlex.quote(a) for a in args)


def repro_command(record: Record, document: ResultsDocument) -> str:
    """The ``softaudit repro`` line that writes a standalone script for this record (shell-quoted)."""
    import shlex

    if record.target.startswith("python:"):
        return f"# {record.target} was audited through softaudit.audit(): no file to reproduce from"
    source = document.source or "RESULTS.json"
    return " ".join(shlex.quote(a) for a in ["softaudit", "repro", source, record.id])
