"""Command line: a thin layer over runner.loop.run_audit, search.engine.search and the case library.

Each command builds its options (softaudit.options: defaults < [tool.softaudit] < the flags,
checked by the options' own rules, named by their flags), calls the API and renders the result.

Exit codes: 0 no FAIL, 1 at least one FAIL, 2 bad input (one line, no traceback
unless --debug).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

import softaudit
from softaudit.cases.corpus import corpus_cases_dir, with_corpus_dir
from softaudit.cases.reader import load_cases, select_cases
from softaudit.config import GateConfig
from softaudit.errors import BadInput
from softaudit.formats import FORMATS, get_format
from softaudit.judging.envelope import DEFAULT_RATIO_LIMIT, DEFAULT_RELATIVE_FACTOR, DEFAULT_RELATIVE_SLACK
from softaudit.judging.verdicts import DEFAULT_UNDEFINED_POLICY, Gate
from softaudit.ops import DIRECTIONS, OPS
from softaudit.options import (
    DEFAULT_TIMEOUT,
    AuditOptions,
    CacheOptions,
    Naming,
    WorkerOptions,
    checked_audit_options,
    checked_search_options,
    memory_limit_bytes,
    overridden,
)
from softaudit.printable import printable_markup

if TYPE_CHECKING:
    from softaudit.results.document import ResultsDocument
    from softaudit.runner.loop import AuditResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold literal brackets ([tool.softaudit], [default: ...])
    help="Audit softmax, log_softmax, logsumexp and cross-entropy implementations (forward and backward) against exact references.",
)

EXIT_BAD_INPUT = 2

FLAGS = Naming(seed="--seed", ratio_limit="--limit", max_ulp="--max-ulp", undefined_policy="--undefined policy",
               relative_factor="--relative-factor", relative_slack="--relative-slack", jobs="--jobs",
               timeout="--timeout", device="--device:", op="op", direction="--direction", budget="--budget",
               patience="--patience")
"""How the options' checks name the options here: by their flags."""


class UsageProblem(BadInput):
    """A bad combination of options, or a path that cannot serve, found by the command line itself."""


def _fatal(message: str) -> NoReturn:
    Console(stderr=True).print(f"[bold red]softaudit: error:[/] {printable_markup(message)}", highlight=False,
                               soft_wrap=True)
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
def _bad_input(debug: bool) -> Iterator[None]:
    """Turn bad input raised inside into one line and exit 2 (with the traceback under --debug)."""
    try:
        yield
    except BadInput as exc:
        if debug:
            traceback.print_exc()
        _fatal(str(exc))


def _check_cases_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        if not d.is_dir():
            raise UsageProblem(f"--cases-dir: {str(d)!r} is not a directory")


