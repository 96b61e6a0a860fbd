"""The house rules of ``tfpipe``: no import circle, packages in layers, small modules, a short top level.

Modules are parsed, not imported. Every import counts, also one inside a function (a lazy import is a
circle all the same when it runs), except those under ``if TYPE_CHECKING:``, which never run. A
``__main__`` module is a ``python -m`` entry point: it belongs to the command line (``tfpipe.cli``)
wherever it sits, so ``tfpipe/train/__main__.py`` may import ``tfpipe.cli.train``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
MAX_TOP_LEVEL = 10


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name ``module`` imports (absolute or relative, ``import_module('x')`` included)."""
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def import_graph(root: Path, package: str = "tfpipe") -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (``from a import b`` names ``a.b`` when that is
    a module, else ``a``)."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        targets = set()
        for imported in found:
            while imported and imported not in paths:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported.split(".")[0] == package:
                targets.add(imported)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str:
    """``tfpipe.train.loop`` → ``train``; a ``__main__`` module → ``cli``; a top-level module → its name."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(package_of(a), set()).update(package_of(b) for b in targets)
    return {a: targets - {a} for a, targets in out.items()}


def _graph_of(files: dict[str, str], tmp_path: Path) -> dict[str, set[str]]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return import_graph(tmp_path, "pkg")


def test_the_checker_sees_lazy_relative_and_import_module_circles(tmp_path: Path) -> None:
    graph = _graph_of(
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg.b import g\n",
            "pkg/b.py": "from . import c\n",
            "pkg/c.py": "import importlib\nimportlib.import_module('pkg.a')\n",
            "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.e import x\n",
            "pkg/e.py": "import pkg.d\n",
        },
        tmp_path,
    )
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg", "pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()  # TYPE_CHECKING imports never run
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circle_between_tfpipe_modules() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 60
    assert circles(graph) == []


def _layer_order(graph: dict[str, set[str]]) -> list[str]:
    """Packages bottom-up (each after everything it imports); AssertionError naming a circle."""
    order: list[str] = []
    remaining = {a: set(t) for a, t in graph.items()}
    while remaining:
        ready = sorted(a for a, t in remaining.items() if not (t & remaining.keys()))
        assert ready, f"packages import each other in a circle: { {a: sorted(t) for a, t in remaining.items()} }"
        order += ready
        for a in ready:
            del remaining[a]
    return order


def test_packages_form_layers_with_the_command_line_on_top() -> None:
    packages = package_graph(import_graph(ROOT))
    order = _layer_order(packages)
    assert order[0] == "storage" and order[-1] == "cli", order
    lower = {"storage", "console", "data", "models", "config", "evaluate"}
    for name in lower:  # the base never reaches up to training, inference, experiments or the command line
        assert not packages[name] & {"train", "predict", "blend", "experiments", "demo", "cli"}, name
    assert "cli" not in set().union(*(t for a, t in packages.items() if a != "cli"))
    assert "experiments" not in packages["train"]  # tracking sits below training


def _python_files(dirs: Iterable[str]) -> list[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


def test_every_module_is_at_most_450_lines() -> None:
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in _python_files(["tfpipe", "data_prep"])
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_top_level_of_tfpipe_is_short() -> None:
    top = sorted(p.name for p in (ROOT / "tfpipe").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    for package in ("cli", "config", "data", "evaluate", "models", "predict", "train", "experiments", "blend"):
        init = ROOT / "tfpipe" / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 120, f"tfpipe/{package}/__init__.py: say what the package owns"
