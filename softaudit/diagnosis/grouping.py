"""What every rule of the diagnosis works on: one candidate x op x direction's records (``Group``),
the experiments run for it, and the ``Cause`` a rule reports (diagnose.py, linear.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from softaudit.diagnosis import experiments as X
from softaudit.diagnosis.classes import CLASSES
from softaudit.diagnosis.evidence import RecordView, worst_first
from softaudit.results.diagnoses import Cause, ExperimentRun

MAX_EVIDENCE = 6
"""Record ids listed per cause."""


class Group:
    """One candidate x op x direction and the experiments already run for it."""

    def __init__(self, views: list[RecordView], subject: X.Subject | None, runner: X.Runner | None) -> None:
        self.views = views
        self.failing = [v for v in views if v.failing]
        self.op = views[0].op
        self.direction = views[0].direction
        self.subject = subject
        self.runner = runner
        self.runs: dict[tuple[str, str], X.ExperimentResult] = {}

    def fails(self, pred: Callable[[RecordView], bool]) -> list[RecordView]:
        """The failing records for which ``pred`` holds."""
        return [v for v in self.failing if pred(v)]

    def passes(self, pred: Callable[[RecordView], bool]) -> list[RecordView]:
        """The passing records for which ``pred`` holds."""
        return [v for v in self.views if v.passing and pred(v)]

    def dtype_for(self, views: Iterable[RecordView], order: tuple[str, ...] = ("float32", "float64", "float16",
                                                                                  "bfloat16")) -> str:
        """The first format of ``order`` among ``views``: the one an experiment runs in."""
        have = {v.dtype for v in views}
        for d in order:
            if d in have:
                return d
        return next(iter(have), "float32")

    def run(self, build: Callable[[str, str, str], X.Experiment], dtype: str) -> X.ExperimentResult | None:
        """The experiment's result (run once per group and format); None without a runner or on error."""
        if self.runner is None or self.subject is None:
            return None
        exp = build(self.op, self.direction, dtype)
        key = (exp.id, dtype)
        if key not in self.runs:
            self.runs[key] = self.runner(self.subject, exp)
        res = self.runs[key]
        return None if res.error else res


def run_info(res: X.ExperimentResult, outcome: str) -> ExperimentRun:
    """An experiment's result as a cause reports it."""
    e = res.experiment
    return ExperimentRun(e.id, e.purpose, e.dtype, outcome, round(res.seconds, 2))


def make_cause(class_id: str, confidence: float, finding: str, views: Iterable[RecordView],
               runs: Iterable[ExperimentRun] = (), settled_by: str | None = None) -> Cause:
    """A cause of class ``class_id`` with its worst records as evidence, confidence clipped to [0, 1]."""
    c = CLASSES[class_id]
    ids = [v.id for v in worst_first(views)][:MAX_EVIDENCE]
    return Cause(class_id, c.title, max(0.0, min(1.0, confidence)), finding, ids, list(runs), settled_by,
                 c.explanation, c.fix, c.sketch)


def fraction(part: int, whole: int) -> float:
    """part / whole, 0 for an empty whole."""
    return part / whole if whole else 0.0
