"""Snapshot softaudit's observable behaviour, to prove that a refactor changed none of it.

Run it on the code before and after a change and compare the two snapshots::

    PYTHONPATH=<old checkout> python tests/behaviour_snapshot.py take /tmp/before
    PYTHONPATH=<new checkout> python tests/behaviour_snapshot.py take /tmp/after
    python tests/behaviour_snapshot.py diff /tmp/before /tmp/after

``take`` runs, in a scratch directory with a fresh reference cache and a fixed seed:
``softaudit run builtin:naive builtin:shifted builtin:torch examples/seed_numpy.py --json``, a
search with a fixed seed, ``compare`` of two results files, ``report`` (HTML, Markdown, JUnit) and
``repro`` of a failing record (the script is run and its output kept: its text may change, what it
prints may not). Outputs are normalised (timings, the version, absolute paths and the cache's
hit counts removed) and written to the snapshot directory. ``diff`` lists every file that differs
and exits 1 if any does. It is a script, not a test: the run takes a few minutes (issue 21).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SEED = 11
RUN_TARGETS = ["builtin:naive", "builtin:shifted", "builtin:torch", "examples/seed_numpy.py"]
# Keys whose values are measurements of time or of the cache's state, not behaviour.
VOLATILE_KEYS = {"seconds", "softaudit_version", "softaudit", "reference_cache", "median_s", "iqr_s", "wall_s",
                 "elapsed", "generated", "generated_at", "timestamp", "date"}
VOLATILE_TEXT = [
    (re.compile(r"\d+(\.\d+)? ?(s|ms|µs|us|min)\b"), "<time>"),
    (re.compile(r"softaudit \d+\.\d+\.\d+\S*"), "softaudit <version>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?(\.\d+)?(Z|[+-]\d{2}:?\d{2})?"), "<timestamp>"),
    (re.compile(r'time="[^"]*"'), 'time="<time>"'),
    (re.compile(r"(<th>seconds</th><td>)[^<]*"), r"\1<time>"),
    (re.compile(r'timestamp="[^"]*"'), 'timestamp="<timestamp>"'),
]


def _softaudit(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One CLI call through ``python -m softaudit`` (the PYTHONPATH chosen by the caller)."""
    return subprocess.run([sys.executable, "-m", "softaudit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def _volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.endswith("_seconds")


def _normalised_json(value: object) -> object:
    if isinstance(value, dict):
        return {k: _normalised_json(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_normalised_json(v) for v in value]
    return value


def _normalised_text(text: str, scratch: Path) -> str:
    text = text.replace(str(scratch), "<scratch>")
    for pattern, replacement in VOLATILE_TEXT:
        text = pattern.sub(replacement, text)
    return text


def take(out: Path) -> int:
    """Run the commands and write their normalised outputs under ``out``."""
    repo = Path(__file__).resolve().parent.parent
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="softaudit-behaviour-"))
    try:
        (scratch / "examples").mkdir()
        shutil.copy(repo / "examples" / "seed_numpy.py", scratch / "examples" / "seed_numpy.py")
        env = dict(os.environ, SOFTAUDIT_CACHE_DIR=str(scratch / "cache"), NO_COLOR="1", COLUMNS="120",
                   TERM="dumb")
        steps: list[tuple[str, list[str]]] = [
            ("run", ["run", *RUN_TARGETS, "--seed", str(SEED), "--json", "run.json", "--jobs", "1"]),
            ("run-b", ["run", "builtin:naive", "builtin:shifted", "--seed", str(SEED + 1), "--json", "run_b.json",
                       "--jobs", "1"]),
            ("search", ["search", "builtin:naive", "--op", "softmax", "--dtype", "float32", "--seed", str(SEED),
                        "--budget", "120", "--save-to", "corpus", "--json", "search.json", "--repro",
                        "search_repro.py"]),
            ("compare", ["compare", "run_b.json", "run.json", "--json", "compare.json"]),
            ("report", ["report", "run.json", "--html", "report.html", "--md", "report.md", "--junit",
                        "report.xml"]),
        ]
        for name, args in steps:
            print(f"{name}: softaudit {' '.join(args)}", flush=True)
            res = _softaudit(args, scratch, env)
            (out / f"{name}.stdout").write_text(f"exit {res.returncode}\n" + _normalised_text(res.stdout, scratch))
        failing = next(r["id"] for r in json.loads((scratch / "run.json").read_text())["results"]
                       if r["verdict"] == "FAIL" and r["candidate"] == "builtin:naive")
        print(f"repro: {failing}", flush=True)
        res = _softaudit(["repro", "run.json", failing, "--output", "repro.py"], scratch, env)
        (out / "repro.stdout").write_text(f"exit {res.returncode}\n")
        for script in ("repro.py", "search_repro.py"):
            ran = subprocess.run([sys.executable, script], cwd=scratch, env=env, capture_output=True, text=True,
                                 check=False)
            (out / f"{script}.output").write_text(
                f"exit {ran.returncode}\n" + _normalised_text(ran.stdout, scratch))
        for name in ("run.json", "run_b.json", "search.json", "compare.json"):
            doc = _normalised_json(json.loads((scratch / name).read_text()))
            (out / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        for name in ("report.html", "report.md", "report.xml"):
            (out / name).write_text(_normalised_text((scratch / name).read_text(), scratch))
        for case in sorted((scratch / "corpus").rglob("*")):
            if case.is_file():
                (out / f"corpus-{case.name}").write_text(_normalised_text(case.read_text(), scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"snapshot written to {out}")
    return 0


def _comparable(path: Path) -> list[str]:
    """A snapshot file's lines, normalised again (so a snapshot taken by an older script compares)."""
    text = path.read_text()
    if path.suffix == ".json":
        text = json.dumps(_normalised_json(json.loads(text)), indent=1, sort_keys=True)
    else:
        for pattern, replacement in VOLATILE_TEXT:
            text = pattern.sub(replacement, text)
    return text.splitlines()


def diff(before: Path, after: Path) -> int:
    """Print the differences between two snapshots; exit 1 when there is any."""
    names = sorted({p.name for p in before.iterdir()} | {p.name for p in after.iterdir()})
    differing = 0
    for name in names:
        a, b = before / name, after / name
        if not a.exists() or not b.exists():
            print(f"{name}: only in {'after' if not a.exists() else 'before'}")
            differing += 1
            continue
        lines_a, lines_b = (_comparable(p) for p in (a, b))
        if lines_a != lines_b:
            differing += 1
            delta = [line if len(line) <= 300 else line[:300] + " ..." for line in
                     difflib.unified_diff(lines_a, lines_b, f"before/{name}", f"after/{name}", lineterm="", n=1)]
            print("\n".join(delta[:60]))
            if len(delta) > 60:
                print(f"... {len(delta) - 60} more diff lines in {name}")
    print(f"{len(names) - differing} of {len(names)} outputs identical")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("take", help="write a snapshot").add_argument("out", type=Path)
    d = sub.add_parser("diff", help="compare two snapshots")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    args = parser.parse_args()
    return take(args.out) if args.command == "take" else diff(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
