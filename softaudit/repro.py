"""`softaudit repro`: one record of a results file as a standalone Python script.

The script rebuilds the record's input (from its case, or embedded when small), builds the
loss inputs and upstream gradient the audit built, calls the candidate through
``softaudit.candidates.calling.call`` and prints the exact, correctly rounded and computed values
of the element the record points at (its worst, else its first class mismatch), beside what the
results say. Before writing it, ``repro_script`` regenerates the input and checks it against the
record, so a script is never written for a case library that has changed since the run.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softaudit.candidates.loading import builtin_names
from softaudit.cases.model import Case, CaseError
from softaudit.cases.reader import load_cases
from softaudit.formats import FORMATS, Format
from softaudit.cases.inputs import NotApplicable, generate, loss_inputs
from softaudit.metrics import Location
from softaudit.ops import DIRECTIONS, OPS
from softaudit.results.records import Record
from softaudit.results.document import ResultsDocument, ResultsError, rerun_command
from softaudit.runner import input_summary
from softaudit.verdicts import SKIP, describe

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
    _check_reproducible(record)
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
    return _Script(record, doc, case, fmt, seed, cases_dirs, x).render()


# --------------------------------------------------------------------------
# Checks made before writing


def _one_line(text: str | None) -> str:
    """Untrusted text for a one-line message."""
    return " ".join(str(text or "").split())


def _check_reproducible(record: Record) -> None:
    """ResultsError unless the record holds a call to make again."""
    if record.op == "import":
        reason = _one_line(record.reasons[0] if record.reasons else record.error) or "no reason given"
        raise ResultsError(f"record {record.id!r} is an import failure of {record.target!r} ({reason}): no op was "
                           f"called, so there is nothing to reproduce; import the file to see the error")
    if record.verdict == SKIP:
        reason = _one_line(record.reasons[0] if record.reasons else "") or "no reason given"
        raise ResultsError(f"record {record.id!r} was skipped ({reason}): nothing was called, so there is "
                           f"nothing to reproduce")
    if record.op not in OPS or record.direction not in DIRECTIONS or record.dtype not in FORMATS:
        raise ResultsError(f"record {record.id!r}: op {record.op!r}, direction {record.direction!r} or dtype "
                           f"{record.dtype!r} is not one this softaudit knows")
    if record.op == "cross_entropy" and record.parameters.get("reduction", "none") not in ("none", "mean", "sum"):
        raise ResultsError(f"record {record.id!r}: reduction {record.parameters.get('reduction')!r} is not "
                           f"none, mean or sum")


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
            raise ResultsError(f"{changed} (it has no {_position(loc)})")
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
    case: Case
    fmt: Format
    seed: int
    cases_dirs: list[str]
    x: np.ndarray

    @property
    def location(self) -> tuple[Location | None, str]:
        """The element the record points at, and which it is (None: nothing to show)."""
        m = self.record.metrics
        if m is None:
            return None, ""
        if m.first_mismatch is not None:  # the verdict is about the wrong class first
            return m.first_mismatch, "the record's first element of the wrong class"
        if m.worst is not None:
            return m.worst, "the record's worst element"
        return None, ""

    @property
    def kind(self) -> str:
        """forward, backward (softmax, log_softmax, logsumexp), loss-forward or loss-backward."""
        r = self.record
        if r.op == "cross_entropy":
            return "loss-" + r.direction
        return r.direction

    def render(self) -> str:
        hex_literal = _embedded(self.x, self.fmt)
        needs_case = hex_literal is None or self.record.op == "cross_entropy" or self.record.direction == "backward"
        parts = [self._docstring(hex_literal is not None) + self._command_comment(),
                 self._imports(needs_case, hex_literal is not None),
                 self._constants(), self._main(needs_case, hex_literal is not None), _COMMON]
        if needs_case:
            parts.append(_LOAD_CASE)
        parts.append(_EMBEDDED_INPUT if hex_literal is not None else _GENERATED_INPUT)
        if self.location[0] is not None:
            if self.kind == "loss-forward" or (self.kind == "forward" and self.location[0].col is None):
                parts.append(_LARGEST)
            parts.append(_SHOW_ELEMENT)
            if self.kind != "forward":
                parts.append(_APPROX)
            if self.kind in ("loss-forward", "loss-backward"):
                parts.append(_COEFFICIENTS)
        if hex_literal is not None:
            parts.append("# The audited input: ROWS x N values of FMT, each as float.hex of the float64 holding it.\n"
                         + hex_literal)
        parts.append(_FOOTER)
        return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"

    # ----------------------------------------------------------------------

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
                   f" It prints the exact and computed values of {_position(loc)} ({what}) beside what the "
                   f"results say.")
        lines.extend(_wrapped(
            f"This script rebuilds the input ({rows} x {n} {self.fmt.name}, {input_from} from case {r.case} "
            f"with seed {self.seed}), calls the candidate through softaudit.candidates.calling.call as the audit "
            f"did, and prints the output's NaN and inf counts.{element}"))
        lines += ["", "Usage: python repro.py [--target PATH]    (needs softaudit importable)",
                  "Exit status: 0 whatever the values are; 2 when the candidate, the case or the input",
                  "cannot be had (one line on stderr)."]
        return '"""' + "\n".join(lines) + '\n"""'

    def _imports(self, needs_case: bool, embedded: bool) -> str:
        kind = self.kind
        has_location = self.location[0] is not None
        lines = ["from __future__ import annotations", ""]
        if kind == "loss-backward":
            lines.append("import dataclasses")
        lines += ["import argparse", "import hashlib"]
        if has_location:
            lines.append("import math")
        lines += ["import sys", "from pathlib import Path", "from typing import NoReturn", "", "import numpy as np", ""]
        lines.append("from softaudit.candidates.calling import CallRequest, CallResult, call")
        lines.append("from softaudit.candidates.errors import CandidateError")
        lines.append("from softaudit.candidates.loading import load_target")
        if needs_case:
            lines.append("from softaudit.cases.model import Case, CaseError")
            lines.append("from softaudit.cases.reader import load_cases")
        if has_location and kind == "backward":
            lines.append(f"from softaudit.envelope import {self.record.op}_backward_absolute")
        elif has_location and kind == "loss-forward":
            lines.append("from softaudit.envelope import cross_entropy_reduced_absolute, cross_entropy_row_absolute")
        elif has_location and kind == "loss-backward":
            lines.append("from softaudit.envelope import cross_entropy_backward_absolute")
        lines.append("from softaudit.formats import FORMATS, to_float64")
        inputs = [] if embedded else ["generate"]
        if kind.startswith("loss"):
            inputs.append("loss_inputs")
        if kind in ("backward", "loss-backward"):
            inputs.append("upstream")
        if inputs:
            lines.append(f"from softaudit.cases.inputs import {', '.join(sorted(inputs))}")
        if has_location:
            lines.append("from softaudit.metrics import CLASS_NAMES, Location, judge_elements")
        if has_location:
            reference = {"forward": "exact_element, reference_rows",
                         "backward": "ReferenceCache, RowStats, default_cache_dir"}.get(
                kind, "ReferenceCache, default_cache_dir")
        else:  # the backward request still carries the exact forward output
            reference = "ReferenceCache, default_cache_dir" if kind == "backward" else ""
        if reference:
            lines.append(f"from softaudit.reference import {reference}")
        if has_location:
            if kind == "backward":
                lines.append("from softaudit.reference import backward_reference")
            elif kind == "loss-forward":
                lines.append("from softaudit.reference import loss_reference, mean_denominator, row_coefficients")
            elif kind == "loss-backward":
                lines.append("from softaudit.reference import loss_gradient_reference, row_coefficients, "
                             "upstream_scale")
            lines.append("from softaudit.runner import input_excerpt")
            lines.append("from softaudit.verdicts import describe, fmt_num, fmt_value")
        return "\n".join(lines)

    def _constants(self) -> str:
        r = self.record
        loc, what = self.location
        rows, n = self.x.shape
        name = r.candidate
        if name.endswith(f"@{r.target}"):  # renamed by the audit: two candidates shared the name
            name = name[: -len(r.target) - 1]
        digest = hashlib.sha256(np.ascontiguousarray(self.x).tobytes()).hexdigest()
        lines = [
            f"RECORD = {r.id!r}",
            f"CANDIDATE = {name!r}  # its name in the target",
            f"TARGET = {r.target!r}  # as audited: builtin:NAME, or a .py path from the current directory",
            f"ROWWISE = {bool(self.doc.options.get('rowwise'))!r}  # softaudit run --rowwise",
            f"OP, DIRECTION, FMT = {r.op!r}, {r.direction!r}, FORMATS[{self.fmt.name!r}]",
            f"CASE, CASES_DIRS, SEED = {r.case!r}, {self.cases_dirs!r}, {self.seed!r}",
            f"ROWS, N = {rows}, {n}",
            f"X_SHA256 = {digest!r}  # of the input's bytes",
        ]
        if r.op == "cross_entropy":
            reduction = r.parameters.get("reduction", self.case.param("reduction"))
            lines.append(f"REDUCTION = {reduction!r}  # the reduction the record was judged under")
        if loc is not None:
            excerpt_row = int(r.excerpt["row"]) if r.excerpt is not None else loc.row
            lines.append(f"ROW, COL = {loc.row}, {loc.col}  # {what}" +
                         ("" if loc.col is not None else " (COL None: a value per row, or the reduced loss)"))
            if excerpt_row != loc.row:
                lines.append(f"EXCERPT_ROW = {excerpt_row}  # the input row holding the largest logit")
            else:
                lines.append("EXCERPT_ROW = ROW")
        lines.append("")
        lines.append("# What the results say, to compare with what this script prints.")
        lines.append(f"RESULTS_OUTPUT = {_results_output(r)!r}")
        if loc is not None:
            lines.append(f"RESULTS_ELEMENT = {describe(loc)!r}")
        return "\n".join(lines)

    def _main(self, needs_case: bool, embedded: bool) -> str:
        kind = self.kind
        loc = self.location[0]
        body = [_MAIN_START]
        the_input = "    x = the_input()" if embedded else "    x = the_input(case)"
        body.append(("    case = load_case()\n" if needs_case else "") + the_input)
        if kind == "forward":
            body.append(_FORWARD_CALL)
            if loc is not None:
                located = "float(x[ROW, COL])" if loc.col is not None else "largest(x[ROW])"
                at = "(0, COL)" if loc.col is not None else "(0,)"
                body.append(_FORWARD_JUDGE.replace("@AT@", at).replace("@INPUT@", located))
        elif kind == "backward":
            shape = "(ROWS,)" if self.record.op == "logsumexp" else "(ROWS, N)"
            body.append(_BACKWARD_CALL.replace("@DY_SHAPE@", shape))
            if loc is not None:
                body.append(_BACKWARD_JUDGE.replace("@ABSOLUTE@", _BACKWARD_ABSOLUTE[self.record.op]))
        elif kind == "loss-forward":
            call = _LOSS_FORWARD_CALL
            if self._out_of_range():
                call = call.replace("    y = show_output(call(candidate, request))\n", _OUT_OF_RANGE_CALL)
            body.append(call)
            if loc is not None:
                body.append(_LOSS_FORWARD_JUDGE)
        else:
            reduction = self.record.parameters.get("reduction", self.case.param("reduction"))
            body.append(_LOSS_BACKWARD_CALL.replace("@DY_SHAPE@", "(ROWS,)" if reduction == "none" else "()"))
            if loc is not None:
                body.append(_LOSS_BACKWARD_JUDGE)
        text = "\n\n".join(b.strip("\n") for b in body)
        if loc is None:  # nothing to judge after the call: its output summary is all there is
            for out in ("y", "g"):
                text = text.replace(f"    {out} = show_output(", "    show_output(")
                text = text.replace(f"\n    if {out} is None:\n        return 0", "")
        return text + "\n\n    return 0"

    def _out_of_range(self) -> bool:
        """Whether some row's class target is outside [0, N) (a raise is then the right answer)."""
        try:
            return loss_inputs(self.case, self.fmt, self.x, seed=self.seed).out_of_range
        except NotApplicable:
            return False


