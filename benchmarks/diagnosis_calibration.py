"""Calibrate softaudit's diagnosis on the planted corpus (tests/diagnosis/planted).

Every planted implementation is copied to a neutral file name (cand_NN.py: the class never
reaches the classifier through a name), audited with ``softaudit run`` on a selection of the
case library that touches every class (CALIBRATION_CASES, all four formats), and diagnosed;
the script prints, per class, how often the top-ranked cause is the planted one, and the
diagnoses the correct implementations got (there must be none).

    python benchmarks/diagnosis_calibration.py            # audit (cached in --work) and diagnose
    python benchmarks/diagnosis_calibration.py --only exp-clamp --verbose
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "tests" / "diagnosis" / "planted"

CALIBRATION_CASES = [
    "offset-plus-1e3", "offset-minus-1e3", "offset-plus-1e6", "offset-minus-1e6", "offset-plus-1e4",
    "seed-uniform-plus-1e5", "exp-overflow-float32", "exp-overflow-float16", "exp-overflow-float64",
    "gap-87.3", "gap-16.6", "gap-708.4", "target-below-max-200", "target-below-max-800", "wide-scale-100",
    "mask-prefix", "mask-prefix-long", "mask-fully-masked-rows", "mask-nan-at-masked-position",
    "mask-scattered", "nan-one-row", "posinf-one", "posinf-only", "confident-0.999", "n513-rows",
    "uniform-1024", "uniform-262144", "near-uniform-4096", "near-uniform-65536", "long-zeros-65536",
    "long-normal-4096", "ce-prob-masked", "ce-prob-one-hot-masked", "ce-prob-random",
    "ce-smoothing-0.1-ignore-none", "ce-smoothing-0.9-ignore-mean", "ce-smoothing-0.1-finfo-min-mask", "ce-ignore-padding-mean",
    "ce-offset-plus-1e8", "ce-target-below-max-100", "grad-confident-0.999-ones", "grad-ce-mean-confident",
    "lce-reduction-none", "lce-vocab-32003-bias",   # linear_cross_entropy (its planted classes)
]


def corpus() -> list[tuple[str, Path]]:
    """(planted class or 'correct', file) for every file of the corpus, sorted."""
    return [(p.parent.name, p) for p in sorted(PLANTED.glob("*/*.py"))]


def audit(src: Path, work: Path, index: int, refresh: bool) -> Path:
    """Audit ``src`` copied to work/cand_NN.py; the results JSON (kept between runs)."""
    target = work / f"cand_{index:02d}.py"
    out = work / f"cand_{index:02d}.json"
    if out.exists() and not refresh and target.exists() and target.read_bytes() == src.read_bytes():
        return out
    shutil.copyfile(src, target)
    cmd = [sys.executable, "-m", "softaudit", "run", str(target), "--quiet", "--json", str(out), "--no-corpus"]
    for case in CALIBRATION_CASES:
        cmd += ["--case", case]
    for line in src.read_text().splitlines():   # a correct file right only in some formats says so
        if line.startswith("# calibration-dtypes:"):
            for d in line.split(":", 1)[1].split():
                cmd += ["--dtype", d]
    subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "softaudit-diagnosis-cal")
    ap.add_argument("--only", action="append", default=[], help="planted class (or 'correct') to run")
    ap.add_argument("--refresh", action="store_true", help="re-run the audits")
    ap.add_argument("--audit-only", action="store_true")
    ap.add_argument("--existing", action="store_true", help="diagnose only the audits already in --work")
    ap.add_argument("--no-experiments", action="store_true", help="diagnose from the records alone")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from softaudit.diagnosis import Subject, diagnose

    per_class: dict[str, list[bool]] = defaultdict(list)
    groups_ok = groups_all = 0
    wrong_on_correct: list[str] = []
    t_audit = t_diag = 0.0
    for index, (cls, src) in enumerate(corpus()):
        if args.only and cls not in args.only:
            continue
        t0 = time.perf_counter()
        if args.existing:
            out = args.work / f"cand_{index:02d}.json"
            if not out.exists():
                continue
        else:
            out = audit(src, args.work, index, args.refresh)
        t_audit += time.perf_counter() - t0
        if args.audit_only or not out.exists():
            print(f"{cls:30s} {src.name:22s} audit {'done' if out.exists() else 'FAILED'}")
            continue
        doc = json.loads(out.read_text())
        records = doc["results"]
        counts = {k: doc["summary"][k] for k in ("pass", "warn", "fail")}
        t0 = time.perf_counter()
        subject = Subject(name=f"cand_{index:02d}", target=str(args.work / f"cand_{index:02d}.py"))
        diags = diagnose(records, subject, run_experiment=None if args.no_experiments else "default")
        t_diag += time.perf_counter() - t0
        tops = [d.causes[0].class_id for d in diags if d.causes]
        if cls == "correct":
            if diags:
                wrong_on_correct.append(f"{src.name}: {', '.join(sorted(set(tops)))}")
            mark = "ok" if not diags else "DIAGNOSED"
        else:
            # The top cause over the candidate: the class most groups rank first, ties by confidence.
            best = _overall(diags)
            per_class[cls].append(best == cls)
            groups_all += len(diags)
            groups_ok += sum(1 for d in diags if d.causes and d.causes[0].class_id == cls)
            mark = "ok" if best == cls else f"got {best}"
        print(f"{cls:30s} {src.name:18s} P/W/F {counts['pass']}/{counts['warn']}/{counts['fail']}  {mark}")
        if args.verbose:
            for d in diags:
                print("   ", d.summary_line())
                for c in d.causes[1:]:
                    print(f"        also {c.class_id} ({c.confidence:.2f}) {c.settled_by}")
    print()
    total = [ok for oks in per_class.values() for ok in oks]
    for cls, oks in sorted(per_class.items()):
        print(f"  {cls:30s} {sum(oks)}/{len(oks)}")
    if total:
        print(f"top-1 accuracy: {sum(total)}/{len(total)} = {100 * sum(total) / len(total):.0f}%")
    if groups_all:
        print(f"failing op x direction groups whose top cause is the planted class: {groups_ok}/{groups_all} = "
              f"{100 * groups_ok / groups_all:.0f}% (the rest: secondary failures, e.g. a gradient's own)")
    print(f"correct implementations diagnosed: {len(wrong_on_correct)}" + "".join(f"\n    {w}" for w in wrong_on_correct))
    print(f"audit {t_audit:.0f} s, diagnosis {t_diag:.0f} s")
    return 0


def _overall(diags) -> str | None:
    """The candidate's top cause: highest-confidence first cause over its op x direction groups."""
    best, conf = None, -1.0
    for d in diags:
        if d.causes and d.causes[0].confidence > conf:
            best, conf = d.causes[0].class_id, d.causes[0].confidence
    return best


if __name__ == "__main__":
    raise SystemExit(main())