@app.command()
def run(
    targets: list[str] = typer.Argument(None, metavar="[TARGET]...", help="Candidate files (impl.py), directories of them, or built-ins (builtin:naive, builtin:shifted, builtin:shifted-f64, builtin:torch, builtin:triton-softmax, builtin:triton-online, builtin:triton-ce, builtin:scipy, builtin:liger). Default: the targets of [tool.softaudit].", show_default=False),
    op: list[str] = typer.Option([], "--op", "-o", help="Op to audit (repeatable): softmax, log_softmax, logsumexp, cross_entropy. Default: every op the target defines."),
    direction: list[str] = typer.Option([], "--direction", help="forward (the op) or backward (its gradient), repeatable. Default: both, where the candidate has a backward pass."),
    dtype: list[str] = typer.Option([], "--dtype", "-d", help="Format (repeatable): float64, float32, float16, bfloat16. Default: all four."),
    case: list[str] = typer.Option([], "--case", "-c", help="Case name or family pattern, fnmatch style (repeatable). Default: the whole library."),
    cases_dir: list[Path] = typer.Option([], "--cases-dir", help="Extra directory of case files, added to the shipped library (repeatable)."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Directory of cases softaudit search found, added to the library when it holds any. [default: .softaudit/corpus at the project's root]", show_default=False),
    no_corpus: bool = typer.Option(False, "--no-corpus", help="Leave the corpus of found cases out."),
    json_path: Path | None = typer.Option(None, "--json", help="Write every record to this JSON file (schema: docs/json-schema.md)."),
    html_path: Path | None = typer.Option(None, "--html", help="Write the stability report as one self-contained HTML file (docs/report.md)."),
    md_path: Path | None = typer.Option(None, "--md", help="Write a Markdown summary for a pull-request comment (short; --md-full for everything)."),
    md_full: bool = typer.Option(False, "--md-full", help="Make the --md summary complete: every row, every finding, the skips and the environment."),
    junit_path: Path | None = typer.Option(None, "--junit", help="Write JUnit XML: one test case per candidate x op x direction x format x case."),
    seed: int | None = typer.Option(None, "--seed", help="Seed mixed into every case's own seed; recorded in the JSON. [default: 0]", show_default=False),
    limit: float | None = typer.Option(None, "--limit", help=f"Stability-ratio limit: FAIL above it, WARN between 1 and it. [default: {DEFAULT_RATIO_LIMIT:g}]", show_default=False),
    max_ulp: float | None = typer.Option(None, "--max-ulp", help="Also FAIL any record whose max error exceeds this many ulps. [default: no such limit]", show_default=False),
    undefined: str | None = typer.Option(None, "--undefined", help=f"Accepted output on undefined rows (fully masked or +inf): nan-or-zero, nan, zero, any, jax (JAX's where convention on fully masked rows). [default: {DEFAULT_UNDEFINED_POLICY}]", show_default=False),
    strict: bool | None = typer.Option(None, "--strict/--no-strict", help="WARN fails too (exit 1). [default: no]", show_default=False),
    relative_to: str | None = typer.Option(None, "--relative-to", help="Baseline target (e.g. builtin:torch), audited alongside: FAIL any other candidate whose stability ratio exceeds the factor x the baseline's on the same input, plus the slack.", show_default=False),
    relative_factor: float | None = typer.Option(None, "--relative-factor", help=f"The relative rule's factor k. [default: {DEFAULT_RELATIVE_FACTOR:g}]", show_default=False),
    relative_slack: float | None = typer.Option(None, "--relative-slack", help=f"The relative rule's slack, in stability ratio (envelopes). [default: {DEFAULT_RELATIVE_SLACK:g}]", show_default=False),
    config: Path | None = typer.Option(None, "--config", help="Gate configuration file (a pyproject.toml with [tool.softaudit], or the same keys in a TOML file). Default: the nearest pyproject.toml with [tool.softaudit], from the current directory upward.", show_default=False),
    no_config: bool = typer.Option(False, "--no-config", help="Ignore any [tool.softaudit] configuration."),
    rowwise: bool = typer.Option(False, "--rowwise", help="Call every op one row (1-D vector) at a time."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Seconds one call may take; past it the call FAILs as hung and the worker restarts."),
    memory_limit: float | None = typer.Option(None, "--memory-limit", help="GiB of address space the candidates' worker may use (default: half the machine's memory)."),
    no_isolation: bool = typer.Option(False, "--no-isolation", help="Call candidates in softaudit's own process: a crash or hang then ends the audit."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Reference cache directory (default: $SOFTAUDIT_CACHE_DIR or ~/.cache/softaudit)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every reference afresh and store nothing."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Processes to use: references are computed in JOBS - 1 worker processes while candidates are called. [default: the machine's cores]", show_default=False),
    bench: bool | None = typer.Option(None, "--bench/--no-bench", help="Also time every candidate x op x direction x format at LLM-typical shapes (after the audit), against the copy bandwidth of the same device. [default: no]", show_default=False),
    shape: list[str] = typer.Option([], "--shape", help="Shape ROWSxN to time at with --bench (repeatable). Default: 4096x1024, 1024x32000, 256x128256, 64x262144."),
    device: str | None = typer.Option(None, "--device", help="Where torch and Triton candidates run: cpu, cuda (or cuda:N), or auto (CUDA when available). Without a GPU, Triton kernels run under Triton's CPU interpreter. [default: auto]", show_default=False),
    findings: int = typer.Option(10, "--findings", help="How many worst findings to explain after the table."),
    no_diagnose: bool = typer.Option(False, "--no-diagnose", envvar="SOFTAUDIT_NO_DIAGNOSE", show_envvar=True, help="Skip the diagnosis: naming the likely cause of each candidate x op x direction with a FAIL or WARN, with small experiments run in the candidate's worker (docs/diagnosis.md). SOFTAUDIT_NO_DIAGNOSE=1 skips it too (a CI job that only gates)."),
    explain: bool = typer.Option(False, "--explain", help="Print each diagnosed cause's evidence, explanation and fix, not just its line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no table; the exit code (and the files asked for) only."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """Audit TARGETS over the case library and print a verdict per candidate x op x format.

    Then name the likely cause of each FAIL and WARN (docs/diagnosis.md; --no-diagnose skips it).
    """
    from softaudit.files import write_text
    from softaudit.reports.terminal import render
    from softaudit.results.schema import results_json
    from softaudit.runner.loop import run_audit

    with _bad_input(debug):
        cfg = _gate_config(config, no_config)
        targets = list(targets or []) or (cfg.targets if cfg else [])
        if not targets:
            raise UsageProblem("no TARGET given, and no [tool.softaudit] targets found from the current directory "
                               "upward (softaudit run impl.py, or see docs/ci-gate.md)")
        if findings < 0:
            raise UsageProblem("--findings must be 0 or more")
        configured = cfg.over_audit(AuditOptions()) if cfg else AuditOptions()
        options = checked_audit_options(overridden(
            configured, ops=op, directions=direction, formats=[get_format(d) for d in dtype], case_patterns=case,
            cases_dirs=cases_dir, seed=seed, relative_to=relative_to, relative_factor=relative_factor,
            relative_slack=relative_slack, jobs=jobs, bench=bench, shapes=[_parse_shape(text) for text in shape],
            gate=overridden(configured.gate, ratio_limit=limit, max_ulp=max_ulp, undefined_policy=undefined,
                            strict=strict),
            worker=_worker(configured.worker, no_isolation, rowwise, timeout, memory_limit, device),
            cache=CacheOptions(directory=cache_dir, enabled=not no_cache),
        ), FLAGS)
        if shape and not options.bench:
            raise UsageProblem("--shape sets the shapes --bench times at: add --bench (or bench = true in "
                               "[tool.softaudit])")
        _check_device(options.worker.device)
        outputs = _check_outputs({"--json": json_path, "--html": html_path, "--md": md_path, "--junit": junit_path})
        if md_full and md_path is None:
            raise UsageProblem("--md-full needs --md PATH")
        if explain and no_diagnose:
            raise UsageProblem("--explain explains the diagnosis, which --no-diagnose (or SOFTAUDIT_NO_DIAGNOSE) "
                               "skips: drop one of them")
        _check_cases_dirs(list(options.cases_dirs))
        corpus_dir = _corpus(corpus, no_corpus, cfg)
        options = dataclasses.replace(options, corpus_dir=corpus_dir)
        console = Console(stderr=True)
        if cfg is not None and not quiet:
            console.print(f"softaudit: gate configuration from {cfg.source}", highlight=False)
        found = corpus_cases_dir(corpus_dir)
        if found is not None and not quiet:
            from softaudit.reports.search_report import display_path

            console.print(f"softaudit: adding the {len(list(found.glob('*.toml')))} case file(s) of the corpus "
                          f"{display_path(found)} (--no-corpus leaves them out)", highlight=False)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=quiet or not console.is_terminal) as bar:
            task = bar.add_task("loading", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            with _signals_interrupt() as received:
                result = run_audit(targets, options, progress=progress)
            if not result.complete and received:
                result.interrupted_by = received[0]  # the exit code (130 or 143) every report states
    diagnoses, stopped_by, diagnosis_note = ((None, None, "") if no_diagnose or not result.complete
                                             else _diagnose(result, console, quiet, debug))
    text = results_json(result, diagnoses) if any(outputs.values()) else ""
    if json_path is not None:
        try:
            write_text(json_path, text)
        except OSError as exc:
            _fatal(f"--json: cannot write {str(json_path)!r}: {exc.strerror or exc}")
    if any(v is not None for k, v in outputs.items() if k != "--json"):
        from softaudit.results.schema import document_of

        doc = document_of(result, text)
        doc.source = str(json_path) if json_path is not None else ""
        _write_reports(doc, html_path, md_path, md_full, junit_path)
    if not quiet:
        render(result, Console(), max_findings=findings, diagnoses=diagnoses, explain=explain,
               diagnosis_note=diagnosis_note)
        written = [str(p) for p in outputs.values() if p is not None]
        if written:
            Console().print(f"Written: {', '.join(written)}", highlight=False)
    if not result.complete:
        signum = result.exit_code - 128
        Console(stderr=True).print(f"softaudit: interrupted by {signal.Signals(signum).name}; "
                                   f"{len(result.records)} records kept" + (f" in {json_path}" if json_path else ""))
    if stopped_by is not None:
        Console(stderr=True).print(f"softaudit: diagnosis interrupted by {signal.Signals(stopped_by).name}; every "
                                   "record is kept, without a diagnosis")
        raise typer.Exit(128 + stopped_by)
    raise typer.Exit(result.exit_code)


def _diagnose(result: AuditResult, console: Console, quiet: bool, debug: bool) -> tuple[list | None, int | None, str]:
    """The diagnosis of the audit's FAILs and WARNs, its experiments run in a worker with the
    audit's isolation options (a crash there is a FAIL record, evidence); a progress line once the
    first experiment starts. Returns (diagnoses, None, what it ran: "N experiments in S s");
    (None, signal, "") when interrupted (SIGINT, SIGTERM); (None, None, "") when the diagnosis
    itself failed (said in one line: the audit's records and reports are kept)."""
    from softaudit.diagnosis.stage import WorkerRunner, diagnose_records, failing_candidates
    from softaudit.results.schema import record_dict

    started = time.perf_counter()
    records = [record_dict(r) for r in result.records]
    if not failing_candidates(records):
        return [], None, ""
    bar = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), TimeElapsedColumn(),
                   console=console, transient=True, disable=quiet or not console.is_terminal)
    task = bar.add_task("diagnosing", total=None)

    def progress(count: int, what: str) -> None:
        bar.update(task, description=f"{printable_markup(what)} · experiment {count}")
        if count == 1:  # records-only diagnoses take no time: no bar for them
            bar.start()

    runner = WorkerRunner(result.options, result.candidates, progress)
    try:
        with _signals_interrupt() as received:
            try:
                diagnoses = diagnose_records(records, {c.name: c.target for c in result.candidates}, runner)
                ran = f"{runner.started} experiment{'s' if runner.started != 1 else ''} in " if runner.started else ""
                return diagnoses, None, f"{ran}{time.perf_counter() - started:.1f} s"
            except KeyboardInterrupt:
                return None, received[0] if received else signal.SIGINT.value, ""
            except Exception as exc:  # a diagnosis bug must not cost the audit's results
                if debug:
                    traceback.print_exc()
                Console(stderr=True).print(f"softaudit: the diagnosis failed ({type(exc).__name__}: "
                                           f"{printable_markup(exc)}); the records are kept, without a diagnosis",
                                           highlight=False)
                return None, None, ""
    finally:
        bar.stop()
        runner.close()


def _worker(configured: WorkerOptions, no_isolation: bool, rowwise: bool, timeout: float,
            memory_limit: float | None, device: str | None) -> WorkerOptions:
    """The worker settings: the flags over [tool.softaudit]'s (its device) over the defaults."""
    memory_bytes = memory_limit_bytes(memory_limit, "--memory-limit") if memory_limit is not None else None
    return overridden(configured, isolated=not no_isolation, rowwise=rowwise, timeout=timeout,
                      memory_limit=memory_bytes, device=device)


def _check_device(device: str) -> None:
    """The device is usable here (runner.environment.check_device), named by its flag."""
    from softaudit.runner.environment import DeviceError, check_device

    try:
        check_device(device)
    except DeviceError as exc:
        raise UsageProblem(f"--device: {exc}") from None


def _corpus(path: Path | None, off: bool, cfg: GateConfig | None) -> Path | None:
    """The corpus directory in force: --corpus, else [tool.softaudit] corpus, else the project's
    .softaudit/corpus; None with --no-corpus."""
    from softaudit.cases.corpus import default_corpus_dir

    if off:
        if path is not None:
            raise UsageProblem("--corpus and --no-corpus contradict each other")
        return None
    if path is not None:
        if path.exists() and not path.is_dir():
            raise UsageProblem(f"--corpus: {str(path)!r} is not a directory")
        return path
    return cfg.corpus if cfg is not None and cfg.corpus is not None else default_corpus_dir()


def _parse_shape(text: str) -> tuple[int, int]:
    from softaudit.runner.speed import parse_shape

    try:
        return parse_shape(text)
    except ValueError as exc:
        raise UsageProblem(f"--shape: {exc}") from None


def _gate_config(path: Path | None, ignore: bool) -> GateConfig | None:
    """The [tool.softaudit] settings in force: --config's file, else the nearest pyproject.toml's."""
    from softaudit.config import find_config, load_config

    if path is not None and ignore:
        raise UsageProblem("--config and --no-config contradict each other")
    if ignore:
        return None
    found = path if path is not None else find_config(Path.cwd())
    return load_config(found) if found is not None else None


PROTECTED_SUFFIXES = (".py", ".toml", ".pyi")
"""An existing file with one of these suffixes is never an output: `softaudit run victim.py --json
victim.py` overwrote the candidate's own source."""


def _check_outputs(paths: dict[str, Path | None], protect: bool = True) -> dict[str, Path | None]:
    """Output files: their directories exist, they are not directories or (``protect``: reports,
    not the scripts repro writes under its own --force rule) existing source files, no two are
    the same file."""
    seen: dict[Path, str] = {}
    for flag, p in paths.items():
        if p is None:
            continue
        if not p.parent.is_dir():
            raise UsageProblem(f"{flag}: directory {str(p.parent)!r} does not exist")
        if p.is_dir():
            raise UsageProblem(f"{flag}: {str(p)!r} is a directory")
        if protect and p.suffix in PROTECTED_SUFFIXES and p.exists():
            raise UsageProblem(f"{flag}: {str(p)!r} is a source or configuration file; softaudit never writes "
                               f"over a {p.suffix} file (a candidate, a case file or pyproject.toml)")
        key = p.resolve()
        if key in seen:
            raise UsageProblem(f"{seen[key]} and {flag} name the same file {str(p)!r}")
        seen[key] = flag
    return paths


def _write_reports(doc: ResultsDocument, html_path: Path | None, md_path: Path | None, md_full: bool,
                   junit_path: Path | None) -> None:
    from softaudit.files import write_text

    jobs = []
    if html_path is not None:
        from softaudit.reports.html_report import render_html

        jobs.append(("--html", html_path, lambda: render_html(doc)))
    if md_path is not None:
        from softaudit.reports.markdown_report import render_markdown

        jobs.append(("--md", md_path, lambda: render_markdown(doc, complete=md_full)))
    if junit_path is not None:
        from softaudit.reports.junit_report import render_junit

        jobs.append(("--junit", junit_path, lambda: render_junit(doc)))
    for flag, path, render in jobs:
        try:
            write_text(path, render())
        except OSError as exc:
            _fatal(f"{flag}: cannot write {str(path)!r}: {exc.strerror or exc}")


@app.command("report")
def report(
    results: Path = typer.Argument(..., metavar="RESULTS.json", help="A results file written by softaudit run --json.", show_default=False),
    html_path: Path | None = typer.Option(None, "--html", help="Write the stability report as one self-contained HTML file."),
    md_path: Path | None = typer.Option(None, "--md", help="Write a Markdown summary for a pull-request comment."),
    md_full: bool = typer.Option(False, "--md-full", help="Make the --md summary complete."),
    junit_path: Path | None = typer.Option(None, "--junit", help="Write JUnit XML for CI systems."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """Write the HTML, Markdown and/or JUnit reports of a results file (any subset)."""
    from softaudit.results.schema import load_results

    with _bad_input(debug):
        outputs = _check_outputs({"--html": html_path, "--md": md_path, "--junit": junit_path})
        if not any(outputs.values()):
            raise UsageProblem("nothing to write: give --html PATH, --md PATH and/or --junit PATH")
        if md_full and md_path is None:
            raise UsageProblem("--md-full needs --md PATH")
        for flag, p in outputs.items():
            if p is not None and results.exists() and p.resolve() == results.resolve():
                raise UsageProblem(f"{flag} would overwrite the results file {str(results)!r}")
        doc = load_results(results)
    _write_reports(doc, html_path, md_path, md_full, junit_path)
    Console().print(f"Written: {', '.join(str(p) for p in outputs.values() if p is not None)}", highlight=False)


@app.command("repro")
def repro(
    results: Path = typer.Argument(..., metavar="RESULTS.json", help="A results file written by softaudit run --json.", show_default=False),
    record_id: str = typer.Argument(..., metavar="RECORD_ID", help="The record's id: candidate/op/direction/dtype/case (shown in the reports).", show_default=False),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the script here (default: print it)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """Write a standalone script that rebuilds a record's input, calls the candidate, prints exact and computed."""
    from softaudit.repro import repro_script
    from softaudit.results.schema import load_results

    with _bad_input(debug):
        if output is not None:
            _check_outputs({"--output": output}, protect=False)
            if output.exists() and not force:
                raise UsageProblem(f"--output: {str(output)!r} exists (--force overwrites it)")
        script = repro_script(load_results(results), record_id)
    if output is None:
        sys.stdout.write(script)
        return
    from softaudit.files import write_text

    try:
        write_text(output, script)
    except OSError as exc:
        _fatal(f"--output: cannot write {str(output)!r}: {exc.strerror or exc}")
    Console(stderr=True).print(f"Written: {output} (run it with: python {output})", highlight=False)


@app.command("search")
def search_command(
    target: str = typer.Argument(..., metavar="TARGET", help="The candidate: a file (impl.py) or a built-in (builtin:NAME).", show_default=False),
    op: str = typer.Option(..., "--op", "-o", help="The op to search: softmax, log_softmax, logsumexp or cross_entropy.", show_default=False),
    dtype: str = typer.Option("float32", "--dtype", "-d", help="Format: float64, float32, float16 or bfloat16."),
    direction: str = typer.Option("forward", "--direction", help="forward (the op) or backward (its gradient)."),
    budget: float = typer.Option(60.0, "--budget", help="Seconds to explore; shrinking a failure then takes at most as long again (usually seconds)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search's random choices: the same seed explores the same inputs in the same order."),
    patience: int = typer.Option(300, "--patience", help="Once an input fails on its ratio, stop exploring after this many inputs in a row that did not make the worst 10% worse (a NaN, inf or crash stops it at once)."),
    candidate_name: str | None = typer.Option(None, "--candidate", help="Which candidate, when TARGET defines several.", show_default=False),
    save_to: Path | None = typer.Option(None, "--save-to", help="Corpus directory the shrunk failing input is saved into, as a case file that softaudit run picks up. [default: .softaudit/corpus at the project's root]", show_default=False),
    cases_dir: list[Path] = typer.Option([], "--cases-dir", help="Extra directory of case files to start from, besides the shipped library and the corpus (repeatable)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the result (minimal input, error, ratio, failure class, saved case) to this JSON file (docs/search.md)."),
    repro_path: Path | None = typer.Option(None, "--repro", help="Write the reproducer script here instead of printing it (an existing file is an error: never overwritten).", show_default=False),
    limit: float | None = typer.Option(None, "--limit", help=f"Stability-ratio limit: an input fails above it. [default: {DEFAULT_RATIO_LIMIT:g}]", show_default=False),
    max_ulp: float | None = typer.Option(None, "--max-ulp", help="Also fail inputs whose max error exceeds this many ulps. [default: no such limit]", show_default=False),
    undefined: str | None = typer.Option(None, "--undefined", help=f"Accepted output on undefined rows: nan-or-zero, nan, zero, any, jax. [default: {DEFAULT_UNDEFINED_POLICY}]", show_default=False),
    config: Path | None = typer.Option(None, "--config", help="Gate configuration file (limits, undefined, device, corpus from [tool.softaudit]). Default: the nearest pyproject.toml with [tool.softaudit].", show_default=False),
    no_config: bool = typer.Option(False, "--no-config", help="Ignore any [tool.softaudit] configuration."),
    rowwise: bool = typer.Option(False, "--rowwise", help="Call the op one row (1-D vector) at a time."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Seconds one call may take; past it the input fails as hung."),
    memory_limit: float | None = typer.Option(None, "--memory-limit", help="GiB of address space the candidate's worker may use (default: half the machine's memory)."),
    no_isolation: bool = typer.Option(False, "--no-isolation", help="Call the candidate in softaudit's own process: a crash or hang then ends the search."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Reference cache directory, for the library cases and the saved case (default: $SOFTAUDIT_CACHE_DIR or ~/.cache/softaudit)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every reference afresh and store nothing."),
    device: str | None = typer.Option(None, "--device", help="Where torch and Triton candidates run: cpu, cuda (or cuda:N), or auto. [default: auto]", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; the exit code (and the files asked for) only."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """Hunt for inputs on which TARGET's op fails, shrink the worst to a minimal one and save it as a case.

    Exit 1 when a failing input was found (and saved), 0 when none was within the budget, 2 on bad input.
    """
    from softaudit.files import write_text
    from softaudit.reports.search_report import render_search, search_json
    from softaudit.search.engine import SearchOptions, search

    with _bad_input(debug):
        cfg = _gate_config(config, no_config)
        gate, worker = (cfg.over_gate(Gate()), cfg.over_worker(WorkerOptions())) if cfg else (Gate(), WorkerOptions())
        options = checked_search_options(SearchOptions(
            op=op, direction=direction, format=get_format(dtype), budget=budget, seed=seed, patience=patience,
            gate=overridden(gate, ratio_limit=limit, max_ulp=max_ulp, undefined_policy=undefined),
            candidate=candidate_name, cases_dirs=list(cases_dir),
            worker=_worker(worker, no_isolation, rowwise, timeout, memory_limit, device),
            cache=CacheOptions(directory=cache_dir, enabled=not no_cache),
        ), FLAGS)
        _check_device(options.worker.device)
        _check_cases_dirs(list(cases_dir))
        if save_to is not None and save_to.exists() and not save_to.is_dir():
            raise UsageProblem(f"--save-to: {str(save_to)!r} is not a directory")
        _check_outputs({"--json": json_path, "--repro": repro_path})
        if repro_path is not None and repro_path.exists():
            raise UsageProblem(f"--repro: {str(repro_path)!r} exists (softaudit never overwrites it; choose another path)")
        options = dataclasses.replace(options, save_to=save_to or _corpus(None, False, cfg))
        console = Console(stderr=True)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=quiet or not console.is_terminal) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, elapsed: float, total: float, best: str) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                word = "exploring" if phase == "explore" else "shrinking"
                bar.update(tasks[phase], completed=min(elapsed, total), description=f"{word} · {best}")

            with _signals_interrupt() as received:
                result = search(target, options, progress=progress)
            if not result.complete and received:
                result.interrupted_by = received[0]  # the exit code (130 or 143) the JSON states
    if json_path is not None:
        try:
            write_text(json_path, search_json(result))
        except OSError as exc:
            _fatal(f"--json: cannot write {str(json_path)!r}: {exc.strerror or exc}")
    if repro_path is not None and result.reproducer:
        try:
            write_text(repro_path, result.reproducer)
        except OSError as exc:
            _fatal(f"--repro: cannot write {str(repro_path)!r}: {exc.strerror or exc}")
    if not quiet:
        render_search(result, Console(), show_reproducer=repro_path is None)
        written = [str(p) for p in (json_path, repro_path if result.reproducer else None) if p is not None]
        if written:
            Console().print(f"Written: {', '.join(written)}", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command("compare")
def compare_results(
    base: Path = typer.Argument(..., metavar="BASE.json", help="The results to compare against (e.g. the main branch's).", show_default=False),
    new: Path = typer.Argument(..., metavar="NEW.json", help="The results under test.", show_default=False),
    factor: float = typer.Option(2.0, "--factor", help="Error growth that counts: NEW's max stability ratio above F x BASE's + --slack-ratio."),
    slack: float = typer.Option(1.0, "--slack", metavar="ULP", help="Ulps added to F x BASE's max ulp (0 -> 0.5 ulp is no growth)."),
    slack_ratio: float = typer.Option(0.5, "--slack-ratio", metavar="R", help="Envelopes added to F x BASE's max stability ratio."),
    speed_factor: float = typer.Option(1.5, "--speed-factor", help="Slowdown that counts: NEW's median time above F x BASE's (when both files have speed figures)."),
    fail_on_missing: bool = typer.Option(False, "--fail-on-missing", help="A BASE record missing from NEW is a regression."),
    fail_on_ulp: bool = typer.Option(False, "--fail-on-ulp", help="Max ulp growth alone is a regression (default: listed only)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON (docs/compare.md)."),
    limit: int = typer.Option(50, "--limit", help="Lines per list in the terminal."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """List regressions and improvements between two results files; exit 1 on a regression."""
    import json as json_module

    from softaudit.files import write_text
    from softaudit.reports.compare import CompareOptions, compare, comparison_dict, render_comparison
    from softaudit.results.schema import load_results

    with _bad_input(debug):
        options = CompareOptions(factor=factor, slack_ulp=slack, slack_ratio=slack_ratio, speed_factor=speed_factor,
                                 missing_is_regression=fail_on_missing, ulp_growth_is_regression=fail_on_ulp)
        try:
            options.check()
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        if limit < 0:
            raise UsageProblem("--limit must be 0 or more")
        _check_outputs({"--json": json_path})
        comparison = compare(load_results(base), load_results(new), options)
    render_comparison(comparison, Console(), limit=limit)
    if json_path is not None:
        try:
            write_text(json_path, json_module.dumps(comparison_dict(comparison), indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            _fatal(f"--json: cannot write {str(json_path)!r}: {exc.strerror or exc}")
    raise typer.Exit(comparison.exit_code)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
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
    corpus: Path | None = typer.Option(None, "--corpus", help="Directory of cases softaudit search found, listed when it holds any. [default: .softaudit/corpus at the project's root]", show_default=False),
    no_corpus: bool = typer.Option(False, "--no-corpus", help="Leave the corpus of found cases out."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for bad input."),
) -> None:
    """List the case library: name, family, ops, formats, shape and the failure each provokes."""
    with _bad_input(debug):
        _check_cases_dirs(cases_dir)
        dirs = with_corpus_dir(cases_dir, _corpus(corpus, no_corpus, _gate_config(None, False)))
        cases = select_cases(load_cases(dirs), case)
    console = Console()
    console.print(f"[bold]{len(cases)} cases[/] (softaudit run --case NAME_OR_FAMILY selects them)")
    family = None
    for c in cases:
        if c.family != family:
            family = c.family
            console.print(f"\n[bold]{printable_markup(family)}[/]")
        ops = "all ops" if set(c.ops) == set(OPS) else ", ".join(c.ops)
        if set(c.directions) != set(DIRECTIONS):
            ops += f" ({', '.join(c.directions)} only)"
        fmts = "all formats" if not c.formats or set(c.formats) == set(FORMATS) else ", ".join(c.formats)
        console.print(f"  [cyan]{printable_markup(c.name)}[/]  {c.rows} x {c.n}; {ops}; {fmts}", highlight=False)
        console.print(f"      {printable_markup(c.description)}", highlight=False, style="dim")


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
