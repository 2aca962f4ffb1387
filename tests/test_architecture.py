"""The layout's rules (docs/architecture.md), read from the source: stages import only earlier
stages, there is no import cycle, and no module imports another module's _private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "softaudit"

# The pipeline's order: a module may import modules of its own level or of an earlier one.
LEVELS = [
    {"ops", "errors", "files", "printable", "double_double", "formats"},
    {"cases"},
    {"candidates", "builtins"},
    {"reference"},
    {"judging"},
    {"results"},
    {"options"},
    {"runner"},
    {"search", "repro", "reproduction"},
    {"reports"},
    {"diagnosis"},
    {"api", "config", "cli", "softaudit", "__main__"},
]
LEVEL = {stage: i for i, stages in enumerate(LEVELS) for stage in stages}

# Imports against the order, each with its reason. Lazy (inside a function) in every case.
ALLOWED_UPWARD = {
    # The version number, from the package root (light: no numpy), recorded with every result.
    ("runner", "softaudit"),
    # The diagnosis's in-process experiments call the public API, softaudit.audit.
    ("diagnosis", "softaudit"),
    ("diagnosis", "api"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "softaudit"


def _imports(tree: ast.Module) -> list[tuple[str, list[str], bool, int]]:
    """(module, imported names, at top level, line) of every softaudit import outside TYPE_CHECKING."""
    found: list[tuple[str, list[str], bool, int]] = []

    def visit(body: list[ast.stmt], top: bool) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "softaudit":
                found.append((node.module, [a.name for a in node.names], top, node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "softaudit":
                        found.append((alias.name, [], top, node.lineno))
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    visit(inner, top and isinstance(node, (ast.If, ast.Try)))
            for handler in getattr(node, "handlers", []):
                visit(handler.body, False)

    visit(tree.body, True)
    return found


def _sources(*roots: Path) -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


MODULES = _sources(PACKAGE)


def _target_modules(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from softaudit.x import y`` reaches softaudit.x.y when that
    is a module, else softaudit.x."""
    reached = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return reached or [module]


def test_every_stage_has_a_level():
    stages = {_stage(m) for m in MODULES}
    assert stages <= set(LEVEL), f"give these a level in LEVELS (and docs/architecture.md): {stages - set(LEVEL)}"


def test_stages_import_only_earlier_stages():
    wrong = []
    for module, (path, tree) in MODULES.items():
        for target, names, _top, line in _imports(tree):
            for reached in _target_modules(target, names):
                src, dst = _stage(module), _stage(reached)
                if LEVEL[dst] > LEVEL[src] and (src, dst) not in ALLOWED_UPWARD:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {reached} (a later stage)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_module_level():
    graph = {m: {r for t, names, top, _ in _imports(tree) if top for r in _target_modules(t, names)
                 if r in MODULES and r != m}
             for m, (_p, tree) in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("where", ["softaudit", "tests", "benchmarks", "examples"])
def test_no_private_name_is_imported_from_another_module(where):
    sources = _sources(ROOT / where)
    wrong = []
    for path, tree in sources.values():
        for target, names, _top, line in _imports(tree):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {target}.{name}")
    assert not wrong, "\n".join(wrong)


def test_the_layering_test_sees_imports():
    # The rules above pass vacuously if the parser finds nothing: the runner's loop imports judging.
    found = {t for t, *_ in _imports(MODULES["softaudit.runner.loop"][1])}
    assert "softaudit.judging.rules" in found
