"""The shape of the package (docs/architecture.md): import graph, private names, module size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "fedxray"
MAX_LINES = 450
# The only imports that may wait until a function runs: importing them costs seconds.
HEAVY = ("torch", "torchvision", "opacus", "matplotlib", "pydicom", "kymatio")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str):
    """(imported module, imported names, line, at module level) for each import statement."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(node) for node in tree.body}
    for node in tree.body:  # imports for type checkers only are as good as module level
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            top |= {id(n) for n in node.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = _package_of(module).split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            yield base, [a.name for a in node.names], node.lineno, id(node) in top


def _edges(module: str, top_level_only: bool = False) -> set[str]:
    """The fedxray modules that ``module`` imports (``from pkg import mod`` counts as mod)."""
    out = set()
    for target, names, _, at_top in _imports(module):
        if top_level_only and not at_top:
            continue
        if target in MODULES:
            out.add(target)
        for name in names:
            if f"{target}.{name}" in MODULES:
                out.add(f"{target}.{name}")
    return out - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_circle():
    # Imports inside functions count too: a circle that only a late import hides is still one.
    graph = {m: _edges(m) for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_private_names_or_modules_across_packages():
    offences = []
    for module in MODULES:
        own = _package_of(module)
        for target, names, line, _ in _imports(module):
            where = f"{MODULES[module].relative_to(REPO)}:{line}"
            if any(p.startswith("_") and p != "__future__" for p in target.split(".")):
                offences.append(f"{where} imports the private module {target}")
            other = target not in MODULES or _package_of(target) != own
            offences += [
                f"{where} imports {target}.{n}"
                for n in names
                if n.startswith("_")
                and not n.endswith("__")
                and other
                and f"{target}.{n}" not in MODULES
            ]
    assert offences == []


def test_no_module_is_longer_than_450_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _heavy_closure() -> set[str]:
    """Modules whose import (at module level, transitively) pulls in a heavy library."""
    heavy = {
        m
        for m in MODULES
        for target, _, _, at_top in _imports(m)
        if at_top and target.split(".")[0] in HEAVY
    }
    graph = {m: _edges(m, top_level_only=True) for m in MODULES}
    changed = True
    while changed:
        changed = False
        for m, deps in graph.items():
            if m not in heavy and deps & heavy:
                heavy.add(m)
                changed = True
    return heavy


def test_lazy_imports_only_for_heavy_libraries():
    # One rule: an import waits inside a function only when it would pull in torch,
    # matplotlib or pydicom (directly or through a fedxray module that does).
    heavy = _heavy_closure()
    late = []
    for module in MODULES:
        for target, names, line, at_top in _imports(module):
            if at_top or target == "__future__":
                continue
            targets = {target} | {f"{target}.{n}" for n in names}
            if target.split(".")[0] in HEAVY or targets & heavy:
                continue
            late.append(f"{MODULES[module].relative_to(REPO)}:{line} {target}")
    assert late == []


def test_cli_starts_without_heavy_libraries():
    code = (
        f"import sys, fedxray.cli.main\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