def _position(loc: Location) -> str:
    """"row R, col C", or "row R" for a value per row (or a reduced loss)."""
    return f"row {loc.row}" + (f", col {loc.col}" if loc.col is not None else "")


def _results_output(r: Record) -> str:
    """The record's account of the whole output, in the words the script prints its own."""
    m = r.metrics
    if m is not None:
        return f"{m.elements} value{'' if m.elements == 1 else 's'}: {m.nan_out} NaN, {m.inf_out} inf"
    if r.error:
        return f"the call failed: {r.error}"
    return r.notes[0] if r.notes else "no output was judged"


# --------------------------------------------------------------------------
# Script text. Static code: every value it depends on is a constant written above it.

_FOOTER = '''
if __name__ == "__main__":
    sys.exit(main())
'''

_MAIN_START = '''
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=TARGET, metavar="PATH",
                        help="the candidate's file (default: %(default)s, as audited)")
    args = parser.parse_args()
    candidate = load_candidate(args.target)
    print(f"reproducing {RECORD} with {candidate.name} from {args.target}")
'''

_FORWARD_CALL = '''
    # The call, as the audit made it.
    request = CallRequest(op=OP, direction=DIRECTION, x=x, fmt_name=FMT.name)
    y = show_output(call(candidate, request))
    if y is None:
        return 0
'''

