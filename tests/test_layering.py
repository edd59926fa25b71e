"""The package's layers, checked from its source: no import cycles, no private names across
packages, and imports that only point down the layers of docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "compatindex"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every runtime import of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for mod, names, _ in _imports(name, path):
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES] or [mod]
            for t in targets:
                # importing a.b.c runs a and a.b first: the nearest module of the package counts
                while t and t not in MODULES:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert MODULES, "no modules found"
    cycles = _cycles(_edges())
    assert cycles == [], "import cycles inside compatindex: " + "; ".join(" -> ".join(c) for c in cycles)


def _top(mod: str) -> str:
    """The layer of a module: compatindex.<first part> (or the package root itself)."""
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_no_private_names_across_packages():
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            if not mod.startswith("compatindex"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if mod.split(".")[-1].startswith("_") and not mod.split(".")[-1].startswith("__"):
                private.append(mod)
            if private and _top(mod) != _top(name):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {', '.join(private)} from {mod}")
    assert bad == []


# Which layers each layer may import (docs/architecture.md). The facade and the Protocol know no
# engine; core knows nothing above it; the engines know core and the Protocol, never each other
# (the Qdrant export reads the embedded store on purpose: it copies one into the other).
ALLOWED = {
    "compatindex.core": {"compatindex.core", "compatindex.errors"},
    "compatindex.errors": set(),
    "compatindex.backend": {"compatindex.core"},
    "compatindex.index": {"compatindex.core", "compatindex.errors", "compatindex.backend"},
    "compatindex.connect": {"compatindex.errors", "compatindex.backend", "compatindex.index"},
    "compatindex.embedded": {"compatindex.core", "compatindex.errors", "compatindex.backend", "compatindex.embedded"},
    "compatindex.qdrant": {"compatindex.core", "compatindex.errors", "compatindex.backend", "compatindex.qdrant",
                           "compatindex.index", "compatindex.embedded"},
    "compatindex.evaluation": set(),
    # writes an open Index to .npy/.parquet through its public API only
    "compatindex.file_export": {"compatindex.core", "compatindex.errors", "compatindex.index"},
    "compatindex.trainer": {"compatindex.core", "compatindex.errors", "compatindex.evaluation", "compatindex.trainer"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down_the_layers(layer):
    bad = []
    for name, path in MODULES.items():
        if _top(name) != layer:
            continue
        for mod, names, line in _imports(name, path):
            # `from compatindex import evaluation` imports the module compatindex.evaluation
            for target in [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES] or [mod]:
                if target == "compatindex":
                    bad.append(f"{path.relative_to(PKG.parent)}:{line} imports the package root")
                elif target.startswith("compatindex") and _top(target) not in ALLOWED[layer] | {layer}:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {target}")
    assert bad == []


def test_qdrant_only_the_export_reads_the_embedded_backend():
    users = sorted(str(p.relative_to(PKG.parent)) for n, p in MODULES.items() if _top(n) == "compatindex.qdrant"
                   and any(_top(m) == "compatindex.embedded" for m, _, _ in _imports(n, p)))
    assert users == ["compatindex/qdrant/export.py"]
