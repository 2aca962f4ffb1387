"""`softaudit repro`: one record of a results file as a standalone Python script.

The script embeds the record, the run's seed, case directories and gate, and the input (when
small; else it is regenerated from its case and checked by SHA-256), and calls only
``softaudit.reproduce`` (softaudit.reproduction): it imports nothing else of softaudit, so a
script saved today runs on later versions. Before writing it, ``repro_script`` regenerates the
input and checks it against the record, so a script is never written for a case library that
has changed since the run.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softaudit.candidates.loading import builtin_names
from softaudit.cases.inputs import NotApplicable, generate
from softaudit.cases.model import Case, CaseError
from softaudit.cases.reader import load_cases
from softaudit.formats import FORMATS, Format
from softaudit.judging.metrics import Location
from softaudit.judging.unit import input_summary
from softaudit.reproduction import (
    ReproduceError,
    check_reproducible,
    position,
    record_element,
    reproduction_data,
)
from softaudit.results.document import ResultsDocument, ResultsError, rerun_command
from softaudit.results.records import Record
from softaudit.results.schema import record_dict

EMBED_LIMIT = 4096
"""Inputs of at most this many elements are written into the script as well as regenerated."""

_BUILTIN = "builtin:"
_HEX_LINE_WIDTH = 96


def repro_script(doc: ResultsDocument, record_id: str) -> str:
    """The source of a standalone script that reproduces record ``record_id`` of ``doc``.

    Raises ResultsError (one line) for an unknown id, an import failure or a SKIP record (nothing
    was called), a record whose case or candidate target cannot be found any more, and a case
    that no longer generates the input the record was judged on.
    """
    record = doc.record(record_id)
    try:
        check_reproducible(record)
    except ReproduceError as exc:
        raise ResultsError(str(exc)) from None
    fmt = FORMATS[record.dtype]
    seed = int(doc.options.get("seed", doc.environment.get("seed", 0)) or 0)
    cases_dirs = [str(d) for d in doc.options.get("cases_dirs") or []]
    case = _find_case(record, cases_dirs)
    _check_target(record)
    try:
        x = generate(case, fmt, seed=seed)
    except NotApplicable as exc:
        raise ResultsError(f"record {record.id!r}: case {record.case!r} no longer applies to {fmt.name} "
                           f"({exc.reason})") from None
    _check_same_input(record, x)
    return _Script(record, doc, fmt, seed, cases_dirs, x).render()


# --------------------------------------------------------------------------
# Checks made before writing


def _find_case(record: Record, cases_dirs: list[str]) -> Case:
    """The record's case from the library the run used (softaudit's own and its --cases-dir)."""
    try:
        cases = load_cases([Path(d) for d in cases_dirs])
    except CaseError as exc:
        raise ResultsError(f"record {record.id!r}: cannot load the case library of the run: {exc}") from None
    for case in cases:
        if case.name == record.case:
            return case
    where_from = f" (with --cases-dir {', '.join(map(repr, cases_dirs))})" if cases_dirs else ""
    raise ResultsError(f"record {record.id!r}: case {record.case!r} is not in the case library any more{where_from}")


def _check_target(record: Record) -> None:
    """ResultsError unless the candidate's built-in or file (from the current directory) is there."""
    target = record.target
    if target.startswith(_BUILTIN):
        if target[len(_BUILTIN):] not in builtin_names():
            raise ResultsError(f"record {record.id!r}: candidate {target!r} is not a built-in of this softaudit")
    elif not Path(target).is_file():
        raise ResultsError(f"record {record.id!r}: candidate file {target!r} cannot be found "
                           f"(relative to {Path.cwd()})")