_FORWARD_JUDGE = '''
    # The exact values of row ROW, certified and correctly rounded (softaudit.reference), judged as
    # the audit judged them (softaudit.metrics).
    row = slice(ROW, ROW + 1)
    refs = reference_rows(x[row], FMT)
    ref = refs.ops[OP]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        judged = judge_elements(OP, x[row], y[row], ref, refs.stats, FMT)
    at = @AT@  # the element within that one row
    exact = ref.exact_str(at) or exact_element(x[ROW], OP, COL)  # values stored as 0 are recomputed
    show_element(x, @INPUT@, y[row], ref, judged, at, exact)
'''

_BACKWARD_CALL = '''
    # The upstream gradient, and the correctly rounded exact forward output the audit passed with it
    # (explicit backward functions take it; autograd recomputes the forward). `softaudit run` cached
    # the forward reference; it is computed here otherwise.
    forward = ReferenceCache(default_cache_dir()).get_or_compute(x, FMT)
    dy = upstream(case, FMT, @DY_SHAPE@, seed=SEED)
    request = CallRequest(op=OP, direction=DIRECTION, x=x, fmt_name=FMT.name, dy=dy,
                          y=forward.ops[OP].rounded.astype(FMT.np_dtype))
    g = show_output(call(candidate, request))
    if g is None:
        return 0
'''

