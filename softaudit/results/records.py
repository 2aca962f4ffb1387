"""The units of an audit's results: one candidate x op x direction x format x case (Record),
and, with --bench, one candidate x op x direction x format x shape timed (SpeedRecord)."""

from __future__ import annotations

from dataclasses import dataclass, field

from softaudit.judging.metrics import RecordMetrics


@dataclass
class Record:
    """One judged (or skipped) combination, as reports and the JSON show it."""

    candidate: str
    """Candidate name (file stem, decorator name, or built-in name)."""
    target: str
    """What the user named: a file path or builtin:NAME."""
    op: str
    dtype: str
    case: str
    family: str
    verdict: str
    """PASS, WARN, FAIL or SKIP."""
    reasons: list[str] = field(default_factory=list)
    """One line each, most serious first; the skip reason for SKIP."""
    direction: str = "forward"
    metrics: RecordMetrics | None = None
    error: str | None = None
    """The candidate's crash, exception or contract breach, in one line."""
    input_modified: bool = False
    output_dtype: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    case_description: str = ""
    """The failure the case provokes (from the case file), shown beside findings."""
    parameters: dict = field(default_factory=dict)
    """The case's cross-entropy parameters by name (target_kind, label_smoothing, ignore_index,
    weight, reduction); empty for the other ops."""
    input_summary: dict = field(default_factory=dict)
    """The case's input at a glance, for reports that plot error against it: ``rows``, ``n``,
    ``max`` and ``min`` of the finite values, ``offset`` (largest finite magnitude), ``range``
    (max - min of the finite values), ``neg_inf`` (count of -inf), ``nan`` (count of NaN)."""
    excerpt: dict | None = None
    """The input around the element a finding points at (the first class mismatch, else the
    worst): ``row``, ``n`` and ``values`` as [col, value] pairs (that column's neighbours
    and the row's largest entry). None when there is nothing to point at."""

    @property
    def id(self) -> str:
        """Stable identifier: candidate/op/direction/dtype/case."""
        return f"{self.candidate}/{self.op}/{self.direction}/{self.dtype}/{self.case}"


@dataclass
class SpeedRecord:
    """One candidate x op x direction x format timed at one shape (``softaudit run --bench``)."""

    candidate: str
    target: str
    op: str
    direction: str
    dtype: str
    shape: tuple[int, int]
    """(rows, n)."""
    figures: dict | None = None
    """speed.SpeedMeter.measure's figures: median_s, iqr_s, repeats, copies, elements_per_s,
    bytes, gb_per_s, copy_median_s, copy_gb_per_s, pct_copy_bandwidth, device; None when the
    call could not be timed."""
    skipped: str | None = None
    """Why it was not timed (a numpy candidate without a backward function, a crash), else None."""

    @property
    def id(self) -> str:
        """Stable identifier: candidate/op/direction/dtype/ROWSxN."""
        return f"{self.candidate}/{self.op}/{self.direction}/{self.dtype}/{self.shape[0]}x{self.shape[1]}"

    @property
    def median_s(self) -> float | None:
        """The median seconds of one call, when timed."""
        v = (self.figures or {}).get("median_s")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