def _same(a: object, b: object) -> bool:
    """Equal values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _check_same_input(record: Record, x: np.ndarray) -> None:
    """The regenerated input agrees with the record's input summary and excerpt, else ResultsError."""
    changed = f"record {record.id!r}: case {record.case!r} no longer generates the audited input"
    summary = input_summary(x)
    for key, recorded in record.input_summary.items():
        if not _same(summary.get(key), recorded):
            raise ResultsError(f"{changed} ({key} is {summary.get(key)} now, {recorded} in the results): "
                               f"the case library changed since the run")
    m = record.metrics
    for loc in (m.worst, m.first_mismatch) if m is not None else ():
        if loc is not None and not (0 <= loc.row < x.shape[0] and (loc.col is None or 0 <= loc.col < x.shape[1])):
            raise ResultsError(f"{changed} (it has no {position(loc)})")
    if record.excerpt is not None:
        row = int(record.excerpt["row"])
        if not 0 <= row < x.shape[0]:
            raise ResultsError(f"{changed} (it has no row {row})")
        for col, value in record.excerpt["values"]:
            now = float(x[row, col].astype(np.float64)) if 0 <= col < x.shape[1] else None
            if not _same(now, value):
                raise ResultsError(f"{changed} (row {row}, col {col} is {now} now, {value} in the results): "
                                   f"the case library changed since the run")


# --------------------------------------------------------------------------
# Text helpers


def _verbatim(text: str) -> bool:
    """Whether text reads the same in a docstring's source as in its value (nothing to escape)."""
    return text.isprintable() and "\\" not in text and '"' not in text


