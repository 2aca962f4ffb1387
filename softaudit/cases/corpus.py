"""The corpus: failing inputs that ``softaudit search`` found, kept as case files (docs/search.md#the-corpus).

Every input the search shrinks is written as one ``[[case]]`` file of explicit values into a corpus
directory (default: ``.softaudit/corpus`` at the project's root), named by a hash of its content so
that finding it again writes nothing. ``softaudit run`` adds the corpus to the case library, so a bug
once found is a regression case from then on. docs/search.md documents the layout.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from softaudit.files import write_text

CORPUS_DIR = Path(".softaudit") / "corpus"
"""Where the corpus lives, relative to the project's root (project_root)."""

FAMILY = "found"
"""The family of every corpus case: ``softaudit run --case found`` selects them."""

_ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the current one) holding a
    pyproject.toml, setup.py, setup.cfg or .git; ``start`` itself when none does."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if any((d / marker).exists() for marker in _ROOT_MARKERS):
            return d
    return start


def default_corpus_dir(start: Path | None = None) -> Path:
    """$SOFTAUDIT_CORPUS_DIR when set, else ``.softaudit/corpus`` under the project's root."""
    env = os.environ.get("SOFTAUDIT_CORPUS_DIR")
    if env:
        return Path(env)
    return project_root(start) / CORPUS_DIR


def corpus_cases_dir(directory: Path | None) -> Path | None:
    """``directory`` when it holds case files a run should add, else None (no corpus yet)."""
    if directory is None or not directory.is_dir() or not any(directory.glob("*.toml")):
        return None
    return directory


def with_corpus_dir(dirs: Sequence[Path], corpus: Path | None) -> list[Path]:
    """``dirs`` with the corpus appended when it holds case files and is not among them already."""
    found = corpus_cases_dir(corpus)
    if found is None or any(Path(d).resolve() == found.resolve() for d in dirs):
        return list(dirs)
    return [*dirs, found]


def toml_value(v: Any) -> str:
    """A value written so that TOML reads back exactly the same: floats by repr (shortest
    round-trip digits), infinities and NaN as TOML's inf/-inf/nan, -0.0 with its sign."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(ch in text for ch in ".en") else text + ".0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(item, (list, tuple)) for item in v):
            return "[\n" + "".join(f"  {toml_value(item)},\n" for item in v) + "]"
        return "[" + ", ".join(toml_value(item) for item in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to a case file")


def case_toml(table: Mapping[str, Any], comment: str = "") -> str:
    """A case file holding the one ``[[case]]`` table, keys in the order given."""
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    body = "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
    return f"{head}[[case]]\n{body}"


def content_digest(table: Mapping[str, Any]) -> str:
    """A hash of what a case tests (everything but its name, wording and provenance)."""
    h = hashlib.sha256()
    for key in sorted(table):
        if key in ("name", "description", "seen_in"):
            continue
        h.update(f"{key}={toml_value(table[key])};".encode())
    return h.hexdigest()


def save_case(table: Mapping[str, Any], directory: Path, comment: str = "") -> tuple[Path, bool]:
    """Write the case into ``directory`` (created when missing) as ``<name>.toml``; returns the path and
    whether it was written. A file of that name already there is left alone: names are content
    hashes, so it holds the same case (found again)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table['name']}.toml"
    if path.exists():
        return path, False
    write_text(path, case_toml(table, comment))
    return path, True
