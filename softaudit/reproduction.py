"""``softaudit.reproduce``: one record of an audit, with its input, rerun and judged again.

It rebuilds the record's input (embedded in the data, or regenerated from its case and checked
by SHA-256), calls the candidate as the audit did, judges the output with the audit's own
judging table (softaudit.judging.rules) and prints the exact, correctly rounded and computed
values of the element the record points at, beside what the results say. The scripts that
``softaudit repro`` writes embed this data and call only ``softaudit.reproduce``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from softaudit.candidates.calling import CallResult, call
from softaudit.candidates.errors import CandidateError
from softaudit.candidates.loading import load_target
from softaudit.candidates.model import Candidate
from softaudit.cases.inputs import LossInputs, NotApplicable, generate, loss_inputs
from softaudit.cases.model import Case, CaseError
from softaudit.cases.reader import load_cases
from softaudit.errors import BadInput
from softaudit.formats import FORMATS, Format, to_float64
from softaudit.judging.metrics import CLASS_NAMES, Location, RecordMetrics, locate
from softaudit.judging.rules import Judgement, Output, input_excerpt, judge
from softaudit.judging.unit import AuditUnit
from softaudit.judging.verdicts import SKIP, Gate, Limits, describe, fmt_num, fmt_value
from softaudit.ops import DIRECTIONS, LINEAR_CROSS_ENTROPY, OPS
from softaudit.reference import ReferenceCache, default_cache_dir
from softaudit.results.records import Record
from softaudit.runner.loop import call_request

DATA_VERSION = 1
"""The version of the reproduction data (``"softaudit_reproduce"``) this softaudit writes and reads."""


class ReproduceError(BadInput):
    """The record cannot be reproduced here: nothing to call, or its candidate, case or input
    cannot be had (one line)."""


@dataclass
class Reproduction:
    """What rerunning one record gave."""

    record_id: str
    recorded_verdict: str
    output: str
    """The output in one line ("N values: a NaN, b inf", or why there is none)."""
    verdict: str | None = None
    """The verdict of the rerun output under the record's gate; None when the call gave no output."""
    reasons: list[str] = field(default_factory=list)
    metrics: RecordMetrics | None = None
    element: Location | None = None
    """The element the record points at, as the rerun computed it."""


# --------------------------------------------------------------------------
# The data


def reproduction_data(record_json: dict, seed: int, cases_dirs: list[str], rowwise: bool, gate: dict | None,
                      x: np.ndarray) -> dict:
    """The data ``reproduce`` takes, for one record (as the results JSON holds it) of a run (JSON
    types only); a script adds the input itself under ``input.hex`` when it is small."""
    data: dict[str, Any] = {
        "softaudit_reproduce": DATA_VERSION,
        "record": record_json,
        "seed": seed,
        "cases_dirs": cases_dirs,
        "rowwise": rowwise,
        "input": {"shape": list(x.shape), "sha256": input_digest(x)},
    }
    if gate is not None:
        data["gate"] = gate
    return data


