"""JUnit XML for CI test views (GitHub, GitLab, Jenkins): a test suite per candidate, a test case per record.

Mapping, chosen so CI counts what softaudit counts:

* PASS: a passing test case.
* WARN: a passing test case with a ``<system-out>`` note ("WARN: ..."); WARN does not fail the
  audit unless --strict, in which case the record already is a FAIL.
* FAIL: ``<failure>``, always, also when the candidate crashed, hung or broke the contract
  (``record.error``): the kernel failed, the harness did not, and CI should count it among the
  failures. ``type`` says which kind: ``import``, ``input-modified``, ``crash``, ``wrong-class``,
  ``undefined-rows`` or ``accuracy`` (error beyond the envelope or a limit). ``message`` is the
  first reason on one line; the body has every reason, the element at fault, the error, the notes
  and the command that reruns the record. No ``<error>`` element is ever written.
* SKIP: ``<skipped message="reason"/>``.
* A target whose module failed to import (op "import"): a test case named "import" with a failure.
* With --bench, a suite's ``<system-out>`` holds the candidate's speed table as text (speed is a
  measurement, not a test: it is never a test case and never fails one).

Built with ElementTree, so markup in names is escaped; characters XML 1.0 forbids (control
characters other than tab, newline and carriage return, lone surrogates, U+FFFE, U+FFFF) are
removed from every string first.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from softaudit.judging.verdicts import FAIL, SKIP, UNDEFINED_POLICIES, WARN, rejected_undefined
from softaudit.reports.markdown_report import describe_element
from softaudit.reports.terminal import SPEED_LEGEND, speed_grid
from softaudit.results.document import ResultsDocument, rerun_command
from softaudit.results.records import Record, SpeedRecord

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
SUITE_PROPERTIES = ("softaudit", "torch", "numpy", "device", "seed", "python", "platform")
"""Environment keys written as properties of every suite."""


def xml_safe(text: object) -> str:
    """``text`` with the characters XML 1.0 cannot hold removed."""
    return _XML_ILLEGAL.sub("", str(text))


def _one_line(text: object) -> str:
    return " ".join(xml_safe(text).split())


def _seconds(value: float) -> str:
    """Fixed-point seconds: some JUnit readers reject exponent notation."""
    seconds = float(value)
    return f"{seconds if math.isfinite(seconds) and seconds > 0 else 0.0:.6f}"


def classname(record: Record) -> str:
    """softaudit.CANDIDATE.OP.DIRECTION.DTYPE, dots in the candidate name made underscores so the
    dotted hierarchy CI tools show stays candidate > op > direction > format."""
    candidate = record.candidate.replace(".", "_")
    if record.op == "import":
        return f"softaudit.{candidate}"
    return f"softaudit.{candidate}.{record.op}.{record.direction}.{record.dtype}"


def failure_type(record: Record, doc: ResultsDocument) -> str:
    """The kind of FAIL, in the order the reasons list them."""
    if record.op == "import":
        return "import"
    if record.input_modified:
        return "input-modified"
    if record.error is not None:
        return "crash"
    m = record.metrics
    if m is not None and m.class_mismatches:
        return "wrong-class"
    policy = doc.options.get("undefined_policy")
    if m is not None and isinstance(policy, str) and policy in UNDEFINED_POLICIES \
            and rejected_undefined(m, policy):
        return "undefined-rows"
    return "accuracy"


def _details(record: Record, doc: ResultsDocument) -> str:
    """The body of a failure or WARN note: everything needed to understand and rerun the record,
    one line per item (names, reasons and notes are collapsed to one line each)."""
    lines = [_one_line(record.id), "", "reasons:", *(f"  - {_one_line(r)}" for r in record.reasons)]
    element = describe_element(record)
    if element is not None:
        lines.append(_one_line(element))
    if record.error:
        lines.append(f"error: {_one_line(record.error)}")
    if record.notes:
        lines += ["notes:", *(f"  - {_one_line(n)}" for n in record.notes)]
    if record.case_description:
        lines.append(f"the case: {_one_line(record.case_description)}")
    lines.append(f"rerun: {xml_safe(rerun_command(record, doc))}")
    return "\n".join(lines)


def _testcase(record: Record, doc: ResultsDocument) -> ET.Element:
    name = "import" if record.op == "import" else record.case
    case = ET.Element("testcase", {"classname": xml_safe(classname(record)), "name": xml_safe(name),
                                   "time": _seconds(record.seconds)})
    first = _one_line(record.reasons[0] if record.reasons else record.error or record.verdict)
    if record.verdict == FAIL and record.candidate == doc.baseline:
        # The relative rule's baseline: reported, not gated (its FAILs do not set the exit code).
        ET.SubElement(case, "system-out").text = (f"FAIL (baseline of the relative rule, not gated): {first}\n\n"
                                                  f"{_details(record, doc)}")
    elif record.verdict == FAIL:
        failure = ET.SubElement(case, "failure", {"message": first, "type": failure_type(record, doc)})
        failure.text = _details(record, doc)
    elif record.verdict == SKIP:
        ET.SubElement(case, "skipped", {"message": first})
    elif record.verdict == WARN:
        ET.SubElement(case, "system-out").text = f"WARN: {first}\n\n{_details(record, doc)}"
    return case


def _properties(doc: ResultsDocument, target: str | None) -> ET.Element:
    props = ET.Element("properties")
    env = doc.environment
    pairs = [(key, env.get(key)) for key in SUITE_PROPERTIES if key in env]
    if "softaudit" not in env and doc.softaudit_version:
        pairs.insert(0, ("softaudit", doc.softaudit_version))
    if target is not None:
        pairs.append(("target", target))
    if not doc.complete:
        pairs.append(("complete", "false: interrupted, these are the records collected before the stop"))
    for key, value in pairs:
        ET.SubElement(props, "property", {"name": xml_safe(key), "value": _one_line("-" if value is None else value)})
    return props


def _counts(records: list[Record], baseline: str | None = None) -> dict[str, str]:
    failures = sum(r.verdict == FAIL and r.candidate != baseline for r in records)
    return {"tests": str(len(records)), "failures": str(failures),
            "errors": "0", "skipped": str(sum(r.verdict == SKIP for r in records)),
            "time": _seconds(sum(r.seconds for r in records))}


def speed_text(speed: list[SpeedRecord]) -> str:
    """One candidate's timings as aligned plain text (the terminal's speed table), or ""."""
    shapes, lines = speed_grid(speed)
    if not lines:
        return ""
    head = ["op", "dtype", *(f"{r}x{n}" for r, n in shapes)]
    table = [head] + [[label, dtype, *(c or "-" for c in cells)] for label, dtype, cells in lines]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = ["speed (" + SPEED_LEGEND + ")"]
    text += ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    return "\n".join(text) + "\n"


def render_junit(doc: ResultsDocument) -> str:
    """The document as JUnit XML: <testsuites>, a <testsuite> per candidate, a <testcase> per record."""
    by_candidate: dict[str, list[Record]] = {c.get("name", ""): [] for c in doc.candidates}
    for r in doc.records:
        by_candidate.setdefault(r.candidate, []).append(r)
    targets = {c.get("name", ""): c.get("target") for c in doc.candidates}

    root = ET.Element("testsuites", {"name": "softaudit", **_counts(doc.records, doc.baseline)})
    if doc.summary.get("seconds") is not None:
        root.set("time", _seconds(doc.summary["seconds"]))
    for candidate, records in by_candidate.items():
        suite = ET.SubElement(root, "testsuite", {"name": xml_safe(candidate), **_counts(records, doc.baseline)})
        target = targets.get(candidate) or (records[0].target if records else None)
        suite.append(_properties(doc, target))
        for r in records:
            suite.append(_testcase(r, doc))
        speed = speed_text([sp for sp in doc.speed if sp.candidate == candidate])
        if speed:
            ET.SubElement(suite, "system-out").text = xml_safe(speed)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