def _doc_text(text: str) -> str:
    """Untrusted text made safe inside a triple-quoted docstring: backslashes, quotes and
    unprintable characters escaped (the docstring's value is the text itself)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _wrapped(text: str, indent: str = "") -> list[str]:
    """Untrusted text as escaped docstring lines of at most ~92 characters."""
    lines = textwrap.wrap(text, width=92, initial_indent=indent, subsequent_indent=indent,
                          break_long_words=False, break_on_hyphens=False) or [indent]
    return [_doc_text(line) for line in lines]


def _short_hex(v: float) -> str:
    """float.hex without trailing zeros: '0x1.8p+6', not '0x1.8000000000000p+6' (fromhex reads both)."""
    h = float(v).hex()
    if "p" not in h:
        return h  # inf, -inf, nan
    mantissa, exponent = h.split("p")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}"


def _embedded(x: np.ndarray, fmt: Format) -> str | None:
    """The X_HEX literal of a small input, or None when it is too large or would not come back
    byte for byte (a NaN with a payload)."""
    if x.size > EMBED_LIMIT:
        return None
    rows = [[_short_hex(v) for v in row] for row in x.astype(np.float64).tolist()]
    back = np.array([[float.fromhex(v) for v in row] for row in rows], dtype=np.float64).astype(fmt.np_dtype)
    if back.tobytes() != np.ascontiguousarray(x).tobytes():
        return None
    lines = ["X_HEX = ["]
    for i, row in enumerate(rows):
        lines.append(f"    [  # row {i}")
        body = textwrap.wrap(", ".join(repr(v) for v in row) + ",", width=_HEX_LINE_WIDTH,
                             break_long_words=False, break_on_hyphens=False)
        lines.extend(f"        {line}" for line in body)
        lines.append("    ],")
    lines.append("]")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The script


@dataclass
class _Script:
    """What one script is written from: the record, its document, and the regenerated input."""

    record: Record
    doc: ResultsDocument
    fmt: Format
    seed: int
    cases_dirs: list[str]
    x: np.ndarray

    @property
    def location(self) -> tuple[Location | None, str]:
        """The element the record points at, and which it is (None: nothing to show)."""
        return record_element(self.record)

    def render(self) -> str:
        embedded = _embedded(self.x, self.fmt)
        parts = [self._docstring(embedded is not None) + self._command_comment(),
                 "from __future__ import annotations\n\nimport argparse\nimport json\nimport sys\n\nimport softaudit",
                 self._data(), _main(embedded is not None)]
        if embedded is not None:
            parts.append("# The audited input: ROWS x N values of its format, each as float.hex of the float64 "
                         "holding it.\n" + embedded)
        parts.append(_FOOTER)
        return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"

    def _data(self) -> str:
        """REPRO: what ``softaudit.reproduce`` needs, as JSON (every string a Python literal: safe)."""
        options = self.doc.options
        gate = None
        if "ratio_limit" in options:
            gate = {key: options.get(key) for key in ("ratio_limit", "undefined_policy", "max_ulp", "strict", "limits")}
        data = reproduction_data(record_dict(self.record), self.seed, self.cases_dirs, bool(options.get("rowwise")),
                                 gate, self.x)
        lines = ["# The record, its run's seed, case directories and gate, and the input's SHA-256, as",
                 "# softaudit.reproduce takes them.", "REPRO = json.loads("]
        lines += [f"    {line + chr(10)!r}" for line in _json_lines(data)]
        lines.append(")")
        return "\n".join(lines)

    def _command_comment(self) -> str:
        """The rerun command as comment lines, where a docstring would have to escape it: a comment
        holds any printable text verbatim, so what is pasted from the file is what was quoted."""
        command = rerun_command(self.record, self.doc)
        if _verbatim(command) or not command.isprintable():
            return ""
        return "\n# Audited again, alone, by:\n#   " + command

    def _docstring(self, embedded: bool) -> str:
        r, doc = self.record, self.doc
        loc, what = self.location
        rows, n = self.x.shape
        source = doc.source or "an audit run from Python"
        version = f", softaudit {doc.softaudit_version}" if doc.softaudit_version else ""
        lines = [f"Reproduce softaudit record {_doc_text(r.id)}", ""]
        lines.append(f"In the results ({_doc_text(source)}{_doc_text(version)}): {r.verdict}")
        if r.reasons:
            lines.extend(_wrapped(r.reasons[0], "    "))
        command = rerun_command(r, doc)
        if _verbatim(command):
            lines.append("Audited again, alone, by:")
            lines.append("    " + command)
        elif command.isprintable():
            lines.append("Audited again, alone, by the command in the comment below this docstring.")
        else:
            lines.append("Audited again, alone, by softaudit run with the record's options (the command is not")
            lines.append("shown: an argument holds control characters that no line can carry safely).")
        if r.case_description:
            lines.append(f"The case {_doc_text(r.case)}:")
            lines.extend(_wrapped(r.case_description, "    "))
        lines.append("")
        input_from = "embedded below, as generated" if embedded else "regenerated"
        element = ("" if loc is None else
                   f" It prints the exact and computed values of {position(loc)} ({what}) beside what the "
                   f"results say.")
        lines.extend(_wrapped(
            f"This script rebuilds the input ({rows} x {n} {self.fmt.name}, {input_from} from case {r.case} "
            f"with seed {self.seed}), calls the candidate as the audit did (softaudit.reproduce), judges "
            f"the output as the audit judged it, and prints the output's NaN and inf counts.{element}"))
        lines += ["", "Usage: python repro.py [--target PATH]    (needs softaudit importable)",
                  "Exit status: 0 whatever the values are; 2 when the candidate, the case or the input",
                  "cannot be had (one line on stderr)."]
        return '"""' + "\n".join(lines) + '\n"""'


def _json_lines(data: dict, indent: str = "") -> list[str]:
    """``data`` as JSON, one key a line (nested objects opened on their own lines), ASCII only."""
    lines = [indent + "{"] if not indent else []
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            lines.append(f"{indent} {json.dumps(key)}: {{")
            lines += _json_lines(value, indent + " ")
            lines.append(f"{indent} }}{comma}")
        else:
            lines.append(f"{indent} {json.dumps(key)}: {json.dumps(value, ensure_ascii=True)}{comma}")
    if not indent:
        lines.append("}")
    return lines


_FOOTER = '''
if __name__ == "__main__":
    sys.exit(main())
'''


def _main(embedded: bool) -> str:
    """The script's main(): its only use of softaudit is ``softaudit.reproduce``."""
    give_input = "    REPRO[\"input\"][\"hex\"] = X_HEX\n" if embedded else ""
    return ('''
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=REPRO["record"]["target"], metavar="PATH",
                        help="the candidate's file (default: %(default)s, as audited)")
    args = parser.parse_args()
''' + give_input + '''    try:
        softaudit.reproduce(REPRO, target=args.target)
    except ValueError as exc:  # the candidate, the case or the input cannot be had
        print(f"repro: {exc}", file=sys.stderr)
        return 2
    return 0
''')
