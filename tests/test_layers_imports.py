"""The package's layering: no import cycle between the modules of src/relprop, and no module imports a higher layer.

Imports are read with :mod:`ast` from the source (module level AND inside functions, ``TYPE_CHECKING`` blocks
too), as /work/shared/tools/import_cycles.py does; imports of a module's own parent packages are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "relprop"

#: low to high; a module may import its own layer and lower ones. The first matching prefix decides.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("relprop.errors", "relprop._io", "relprop.masks"),
    ("relprop.graph",),
    ("relprop.rules",),
    ("relprop.composites",),
    ("relprop.explainer",),
    ("relprop.viz", "relprop.evaluation", "relprop.data", "relprop.models"),
    ("relprop.isnet",),
    ("relprop.batch",),
    ("relprop.studies",),
    ("relprop.cli",),
)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name → file of every module of the package (a package is named by its ``__init__.py``)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = package[: len(package) - node.level + 1]
        else:
            base = []
        target = ".".join(base + ([node.module] if node.module else []))
        names = [target] + [f"{target}.{a.name}" for a in node.names]
    return {n for n in names if n in known}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its source."""
    known = modules(src)
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= {
                    t for t in _targets(name, path, node, known)
                    if t != name and not name.startswith(t + ".") and not t.startswith(name + ".")
                }  # fmt: skip
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> int | None:
    """The layer of ``module`` (None: the package root, which re-exports the public API)."""
    if module == PACKAGE:
        return None
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """``"low -> high"`` for every import of a higher layer."""
    bad = []
    for source, targets in sorted(edges.items()):
        here = layer(source)
        for target in sorted(targets):
            there = layer(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{source} (layer {here}) imports {target} (layer {there})")
    return bad


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_lower_layers_never_import_higher_ones() -> None:
    bad = upward_imports(import_graph())
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "from . import viz\n",
        "cli/__init__.py": "from ..viz import heatmap\n",
        "viz/__init__.py": "",
        "viz/heatmap.py": "def f():\n    from ..cli import main  # function level\n",
        "data/__init__.py": "import relprop.data.images\n",
        "data/images.py": "from . import other\n",
        "data/other.py": "from .images import x\n",
    })  # fmt: skip
    edges = import_graph(src)
    assert edges["relprop.viz.heatmap"] == {"relprop.cli"}
    assert edges["relprop.data"] == set()  # its own sub-module: not an edge
    assert cycles(edges) == [["relprop.cli", "relprop.viz.heatmap"], ["relprop.data.images", "relprop.data.other"]]
    assert upward_imports(edges) == ["relprop.viz.heatmap (layer 5) imports relprop.cli (layer 9)"]
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer("relprop.newthing")