_BACKWARD_ABSOLUTE = {
    "softmax": "softmax_backward_absolute(x64, dy64, p, stats.amax, FMT)",
    "log_softmax": "log_softmax_backward_absolute(x64, dy64, p, stats.amax, stats.log_s, FMT)",
    "logsumexp": "logsumexp_backward_absolute(x64, dy64, p, stats.amax, stats.log_s, FMT)",
}

_BACKWARD_JUDGE = '''
    # The exact gradient of row ROW (certified, correctly rounded) and its stability envelope,
    # judged as the audit judged them.
    row = slice(ROW, ROW + 1)
    ref, _ = backward_reference(OP, x[row], dy[row], FMT)
    stats = RowStats(amax=forward.stats.amax[row], log_s=forward.stats.log_s[row], n=N)
    x64, dy64 = x[row].astype(np.float64), dy[row].astype(np.float64)
    p = np.nan_to_num(approx(forward.ops["softmax"])[row], nan=0.0, posinf=0.0, neginf=0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        absolute = @ABSOLUTE@
        judged = judge_elements(OP, x[row], g[row], ref, stats, FMT, absolute_envelope=absolute)
    at = (0, COL)  # the element within that one row
    # Stored as 0: exactly 0 (or below 2^-66 of the smallest subnormal), or an infinity.
    exact = ref.exact_str(at) or ("0" if ref.rounded[at] == 0 else fmt_num(float(ref.rounded[at])))
    show_element(x, float(x[ROW, COL]), g[row], ref, judged, at, exact)
'''

_LOSS_FORWARD_CALL = '''
    # Cross-entropy's targets, class weights and keywords, as the audit built them.
    loss = loss_inputs(case, FMT, x, seed=SEED)
    print(f"loss inputs: {loss.parameters()}")
    request = CallRequest(op=OP, direction=DIRECTION, x=x, fmt_name=FMT.name, loss=loss)
    y = show_output(call(candidate, request))
    if y is None:
        return 0
'''

_OUT_OF_RANGE_CALL = '''    result = call(candidate, request)
    if result.raised:
        print("a target is out of range: raising is right (the audit expects a raise, or NaN for that row)")
    y = show_output(result)
'''

