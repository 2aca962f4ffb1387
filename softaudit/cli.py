"""Command line: a thin layer over runner.run_audit and the case library.

Exit codes: 0 no FAIL, 1 at least one FAIL, 2 bad input (one line, no traceback
unless --debug).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import softaudit
from softaudit.candidates import CandidateError
from softaudit.cases import OPS, CaseError, load_cases, select_cases
from softaudit.ops import DIRECTIONS
from softaudit.envelope import DEFAULT_RATIO_LIMIT
from softaudit.formats import FORMATS, FormatError, get_format
from softaudit.isolation import DEFAULT_TIMEOUT, MAX_TIMEOUT
from softaudit.runner import NothingToAudit
from softaudit.verdicts import DEFAULT_UNDEFINED_POLICY, UNDEFINED_POLICIES, Gate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit softmax, log_softmax and logsumexp implementations against exact references.",
)

EXIT_BAD_INPUT = 2
BAD_INPUT_ERRORS = (CandidateError, CaseError, FormatError, NothingToAudit)


class UsageProblem(ValueError):
    """A bad option value found by our own checks."""


def _fatal(message: str) -> NoReturn:
    Console(stderr=True).print(f"[bold red]softaudit: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _version(value: bool) -> None:
    if value:
        print(f"softaudit {softaudit.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """softaudit: a numerical-stability auditor for softmax-family code."""


@contextlib.contextmanager
def _bad_input(debug: bool):  # type: ignore[no-untyped-def]
    """Turn bad input raised inside into one line and exit 2 (with the traceback under --debug)."""
    try:
        yield
    except (UsageProblem, *BAD_INPUT_ERRORS) as exc:
        if debug:
            traceback.print_exc()
        _fatal(str(exc))


def _check_cases_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        if not d.is_dir():
            raise UsageProblem(f"--cases-dir: {str(d)!r} is not a directory")


def _check_ops(ops: list[str]) -> list[str]:
    for op in ops:
        if op not in OPS:
            raise UsageProblem(f"unknown op {op!r} (known: {', '.join(OPS)})")
    return ops


def _check_directions(directions: list[str]) -> list[str]:
    for d in directions:
        if d not in DIRECTIONS:
            raise UsageProblem(f"unknown --direction {d!r} (known: {', '.join(DIRECTIONS)})")
    return directions


@app.command()
def run(
    targets: list[str] = typer.Argument(..., metavar="TARGET...", help="Candidate files (impl.py) or built-ins (builtin:naive, builtin:shifted, builtin:shifted-f64, builtin:torch).", show_default=False),
    op: list[str] = typer.Option([], "--op", "-o", help="Op to audit (repeatable): softmax, log_softmax, logsumexp, cross_entropy. Default: every op the target defines."),
    direction: list[str] = typer.Option([], "--direction", help="forward (the op) or backward (its gradient), repeatable. Default: both, where the candidate has a backward pass."),
    dtype: list[str] = typer.Option([], "--dtype", "-d", help="Format (repeatable): float64, float32, float16, bfloat16. Default: all four."),
    case: list[str] = typer.Option([], "--case", "-c", help="Case name or family pattern, fnmatch style (repeatable). Default: the whole library."),
    cases_dir: list[Path] = typer.Option([], "--cases-dir", help="Extra directory of case files, added to the shipped library (repeatable)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every record to this JSON file (schema: docs/json-schema.md)."),
    seed: int = typer.Option(0, "--seed", help="Seed mixed into every case's own seed; recorded in the JSON."),
    limit: float = typer.Option(DEFAULT_RATIO_LIMIT, "--limit", help="Stability-ratio limit: FAIL above it, WARN between 1 and it."),
    undefined: str = typer.Option(DEFAULT_UNDEFINED_POLICY, "--undefined", help="Accepted output on undefined rows (fully masked or +inf): nan-or-zero, nan, zero, any."),
    rowwise: bool = typer.Option(False, "--rowwise", help="Call every op one row (1-D vector) at a time."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Seconds one call may take; past it the call FAILs as hung and the worker restarts."),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="GiB of address space the candidates' worker may use (default: half the machine's memory)."),
    no_isolation: bool = typer.Option(False, "--no-isolation", help="Call candidates in softaudit's own process: a crash or hang then ends the audit."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Reference cache directory (default: $SOFTAUDIT_CACHE_DIR or ~/.cache/softaudit)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every reference afresh and store nothing."),
    findings: int = typer.Option(10, "--findings", help="How many worst findings to explain after the table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no table; the exit code (and --json) only."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """Audit TARGETS over the case library and print a verdict per candidate x op x format."""
    from softaudit.reports.json_report import write_json
    from softaudit.reports.terminal import render
    from softaudit.runner import AuditOptions, run_audit

    with _bad_input(debug):
        if undefined not in UNDEFINED_POLICIES:
            raise UsageProblem(f"unknown --undefined policy {undefined!r} (known: {', '.join(UNDEFINED_POLICIES)})")
        if not (limit > 1.0 and math.isfinite(limit)):
            raise UsageProblem(f"--limit must be a finite number greater than 1 (the envelope itself), got {limit}")
        if seed < 0:
            raise UsageProblem(f"--seed must be 0 or more, got {seed}")
        if findings < 0:
            raise UsageProblem("--findings must be 0 or more")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise UsageProblem(f"--timeout must be between 0 and {MAX_TIMEOUT:g} seconds, got {timeout:g}")
        if memory_limit is not None and not 0 < memory_limit <= 2**20:
            raise UsageProblem(f"--memory-limit must be a positive number of GiB (at most 2^20), got {memory_limit:g}")
        if json_path is not None and not json_path.parent.is_dir():
            raise UsageProblem(f"--json: directory {str(json_path.parent)!r} does not exist")
        if json_path is not None and json_path.is_dir():
            raise UsageProblem(f"--json: {str(json_path)!r} is a directory")
        _check_cases_dirs(cases_dir)
        options = AuditOptions(
            ops=_check_ops(op), directions=_check_directions(direction), formats=[get_format(d) for d in dtype], case_patterns=case,
            cases_dirs=cases_dir, seed=seed, gate=Gate(ratio_limit=limit, undefined_policy=undefined),
            cache_dir=cache_dir, use_cache=not no_cache, rowwise=rowwise, isolated=not no_isolation,
            timeout=timeout, memory_limit=int(memory_limit * 2**30) if memory_limit is not None else None,
        )
        console = Console(stderr=True)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=quiet or not console.is_terminal) as bar:
            task = bar.add_task("loading", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            with _signals_interrupt() as received:
                result = run_audit(targets, options, progress=progress)
    if json_path is not None:
        try:
            write_json(json_path, result)
        except OSError as exc:
            _fatal(f"--json: cannot write {str(json_path)!r}: {exc.strerror or exc}")
    if not quiet:
        render(result, Console(), max_findings=findings)
        if json_path is not None:
            Console().print(f"Results written to {json_path}")
    if not result.complete:
        signum = received[0] if received else signal.SIGINT
        Console(stderr=True).print(f"softaudit: interrupted by {signal.Signals(signum).name}; "
                                   f"{len(result.records)} records kept" + (f" in {json_path}" if json_path else ""))
        raise typer.Exit(128 + signum)
    raise typer.Exit(result.exit_code)


@contextlib.contextmanager
def _signals_interrupt():  # type: ignore[no-untyped-def]
    """SIGTERM (and SIGINT) stop the audit like Ctrl-C: run_audit keeps what it collected.

    Yields a list that receives the signal number, so the exit code can say which (128 + n).
    """
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command("cases")
def list_cases(
    case: list[str] = typer.Option([], "--case", "-c", help="Only cases whose name or family matches (repeatable)."),
    cases_dir: list[Path] = typer.Option([], "--cases-dir", help="Extra directory of case files (repeatable)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """List the case library: name, family, ops, formats, shape and the failure each provokes."""
    with _bad_input(debug):
        _check_cases_dirs(cases_dir)
        cases = select_cases(load_cases(list(cases_dir)), case)
    console = Console()
    console.print(f"[bold]{len(cases)} cases[/] (softaudit run --case NAME_OR_FAMILY selects them)")
    family = None
    for c in cases:
        if c.family != family:
            family = c.family
            console.print(f"\n[bold]{family}[/]")
        ops = "all ops" if set(c.ops) == set(OPS) else ", ".join(c.ops)
        if set(c.directions) != set(DIRECTIONS):
            ops += f" ({', '.join(c.directions)} only)"
        fmts = "all formats" if not c.formats or set(c.formats) == set(FORMATS) else ", ".join(c.formats)
        console.print(f"  [cyan]{c.name}[/]  {c.rows} x {c.n}; {ops}; {fmts}", highlight=False)
        console.print(f"      {c.description}", highlight=False, style="dim")


def _is_usage_error(exc: BaseException) -> bool:
    """click's UsageError family (vendored by newer typer, imported by older): exit code 2."""
    return getattr(exc, "exit_code", None) == EXIT_BAD_INPUT and hasattr(exc, "format_message")


def main() -> None:
    """Console-script entry point: usage errors (unknown option, bad value) become one line and exit 2 too."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        Console(stderr=True).print("softaudit: interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        if not message:  # bare `softaudit`: the help was printed already
            sys.exit(EXIT_BAD_INPUT)
        ctx = getattr(exc, "ctx", None)
        where = f"softaudit {ctx.info_name}" if ctx is not None and ctx.parent is not None else "softaudit"
        Console(stderr=True).print(f"[bold red]softaudit: error:[/] {message} (see {where} --help)",
                                   highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