def input_digest(x: np.ndarray) -> str:
    """SHA-256 of the input's bytes."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _load(record_file_or_dict: str | Path | Mapping) -> dict:
    if isinstance(record_file_or_dict, Mapping):
        data = dict(record_file_or_dict)
    else:
        try:
            data = json.loads(Path(record_file_or_dict).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReproduceError(f"cannot read {str(record_file_or_dict)!r}: {exc}") from None
        if not isinstance(data, dict):
            raise ReproduceError(f"{str(record_file_or_dict)!r} holds no record")
    if "record" not in data and "op" in data:  # a bare record: seed 0, the shipped case library
        data = {"record": data}
    version = data.get("softaudit_reproduce", DATA_VERSION)
    if version != DATA_VERSION:
        raise ReproduceError(f"reproduction data version {version!r} is not {DATA_VERSION} (written by another "
                             f"softaudit)")
    if not isinstance(data.get("record"), dict):
        raise ReproduceError("the data holds no record")
    return data


def _record(data: dict) -> Record:
    from softaudit.results.schema import record_of_dict

    try:
        return record_of_dict(data["record"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReproduceError(f"the record cannot be read: {exc}") from None


def _gate(data: dict, record: Record) -> Gate:
    """The gate the record was judged by (the default gate when the data holds none)."""
    g = data.get("gate")
    if not g:
        return Gate()
    limits = tuple((key, Limits(ratio=lim.get("ratio"), max_ulp=lim.get("max_ulp")))
                   for key, lim in (g.get("limits") or {}).items())
    gate = Gate(ratio_limit=float(g["ratio_limit"]), undefined_policy=str(g["undefined_policy"]),
                max_ulp=g.get("max_ulp"), strict=bool(g.get("strict", False)), limits=limits)
    return gate.for_record(record.op, record.dtype)


def _one_line(text: str | None) -> str:
    """Untrusted text for a one-line message."""
    return " ".join(str(text or "").split())


def check_reproducible(record: Record) -> None:
    """ReproduceError unless the record holds a call to make again."""
    if record.op == "import":
        reason = _one_line(record.reasons[0] if record.reasons else record.error) or "no reason given"
        raise ReproduceError(f"record {record.id!r} is an import failure of {record.target!r} ({reason}): no op was "
                             f"called, so there is nothing to reproduce; import the file to see the error")
    if record.verdict == SKIP:
        reason = _one_line(record.reasons[0] if record.reasons else "") or "no reason given"
        raise ReproduceError(f"record {record.id!r} was skipped ({reason}): nothing was called, so there is "
                             f"nothing to reproduce")
    if record.op not in OPS or record.direction not in DIRECTIONS or record.dtype not in FORMATS:
        raise ReproduceError(f"record {record.id!r}: op {record.op!r}, direction {record.direction!r} or dtype "
                             f"{record.dtype!r} is not one this softaudit knows")
    if record.op == LINEAR_CROSS_ENTROPY:
        raise ReproduceError(f"record {record.id!r}: reproduce and repro do not support {LINEAR_CROSS_ENTROPY} yet "
                             f"(rerun its case with softaudit run --op {LINEAR_CROSS_ENTROPY} --case {record.case})")
    if record.op == "cross_entropy" and record.parameters.get("reduction", "none") not in ("none", "mean", "sum"):
        raise ReproduceError(f"record {record.id!r}: reduction {record.parameters.get('reduction')!r} is not "
                             f"none, mean or sum")


def record_element(record: Record) -> tuple[Location | None, str]:
    """The element the record points at (its first class mismatch, else its worst), and which it is."""
    m = record.metrics
    if m is None:
        return None, ""
    if m.first_mismatch is not None:  # the verdict is about the wrong class first
        return m.first_mismatch, "the record's first element of the wrong class"
    if m.worst is not None:
        return m.worst, "the record's worst element"
    return None, ""


def results_output(r: Record) -> str:
    """The record's account of the whole output, in the words ``reproduce`` prints its own."""
    m = r.metrics
    if m is not None:
        return f"{m.elements} value{'' if m.elements == 1 else 's'}: {m.nan_out} NaN, {m.inf_out} inf"
    if r.error:
        return f"the call failed: {r.error}"
    return r.notes[0] if r.notes else "no output was judged"


def position(loc: Location) -> str:
    """"row R, col C", or "row R" for a value per row (or a reduced loss)."""
    return f"row {loc.row}" + (f", col {loc.col}" if loc.col is not None else "")


# --------------------------------------------------------------------------
# Rerunning


