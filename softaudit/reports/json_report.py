"""The JSON report: the results document written to a file (its schema: results/schema.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softaudit.files import write_text
from softaudit.results.schema import results_json
from softaudit.runner.loop import AuditResult

if TYPE_CHECKING:
    from softaudit.runner.loop import AuditResult


def write_json(path: Path, result: AuditResult, diagnoses: Sequence[Any] | None = None) -> None:
    """Write the results document atomically (softaudit.files.write_text), with ``diagnoses`` when given."""
    write_text(path, results_json(result, diagnoses))
