"""Write docs/cli.md, the command-line reference, from the typer app's own --help text.

The options are documented once, in softaudit/cli.py; this page is generated from it so that
it cannot drift. Run ``python docs/cli_reference.py`` after changing an option;
tests/test_docs.py fails while docs/cli.md differs from what this script writes.
``--stdout`` prints the page instead of writing it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Fixed before typer is imported (it reads TYPER_USE_RICH at import): plain click help, no colour,
# no terminal-dependent width, so the page is the same on every machine.
os.environ["TYPER_USE_RICH"] = "0"
os.environ["NO_COLOR"] = "1"
os.environ["TERM"] = "dumb"
os.environ["COLUMNS"] = "100"

# The checkout's own softaudit, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDTH = 100
PAGE = Path(__file__).resolve().parent / "cli.md"
REGENERATE = "python docs/cli_reference.py"

HEADER = f"""\
# Command-line reference

Generated from `softaudit --help` and `softaudit COMMAND --help` by
[cli_reference.py](cli_reference.py); do not edit by hand. After changing an option in
`softaudit/cli.py`, run `{REGENERATE}` (tests/test_docs.py checks that this page is current).
What the options mean in practice is explained on the pages linked from [index.md](index.md).
"""


def _help_text(args: list[str]) -> str:
    """The --help output of ``softaudit ARGS``, exactly as a 100-column plain terminal shows it."""
    from typer.testing import CliRunner

    from softaudit.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], prog_name="softaudit",
                                terminal_width=WIDTH, max_content_width=WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"softaudit {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    lines = [line.rstrip() for line in result.output.strip("\n").splitlines()]
    return "\n".join(lines)


def command_names() -> list[str]:
    """The app's commands, in the order `softaudit --help` lists them."""
    import typer.main

    from softaudit.cli import app

    group = typer.main.get_command(app)
    return list(getattr(group, "commands", {}))  # a group's commands, in registration order


def render() -> str:
    """The whole page."""
    parts = [HEADER, "## softaudit\n", "```text\n" + _help_text([]) + "\n```\n"]
    parts.append("Commands: " + ", ".join(f"[{name}](#softaudit-{name})" for name in command_names()) + ".\n")
    for name in command_names():
        parts.append(f"## softaudit {name}\n")
        parts.append("```text\n" + _help_text([name]) + "\n```\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--stdout" in argv:
        sys.stdout.write(text)
    else:
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
