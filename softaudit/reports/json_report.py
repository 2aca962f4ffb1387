"""The JSON results file (schema documented in docs/json-schema.md).

Floats that JSON cannot hold (NaN, ±inf) are written as the strings "nan",
"inf", "-inf"; format values are written with repr, so they round-trip exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from softaudit.judging.metrics import Location
from softaudit.records import Record, SpeedRecord
from softaudit.reports.files import write_text
from softaudit.runner.loop import AuditResult

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


def result_dict(result: AuditResult) -> dict:
    """The whole results document."""
    opts = result.options
    counts = result.counts()
    return {
        "schema_version": SCHEMA_VERSION,
        "softaudit_version": result.environment.get("softaudit"),
        "complete": result.complete,
        "environment": result.environment,
        "options": {
            "ops": list(opts.ops), "dtypes": [f.name for f in opts.formats], "cases": list(opts.case_patterns),
            "cases_dirs": [str(p) for p in opts.cases_dirs], "seed": opts.seed,
            "ratio_limit": opts.gate.ratio_limit, "undefined_policy": opts.gate.undefined_policy,
            "rowwise": opts.rowwise, "isolated": opts.isolated, "timeout": opts.timeout,
            "max_ulp": opts.gate.max_ulp, "strict": opts.gate.strict,
            "limits": {key: {"ratio": lim.ratio, "max_ulp": lim.max_ulp} for key, lim in opts.gate.limits},
            "relative_to": opts.relative_to, "relative_factor": opts.relative_factor,
            "relative_slack": opts.relative_slack, "baseline": result.baseline,
            "bench": opts.bench, "shapes": [list(shape) for shape in opts.shapes], "device": opts.device,
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


def results_json(result: AuditResult) -> str:
    """The results file's text (what ``--json`` writes)."""
    return json.dumps(result_dict(result), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, result: AuditResult) -> None:
    """Write the results document atomically (reports.files.write_text)."""
    write_text(path, results_json(result))