_LOSS_FORWARD_JUDGE = '''
    # The exact losses (certified, correctly rounded) and their stability envelopes, judged as the
    # audit judged them. The row statistics come from the forward reference `softaudit run` cached.
    exact_losses = loss_reference(x, loss, FMT)
    stats = ReferenceCache(default_cache_dir()).get_or_compute(x, FMT).stats
    x64 = x.astype(np.float64)
    row_losses = approx(exact_losses.none)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        row_absolute = cross_entropy_row_absolute(x64, coefficients(loss), row_losses, stats.amax, stats.log_s, FMT)
        if y.ndim == 0:  # one reduced loss, judged under the reduction the results name
            ref = exact_losses.mean if REDUCTION == "mean" else exact_losses.sum
            denominator = float(mean_denominator(loss, ROWS)) if REDUCTION == "mean" else 1.0
            absolute = np.array([cross_entropy_reduced_absolute(row_absolute, row_losses, denominator, FMT)])
            y, at, located_input = y.reshape(1), (0,), float(np.max(np.where(np.isnan(x64), -np.inf, x64)))
        else:  # one loss per row
            ref, absolute, at, located_input = exact_losses.none, row_absolute, (ROW,), largest(x[ROW])
        judged = judge_elements(OP, x, y, ref, stats, FMT, absolute_envelope=absolute)
    # Stored as 0: exactly 0 (or below 2^-66 of the smallest subnormal), or an infinity.
    exact = ref.exact_str(at) or ("0" if ref.rounded[at] == 0 else fmt_num(float(ref.rounded[at])))
    show_element(x, located_input, y, ref, judged, at, exact)
'''

_LOSS_BACKWARD_CALL = '''
    # Cross-entropy's targets, class weights and keywords as the audit built them, under the
    # reduction the record was judged with, and the upstream gradient of the loss.
    loss = dataclasses.replace(loss_inputs(case, FMT, x, seed=SEED), reduction=REDUCTION)
    dy = upstream(case, FMT, @DY_SHAPE@, seed=SEED)
    print(f"loss inputs: {loss.parameters()}")
    request = CallRequest(op=OP, direction=DIRECTION, x=x, fmt_name=FMT.name, loss=loss, dy=dy)
    g = show_output(call(candidate, request))
    if g is None:
        return 0
'''

_LOSS_BACKWARD_JUDGE = '''
    # The exact gradient (certified, correctly rounded) and its stability envelope, judged as the
    # audit judged them. softmax and the row statistics come from the forward reference
    # `softaudit run` cached.
    ref, _ = loss_gradient_reference(x, loss, dy, FMT)
    forward = ReferenceCache(default_cache_dir()).get_or_compute(x, FMT)
    coef = coefficients(loss)
    scale = np.array([float(v) for v in upstream_scale(loss, dy, ROWS)])  # dy as each row receives it
    p = np.nan_to_num(approx(forward.ops["softmax"]), nan=0.0, posinf=0.0, neginf=0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        absolute = cross_entropy_backward_absolute(x.astype(np.float64), coef, coef.sum(axis=-1), scale, p,
                                                   forward.stats.amax, forward.stats.log_s, FMT)
        judged = judge_elements(OP, x, g, ref, forward.stats, FMT, absolute_envelope=absolute)
    at = (ROW, COL)
    # Stored as 0: exactly 0 (or below 2^-66 of the smallest subnormal), or an infinity.
    exact = ref.exact_str(at) or ("0" if ref.rounded[at] == 0 else fmt_num(float(ref.rounded[at])))
    show_element(x, float(x[ROW, COL]), g, ref, judged, at, exact)
'''

_COMMON = '''
def fail(message: str) -> NoReturn:
    """Stop with one line on stderr and exit status 2: the reproduction cannot run."""
    print(f"repro: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_candidate(target: str):
    """The candidate CANDIDATE of ``target`` (builtin:NAME, or a .py file from the current directory)."""
    if not target.startswith("builtin:") and not Path(target).is_file():
        fail(f"candidate file {target} not found (from {Path.cwd()}); give its path with --target PATH")
    try:
        candidates = load_target(target, rowwise=ROWWISE)
    except CandidateError as exc:
        fail(f"cannot load {target}: {exc}")
    chosen = [c for c in candidates if c.name == CANDIDATE] or (candidates if len(candidates) == 1 else [])
    if not chosen:
        fail(f"{target} defines no candidate {CANDIDATE!r} (it has {', '.join(c.name for c in candidates)})")
    return chosen[0]


def checked(x: np.ndarray) -> np.ndarray:
    """x, once it is byte for byte the input the audit judged."""
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    if x.shape != (ROWS, N) or digest != X_SHA256:
        fail(f"the input is not the audited one (SHA-256 {digest}, expected {X_SHA256}): has case {CASE} changed?")
    print(f"input: case {CASE}, {ROWS} x {N} {FMT.name}, seed {SEED}; SHA-256 {digest[:16]}... as audited")
    return x


def show_output(result: CallResult) -> np.ndarray | None:
    """Print what the call gave (notes, error, NaN and inf counts); its output as float64, or None."""
    for note in result.notes:
        print(f"note: {note}")
    if result.input_modified:
        print("the candidate modified its input")
    if result.unsupported:
        print(f"output: not auditable: {result.unsupported}")
        y = None
    elif result.error is not None or result.output is None:
        print(f"output: the call failed: {result.error or 'returned no output'}")
        y = None
    else:
        y = to_float64(result.output)
        print(f"output: {y.size} value{'' if y.size == 1 else 's'}: {int(np.isnan(y).sum())} NaN, "
              f"{int(np.isinf(y).sum())} inf ({result.output_dtype})")
    print(f"in the results: {RESULTS_OUTPUT}")
    return y
'''

