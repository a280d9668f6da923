"""House rules that the code itself can check (docs/architecture.md, "House rules").

- No import cycle among the modules of ``src/xaikit``, counting imports inside functions too
  (a lazy import hides a cycle from Python, not from the reader).
- No private name (``_name``) imported across a package boundary: what two packages share is
  promoted to a public name of a module both may import.
- No method module imports another method module: shared math lives in a neutral module.
- One path to HTML: ``_repr_html_`` is defined once, by the ``HTMLRepr`` mixin in ``_repr.py``.
- Tests read as specifications (issue 17): no test name joins two behaviours with ``_and_``, and
  a toy model used by two test files is defined once, in ``tests/_models.py``.

Read with the standard library's ``ast``; no import of the package is needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str):
    """(imported module, imported name or None) for every import of an xaikit module."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("xaikit"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, None) if sub in MODULES else (target, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xaikit"):
                    yield alias.name, None


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_no_private_name_crosses_a_package():
    crossing = [
        (m, f"{target}.{name}")
        for m in MODULES
        for target, name in _imports(m)
        if name is not None
        and name.startswith("_")
        and not name.startswith("__")
        and target in MODULES
        and _package(m) != _package(target)
    ]
    assert crossing == []


def test_no_method_module_imports_another():
    registry = MODULES["xaikit.attribution.registry"].read_text()
    assert "def register" in registry
    methods = {
        m
        for m, path in MODULES.items()
        if "@register(" in path.read_text() and m != "xaikit.attribution.registry"
    }
    assert methods, "no method module found"
    crossing = [(m, t) for m in methods for t, _ in _imports(m) if t in methods and t != m]
    assert crossing == []


def test_repr_html_is_defined_only_by_the_mixin():
    defining = sorted(
        m
        for m, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "_repr_html_"
    )
    assert defining == ["xaikit._repr"]


def _test_trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(TESTS.glob("*.py"))}


def test_no_test_name_joins_two_behaviours():
    joined = sorted(
        f"{name}::{node.name}"
        for name, tree in _test_trees().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
        and "_and_" in node.name
    )
    assert joined == []


def _is_module_class(node: ast.AST) -> bool:
    """A class with ``Module``, ``nn.Module`` or ``torch.nn.Module`` among its bases."""
    return isinstance(node, ast.ClassDef) and any(
        ast.unparse(base) in ("Module", "nn.Module", "torch.nn.Module") for base in node.bases
    )


def test_no_toy_model_is_defined_in_two_test_files():
    files: dict[str, set[str]] = {}
    for name, tree in _test_trees().items():
        for node in ast.walk(tree):
            if _is_module_class(node):
                files.setdefault(node.name, set()).add(name)
    assert {c: sorted(f) for c, f in files.items() if len(f) > 1} == {}
