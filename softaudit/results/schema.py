"""The results file's JSON schema in both directions (docs/json-schema.md).

Writing turns an audit's result into the document ``softaudit run --json`` writes; reading checks
a parsed document and turns it back into a ResultsDocument. Both live here so that a field added
to one side is seen missing from the other. Floats that JSON cannot hold (NaN, ±inf) are written
as the strings "nan", "inf", "-inf"; format values are written with repr, so they round-trip exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softaudit.judging.metrics import Location, RecordMetrics
from softaudit.results.diagnoses import Diagnosis
from softaudit.results.document import ResultsDocument, ResultsError
from softaudit.results.records import Record, SpeedRecord

if TYPE_CHECKING:
    from softaudit.runner.loop import AuditResult

# --------------------------------------------------------------------------
# Writing: an audit's result as the JSON document

SCHEMA_VERSION = 1


def json_number(v: float | None) -> Any:
    """A float as JSON holds it: non-finite values as the strings "nan", "inf", "-inf"."""
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _loc(loc: Location | None) -> dict | None:
    if loc is None:
        return None
    return {k: json_number(v) if isinstance(v, float) else v for k, v in asdict(loc).items()}


def record_dict(r: Record) -> dict:
    """One record as a JSON object."""
    out: dict[str, Any] = {
        "id": r.id, "candidate": r.candidate, "target": r.target, "op": r.op, "direction": r.direction,
        "dtype": r.dtype, "case": r.case, "family": r.family, "case_description": r.case_description,
        "verdict": r.verdict, "reasons": r.reasons,
        "error": r.error, "input_modified": r.input_modified, "output_dtype": r.output_dtype,
        "notes": r.notes, "seconds": r.seconds, "parameters": r.parameters,
        "input_summary": {k: json_number(v) for k, v in r.input_summary.items()},
        "excerpt": None if r.excerpt is None else
        {**r.excerpt, "values": [[c, json_number(v)] for c, v in r.excerpt["values"]]},
    }
    m = r.metrics
    if m is not None:
        out.update({
            "elements": m.elements, "judged": m.judged, "class_mismatches": m.class_mismatches,
            "mismatch_kinds": m.mismatch_kinds, "nan_out": m.nan_out, "inf_out": m.inf_out,
            "max_ulp": json_number(m.max_ulp), "median_ulp": json_number(m.median_ulp), "p99_ulp": json_number(m.p99_ulp),
            "max_bits": json_number(m.max_bits), "max_ratio": json_number(m.max_ratio),
            "above_envelope": m.above_envelope, "above_limit": m.above_limit,
            "worst": _loc(m.worst), "first_mismatch": _loc(m.first_mismatch),
            "undefined_rows": m.undefined_rows,
            **({"masked_rows": m.masked_rows} if m.masked_rows else {}),
        })
    else:
        out.update({"max_ulp": None, "max_ratio": None, "worst": None})
    return out


def speed_dict(s: SpeedRecord) -> dict:
    """One speed measurement as a JSON object: the figures at top level (null when not timed)."""
    out: dict[str, Any] = {"id": s.id, "candidate": s.candidate, "target": s.target, "op": s.op,
                           "direction": s.direction, "dtype": s.dtype, "shape": list(s.shape), "skipped": s.skipped}
    for key in SPEED_FIELDS:
        value = (s.figures or {}).get(key)
        out[key] = json_number(value) if isinstance(value, float) else value
    return out


SPEED_FIELDS = ("median_s", "iqr_s", "repeats", "copies", "elements_per_s", "bytes", "gb_per_s",
                "copy_median_s", "copy_gb_per_s", "pct_copy_bandwidth", "device", "breakdown")
"""The figures of a speed record, in the order the JSON writes them (docs/json-schema.md)."""


def result_dict(result: AuditResult, diagnoses: Sequence[Any] | None = None) -> dict:
    """The whole results document; ``diagnoses`` (softaudit.diagnosis.Diagnosis, or their dicts)
    when the diagnosis ran: written as "diagnoses", left out when it did not."""
    opts = result.options
    counts = result.counts()
    doc = {
        "schema_version": SCHEMA_VERSION,
        "softaudit_version": result.environment.get("softaudit"),
        "complete": result.complete,
        "environment": result.environment,
        "options": {
            "ops": list(opts.ops), "dtypes": [f.name for f in opts.formats], "cases": list(opts.case_patterns),
            "cases_dirs": [str(p) for p in opts.cases_dirs], "seed": opts.seed,
            "ratio_limit": opts.gate.ratio_limit, "undefined_policy": opts.gate.undefined_policy,
            "rowwise": opts.worker.rowwise, "isolated": opts.worker.isolated, "timeout": opts.worker.timeout,
            "max_ulp": opts.gate.max_ulp, "strict": opts.gate.strict,
            "limits": {key: {"ratio": lim.ratio, "max_ulp": lim.max_ulp} for key, lim in opts.gate.limits},
            "relative_to": opts.relative_to, "relative_factor": opts.relative_factor,
            "relative_slack": opts.relative_slack, "baseline": result.baseline,
            "bench": opts.bench, "shapes": [list(shape) for shape in opts.shapes], "device": opts.worker.device,
        },
        "candidates": [{"name": c.name, "target": c.target, "ops": sorted(c.ops), "backend": list(c.backends),
                        "description": c.description,
                        **({"kernels": result.kernels[c.target]} if c.target in getattr(result, "kernels", {}) else {})}
                       for c in result.candidates],
        "results": [record_dict(r) for r in result.records],
        "speed": [speed_dict(s) for s in result.speed],
        "summary": {
            "records": len(result.records), **{k.lower(): v for k, v in counts.items()},
            "exit_code": result.exit_code, "seconds": result.seconds,
            "reference_cache": {"hits": result.cache_hits, "misses": result.cache_misses,
                                "damaged": result.cache_damaged},
            "reference_uncertified": result.uncertified, "worker_restarts": result.worker_restarts,
        },
    }
    if diagnoses is not None:
        doc["diagnoses"] = [d if isinstance(d, dict) else d.to_dict() for d in diagnoses]
    return doc


def results_json(result: AuditResult, diagnoses: Sequence[Any] | None = None) -> str:
    """The results file's text (what ``--json`` writes); ``diagnoses`` as for result_dict."""
    return json.dumps(result_dict(result, diagnoses), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------
# Reading: a parsed JSON document back as a ResultsDocument

SUPPORTED_SCHEMA_VERSIONS = (1,)


def _float(v: Any) -> float | None:
    """JSON's number-or-string form back to a float ("nan", "inf", "-inf" are strings)."""
    if v is None:
        return None
    if isinstance(v, str):
        if v in ("nan", "inf", "-inf"):
            return float(v)
        raise ValueError(f"not a number: {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def _location(d: dict | None) -> Location | None:
    if d is None:
        return None
    return Location(row=int(d["row"]), col=None if d.get("col") is None else int(d["col"]),
                    input=_float(d.get("input")), computed=_float(d["computed"]),  # type: ignore[arg-type]
                    rounded_exact=_float(d["rounded_exact"]), exact=str(d.get("exact", "")),  # type: ignore[arg-type]
                    err_ulp=_float_or_nan(d.get("err_ulp")), envelope_ulp=_float_or_nan(d.get("envelope_ulp")),
                    ratio=_float_or_nan(d.get("ratio")))


def _float_or_nan(v: Any) -> float:
    """A JSON number (or "nan"/"inf" string) as a float; NaN where the field is missing."""
    f = _float(v)
    return math.nan if f is None else f


def record_of_dict(d: dict) -> Record:
    """A record as ``record_dict`` wrote it, back as a Record (metrics when present)."""
    if d.get("verdict") not in ("PASS", "WARN", "FAIL", "SKIP"):
        raise ValueError(f"verdict {d.get('verdict')!r} is not PASS, WARN, FAIL or SKIP")
    metrics = None
    if "elements" in d:
        metrics = RecordMetrics(
            elements=int(d["elements"]), judged=int(d["judged"]), class_mismatches=int(d["class_mismatches"]),
            mismatch_kinds=dict(d.get("mismatch_kinds") or {}), first_mismatch=_location(d.get("first_mismatch")),
            nan_out=int(d.get("nan_out", 0)), inf_out=int(d.get("inf_out", 0)),
            max_ulp=_float(d.get("max_ulp")), median_ulp=_float(d.get("median_ulp")),
            p99_ulp=_float(d.get("p99_ulp")), max_bits=_float(d.get("max_bits")),
            max_ratio=_float(d.get("max_ratio")), worst=_location(d.get("worst")),
            above_envelope=int(d.get("above_envelope", 0)), above_limit=int(d.get("above_limit", 0)),
            undefined_rows=dict(d.get("undefined_rows") or {}),
            masked_rows=dict(d.get("masked_rows") or {}),
        )
    excerpt = d.get("excerpt")
    if excerpt is not None:
        excerpt = {**excerpt, "values": [[int(c), _float(v)] for c, v in excerpt["values"]]}
    summary = {k: (_float(v) if k in ("max", "min", "offset", "range") else v)
               for k, v in (d.get("input_summary") or {}).items()}
    rec = Record(
        candidate=str(d["candidate"]), target=str(d["target"]), op=str(d["op"]), dtype=str(d["dtype"]),
        case=str(d["case"]), family=str(d["family"]), verdict=str(d["verdict"]),
        reasons=[str(x) for x in d.get("reasons", [])], direction=str(d.get("direction", "forward")),
        metrics=metrics, error=d.get("error"), input_modified=bool(d.get("input_modified", False)),
        output_dtype=str(d.get("output_dtype", "")), notes=[str(x) for x in d.get("notes", [])],
        seconds=float(d.get("seconds", 0.0)), case_description=str(d.get("case_description", "")),
        parameters=dict(d.get("parameters") or {}), input_summary=summary, excerpt=excerpt,
    )
    return rec


def speed_of_dict(d: dict) -> SpeedRecord:
    """One entry of the document's "speed" list."""
    shape = d["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"shape {shape!r} is not [rows, n]")
    figures: dict[str, Any] | None = None
    if d.get("median_s") is not None:
        figures = {k: _float(d.get(k)) for k in ("median_s", "iqr_s", "elements_per_s", "gb_per_s", "copy_median_s",
                                                 "copy_gb_per_s", "pct_copy_bandwidth")}
        figures.update({k: None if d.get(k) is None else int(d[k]) for k in ("repeats", "copies", "bytes")})
        figures["device"] = str(d.get("device") or "")
        median = figures["median_s"]
        if median is None or not (math.isfinite(median) and median > 0):
            raise ValueError(f"median_s {d['median_s']!r} is not a positive number of seconds")
    skipped = d.get("skipped")
    return SpeedRecord(candidate=str(d["candidate"]), target=str(d["target"]), op=str(d["op"]),
                       direction=str(d["direction"]), dtype=str(d["dtype"]), shape=(shape[0], shape[1]),
                       figures=figures, skipped=None if skipped is None else str(skipped))


def _lone_surrogate(data: Any) -> str | None:
    """The first string (key or value) in a parsed JSON value holding a lone surrogate (JSON's
    \\ud800 escapes allow them; no UTF-8 file or terminal can), walked without recursion."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _object(data: dict, key: str, where: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResultsError(f"{where}: '{key}' is not an object (got {type(value).__name__})")
    return dict(value)


def _seed(value: Any, where: str, key: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ResultsError(f"{where}: '{key}' seed {value!r} is not a non-negative integer")


def document_of_dict(data: Any, source: str = "") -> ResultsDocument:
    """Validate and convert a parsed results object; ResultsError says what is wrong.

    One rule for every command that reads results (report, compare, repro): each record id once,
    objects where objects belong, a boolean 'complete', seeds that are non-negative integers, and
    text that is valid Unicode."""
    where = source or "results"
    if not isinstance(data, dict) or "results" not in data:
        raise ResultsError(f"{where}: not a softaudit results file (no 'results' list)")
    bad_text = _lone_surrogate(data)
    if bad_text is not None:
        raise ResultsError(f"{where}: a string holds a lone surrogate ({bad_text.encode('utf-8', 'backslashreplace')[:60]!r}"
                           f"...): not valid Unicode")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ResultsError(f"{where}: schema_version {version!r} is not one this softaudit reads "
                           f"({', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    if not isinstance(data["results"], list):
        raise ResultsError(f"{where}: 'results' is not a list")
    records = []
    for i, d in enumerate(data["results"]):
        try:
            records.append(record_of_dict(d))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ResultsError(f"{where}: record {i} is malformed ({what})") from None
    speed = []
    raw_speed = data.get("speed") or []
    if not isinstance(raw_speed, list):
        raise ResultsError(f"{where}: 'speed' is not a list")
    for i, d in enumerate(raw_speed):
        try:
            speed.append(speed_of_dict(d))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ResultsError(f"{where}: speed entry {i} is malformed ({what})") from None
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise ResultsError(f"{where}: two records have the id {r.id!r}; a results file holds each record once")
        seen.add(r.id)
    environment, options = _object(data, "environment", where), _object(data, "options", where)
    _seed(environment.get("seed"), where, "environment")
    _seed(options.get("seed"), where, "options")
    cases_dirs = options.get("cases_dirs")
    if cases_dirs is not None and not (isinstance(cases_dirs, list) and all(isinstance(d, str) for d in cases_dirs)):
        raise ResultsError(f"{where}: 'options' cases_dirs is not a list of paths")
    candidates = data.get("candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise ResultsError(f"{where}: 'candidates' is not a list of objects")
    complete = data.get("complete", True)
    if not isinstance(complete, bool):
        raise ResultsError(f"{where}: 'complete' is {complete!r}, not true or false")
    diagnoses = _diagnoses(data.get("diagnoses"), where)
    version_text = data.get("softaudit_version")
    if version_text is not None and not isinstance(version_text, str):
        raise ResultsError(f"{where}: 'softaudit_version' is not a string")
    return ResultsDocument(
        records=records, speed=speed, environment=environment, options=options,
        candidates=list(candidates), summary=_object(data, "summary", where),
        complete=complete, softaudit_version=version_text,
        schema_version=int(version), source=source, diagnoses=diagnoses,
    )


def _diagnoses(raw: Any, where: str) -> list | None:
    """The document's "diagnoses" back as Diagnosis objects; None when it has none (not run)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ResultsError(f"{where}: 'diagnoses' is not a list")
    out = []
    for i, d in enumerate(raw):
        try:
            if not isinstance(d, dict):
                raise TypeError("not an object")
            out.append(Diagnosis.from_dict(d))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ResultsError(f"{where}: diagnosis {i} is malformed ({what})") from None
    return out


def load_results(path: str | Path) -> ResultsDocument:
    """Read a results JSON file (``softaudit run --json``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ResultsError(f"{p}: is a directory, not a results file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise ResultsError(f"{p}: JSON nested too deeply to be a softaudit results file") from None
    return document_of_dict(data, str(p))


def document_of(result: Any, text: str | None = None) -> ResultsDocument:
    """The document of an audit just run (runner.loop.AuditResult), exactly as its JSON would read back;
    ``text``: that JSON when already serialised (results_json), not made twice."""
    return document_of_dict(json.loads(text if text is not None else results_json(result)), "")