def reproduce(record_file_or_dict: str | Path | Mapping, target: str | None = None,
              echo: Callable[[str], None] | None = print) -> Reproduction:
    """Rerun one record's call on its input and judge the output as the audit did.

    ``record_file_or_dict``: the data a ``softaudit repro`` script embeds (a JSON file of it, or the
    dict), or a bare record as the results JSON holds it (its input is then regenerated from its
    case with seed 0). ``target`` replaces the candidate's file. What is found is printed through
    ``echo`` (None: silent) and returned. Raises ReproduceError (a ValueError, one line) when the
    record holds no call, or its candidate, case or input cannot be had.
    """
    say: Callable[[str], None] = echo if echo is not None else (lambda _line: None)
    data = _load(record_file_or_dict)
    record = _record(data)
    check_reproducible(record)
    fmt = FORMATS[record.dtype]
    seed = int(data.get("seed", 0) or 0)
    cases_dirs = [str(d) for d in data.get("cases_dirs") or []]
    rerun = _Rerun(record, fmt, seed, cases_dirs, data)
    candidate = rerun.candidate(target or record.target, bool(data.get("rowwise", False)))
    say(f"reproducing {record.id} with {candidate.name} from {target or record.target}")
    x = rerun.the_input()
    say(f"input: case {record.case}, {x.shape[0]} x {x.shape[1]} {fmt.name}, seed {seed}; "
        f"SHA-256 {input_digest(x)[:16]}... as audited")
    return rerun.run(candidate, x, _gate(data, record), say)