_LOAD_CASE = '''
def load_case() -> Case:
    """The case CASE from softaudit's library and CASES_DIRS (directories as the audit named them)."""
    try:
        cases = load_cases([Path(d) for d in CASES_DIRS])
    except CaseError as exc:
        fail(f"cannot load the cases: {exc}")
    for case in cases:
        if case.name == CASE:
            return case
    fail(f"case {CASE!r} is not in the case library any more")
'''

_EMBEDDED_INPUT = '''
def the_input() -> np.ndarray:
    """The audited input, embedded at the end of this file: generate(case, FMT, seed=SEED) gives
    the same bytes. Every value is one of the format's, so the conversion is exact."""
    return checked(np.array([[float.fromhex(v) for v in row] for row in X_HEX]).astype(FMT.np_dtype))
'''

_GENERATED_INPUT = '''
def the_input(case: Case) -> np.ndarray:
    """The audited input, regenerated from its case: the same bytes on every machine."""
    return checked(generate(case, FMT, seed=SEED))
'''

_LARGEST = '''
def largest(values: np.ndarray) -> float:
    """The largest non-NaN entry: the input the results show for a value of a whole row."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.max()) if v.size else math.nan
'''

_SHOW_ELEMENT = '''
def show_element(x, located_input, y, ref, judged, at, exact) -> None:
    """Print the input around element ROW, COL, its exact, rounded and computed values, its error."""
    around = f"around col {COL}" if COL is not None else "first entries"
    print(f"\\ninput row {EXCERPT_ROW}, {around} (and the row's largest entry):")
    for col, value in input_excerpt(x, EXCERPT_ROW, COL)["values"]:
        print(f"  col {col:>6}: {fmt_value(value)}" + ("   <- this element" if col == COL else ""))
    found = Location(row=ROW, col=COL, input=located_input, computed=float(y[at]),
                     rounded_exact=float(ref.rounded[at]), exact=exact, err_ulp=float(judged.err_ulp[at]),
                     envelope_ulp=float(judged.envelope[at]), ratio=float(judged.ratio[at]))
    print(f"\\nexact:          {found.exact}")
    print(f"rounded exact:  {fmt_value(found.rounded_exact)}")
    print(f"computed:       {fmt_value(found.computed)}")
    if judged.class_mismatch[at]:
        print(f"error:          {CLASS_NAMES[int(judged.got_class[at])]} where the exact value is "
              f"{CLASS_NAMES[int(judged.expected_class[at])]}")
    else:
        print(f"error:          {fmt_num(found.err_ulp)} ulp; envelope {fmt_num(found.envelope_ulp)} ulp; "
              f"ratio {fmt_num(found.ratio)}")
    print(f"\\nreproduced:     {describe(found)}")
    print(f"in the results: {RESULTS_ELEMENT}")
'''

_APPROX = '''
def approx(ref) -> np.ndarray:
    """A reference's exact values as float64, as the audit's envelopes use them."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.ldexp(ref.hi, ref.k) + np.ldexp(ref.lo, ref.k)
    return np.where(np.isfinite(v), v, np.where(np.isinf(ref.rounded), ref.rounded, np.nan))
'''

_COEFFICIENTS = '''
def coefficients(loss) -> np.ndarray:
    """coef[i, c], the weight of -log_softmax(x)[i, c] in row i's loss (softaudit.reference.loss),
    as float64; 0 on ignored and out-of-range rows."""
    coef = np.zeros((ROWS, N))
    for i, rc in enumerate(row_coefficients(loss, N)):
        if rc.coef is not None:
            coef[i] = [float(v) for v in rc.coef]
    return coef
'''