@dataclass
class _Rerun:
    record: Record
    fmt: Format
    seed: int
    cases_dirs: list[str]
    data: dict
    _case: Case | None = None

    def candidate(self, target: str, rowwise: bool) -> Candidate:
        """The record's candidate from ``target`` (builtin:NAME, or a .py file from the current directory)."""
        if not target.startswith("builtin:") and not Path(target).is_file():
            raise ReproduceError(f"candidate file {target} not found (from {Path.cwd()}); give its path with "
                                 f"--target PATH")
        try:
            candidates = load_target(target, rowwise=rowwise)
        except CandidateError as exc:
            raise ReproduceError(f"cannot load {target}: {exc}") from None
        name = self.record.candidate
        if name.endswith(f"@{self.record.target}"):  # renamed by the audit: two candidates shared the name
            name = name[: -len(self.record.target) - 1]
        chosen = [c for c in candidates if c.name == name] or (candidates if len(candidates) == 1 else [])
        if not chosen:
            raise ReproduceError(f"{target} defines no candidate {name!r} (it has "
                                 f"{', '.join(c.name for c in candidates)})")
        return chosen[0]

    def case(self) -> Case:
        """The record's case from softaudit's library and the run's case directories."""
        if self._case is None:
            try:
                cases = load_cases([Path(d) for d in self.cases_dirs])
            except CaseError as exc:
                raise ReproduceError(f"cannot load the cases: {exc}") from None
            found = [c for c in cases if c.name == self.record.case]
            if not found:
                raise ReproduceError(f"case {self.record.case!r} is not in the case library any more")
            self._case = found[0]
        return self._case

    def the_input(self) -> np.ndarray:
        """The audited input: embedded in the data, else regenerated from its case; checked by SHA-256."""
        given = self.data.get("input") or {}
        if given.get("hex") is not None:
            x = np.array([[float.fromhex(v) for v in row] for row in given["hex"]]).astype(self.fmt.np_dtype)
        else:
            try:
                x = generate(self.case(), self.fmt, seed=self.seed)
            except NotApplicable as exc:
                raise ReproduceError(f"case {self.record.case!r} no longer applies to {self.fmt.name} "
                                     f"({exc.reason})") from None
        digest, shape = given.get("sha256"), given.get("shape")
        if (shape is not None and list(x.shape) != list(shape)) or (digest is not None and input_digest(x) != digest):
            raise ReproduceError(f"the input is not the audited one (SHA-256 {input_digest(x)}, expected {digest}): "
                                 f"has case {self.record.case} changed?")
        return x

    def reduction(self) -> str:
        """The reduction the record was judged under."""
        return str(self.record.parameters.get("reduction", self.case().param("reduction")))

    def run(self, candidate: Candidate, x: np.ndarray, gate: Gate, say: Callable[[str], None]) -> Reproduction:
        r, fmt = self.record, self.fmt
        op, direction = r.op, r.direction
        loss: LossInputs | None = None
        if op == "cross_entropy":
            loss = loss_inputs(self.case(), fmt, x, seed=self.seed)
            if direction == "backward":
                loss = dataclasses.replace(loss, reduction=self.reduction())
            say(f"loss inputs: {loss.parameters()}")
        if direction == "backward":
            self.case()  # the upstream gradient comes from it
        cache = ReferenceCache(default_cache_dir())
        # The case is needed for cross_entropy and backward only; a forward softmax with its input
        # embedded runs without the case library.
        unit = AuditUnit(cast(Case, self._case), fmt, x, cache.get_or_compute(x, fmt), cache, self.seed)
        request = call_request(op, direction, unit, loss)
        result = call(candidate, request)
        if loss is not None and loss.out_of_range and direction == "forward" and result.raised:
            say("a target is out of range: raising is right (the audit expects a raise, or NaN for that row)")
        y, output = _show_output(result, say)
        say(f"in the results: {results_output(r)}")
        found = Reproduction(record_id=r.id, recorded_verdict=r.verdict, output=output)
        if y is None:
            return found
        if loss is not None and direction == "forward":
            loss = dataclasses.replace(loss, reduction=self.reduction() if y.ndim == 0 else "none")
        judged = judge(Output(op, direction, unit, y, loss, request.dy), gate)
        found.verdict, found.reasons, found.metrics = judged.verdict, judged.reasons, judged.metrics
        loc, _what = record_element(r)
        if loc is not None:
            found.element = self._show_element(x, judged, loc, say)
        say(f"\nverdict:        {judged.verdict}" + ("" if judged.verdict == r.verdict else
                                                    f" (in the results: {r.verdict})"))
        return found

    def _show_element(self, x: np.ndarray, judged: Judgement, loc: Location,
                      say: Callable[[str], None]) -> Location | None:
        """Print the input around the record's element, its exact, rounded and computed values, its error."""
        r = self.record
        at = (loc.row,) if loc.col is None else (loc.row, loc.col)
        if any(not 0 <= i < size for i, size in zip(at, judged.y.shape)) or len(at) != judged.y.ndim:
            say(f"\nthe output has no {position(loc)}: its shape is {judged.y.shape}")
            return None
        excerpt_row = int(r.excerpt["row"]) if r.excerpt is not None else loc.row
        around = f"around col {loc.col}" if loc.col is not None else "first entries"
        say(f"\ninput row {excerpt_row}, {around} (and the row's largest entry):")
        for col, value in input_excerpt(x, excerpt_row, loc.col)["values"]:
            say(f"  col {col:>6}: {fmt_value(value)}" + ("   <- this element" if col == loc.col else ""))
        j = judged.elements
        found = locate(r.op, np.asarray(judged.located_x, dtype=np.float64), judged.y, judged.ref, j, at)
        say(f"\nexact:          {found.exact}")
        say(f"rounded exact:  {fmt_value(found.rounded_exact)}")
        say(f"computed:       {fmt_value(found.computed)}")
        if j.class_mismatch[at]:
            say(f"error:          {CLASS_NAMES[int(j.got_class[at])]} where the exact value is "
                f"{CLASS_NAMES[int(j.expected_class[at])]}")
        else:
            say(f"error:          {fmt_num(found.err_ulp)} ulp; envelope {fmt_num(found.envelope_ulp)} ulp; "
                f"ratio {fmt_num(found.ratio)}")
        say(f"\nreproduced:     {describe(found)}")
        say(f"in the results: {describe(loc)}")
        return found


def _show_output(result: CallResult, say: Callable[[str], None]) -> tuple[np.ndarray | None, str]:
    """Print what the call gave (notes, error, NaN and inf counts); its output as float64 (or None),
    and the output in one line."""
    for note in result.notes:
        say(f"note: {note}")
    if result.input_modified:
        say("the candidate modified its input")
    y = None
    if result.unsupported:
        line = f"not auditable: {result.unsupported}"
    elif result.error is not None or result.output is None:
        line = f"the call failed: {result.error or 'returned no output'}"
    else:
        y = to_float64(result.output)
        line = (f"{y.size} value{'' if y.size == 1 else 's'}: {int(np.isnan(y).sum())} NaN, "
                f"{int(np.isinf(y).sum())} inf")
        say(f"output: {line} ({result.output_dtype})")
        return y, line
    say(f"output: {line}")
    return y, line
