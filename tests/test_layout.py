"""The layout is the boundary (``ARCHITECTURE.md``, "Layout" and "Dependencies"), checked on the
imports of every module, parsed (nothing is imported, so a broken module cannot hide a violation):

- nothing in ``inner/`` imports ``meta``, ``train`` or ``analysis``;
- nothing in ``inner/sdk/`` imports a project module outside ``inner.sdk`` (it is all the
  sandbox sees; the standard library and pydantic are fine);
- nothing in ``inner/evaluator/`` reaches the sandbox or the document session, not even through
  another module (``inner.sandbox``, ``inner.engine.loop``, ``inner.engine.run``);
- project code never imports the harness-facing aliases ``inner.contract``, ``inner.templates``,
  ``inner.errors`` (they exist for harnesses; project code imports ``inner.sdk.*``);
- the package maps (the docstrings of ``inner/__init__.py`` and of its subpackages) name only
  modules that exist, and ``inner/__init__.py`` names every one of them;
- no import cycle between the modules of ``inner`` at module level.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("inner", "meta", "train", "analysis")
ALIASES = {"inner.contract", "inner.templates", "inner.errors"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a ``from m import name`` of a submodule is that submodule)
    line: int
    module_level: bool  # runs when the importing module is imported (not inside a function)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in PROJECT for p in sorted((ROOT / top).rglob("*.py"))}


MODULES = project_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(body: list[ast.stmt], module_level: bool):
    """Every import statement in ``body``, with whether it runs at import time: function bodies
    and ``if TYPE_CHECKING:`` blocks do not; class bodies, ``try`` and plain ``if`` do."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, module_level
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, False)
        elif isinstance(node, ast.If):
            yield from _walk(node.body, module_level and not _is_type_checking(node))
            yield from _walk(node.orelse, module_level)
        else:  # class bodies, try/except, with, loops, match: run when their statement runs
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _walk([child], module_level)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _walk(child.body, module_level)


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, module_level in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path)).body, True):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        found += [Import(module, t, node.lineno, module_level) for t in dict.fromkeys(targets)]
    return found


IMPORTS = {m: imports_of(m) for m in MODULES}


def top(name: str) -> str:
    return name.split(".")[0]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules_under(package: str) -> list[str]:
    return [m for m in MODULES if within(m, package)]


def reachable(start: str) -> dict[str, list[str]]:
    """The project modules ``start`` imports, directly or not, each with one import chain."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        m = todo.pop()
        for imp in IMPORTS.get(m, []):
            if imp.target in MODULES and imp.target not in chains:
                chains[imp.target] = [*chains[m], imp.target]
                todo.append(imp.target)
    return chains


def test_modules_are_found() -> None:
    for expected in ("inner.engine.loop", "inner.evaluator.roles", "inner.sdk.child", "meta.loop", "train.cli"):
        assert expected in MODULES
    assert any(i.target == "inner.sdk.contract" for i in IMPORTS["inner.engine.records"])


def test_inner_imports_nothing_of_meta_train_analysis() -> None:
    bad = [str(i) for m in modules_under("inner") for i in IMPORTS[m] if top(i.target) in ("meta", "train", "analysis")]
    assert not bad, bad


def test_sdk_imports_only_the_sdk() -> None:
    """The sandbox sees a copy of ``inner/sdk`` and nothing else of the project."""
    bad = [
        str(i)
        for m in modules_under("inner.sdk")
        for i in IMPORTS[m]
        if top(i.target) in PROJECT and not within(i.target, "inner.sdk")
    ]
    assert not bad, bad


@pytest.mark.parametrize("forbidden", ["inner.sandbox", "inner.engine.loop", "inner.engine.run"])
def test_evaluator_never_reaches_the_sandbox_or_the_session(forbidden: str) -> None:
    bad = [
        " -> ".join(chain)
        for m in modules_under("inner.evaluator")
        for target, chain in reachable(m).items()
        if within(target, forbidden)
    ]
    assert not bad, bad


def test_project_code_never_imports_the_harness_aliases() -> None:
    bad = [str(i) for m, imps in IMPORTS.items() if m not in ALIASES for i in imps if i.target in ALIASES]
    assert not bad, bad


def test_no_import_cycle_in_inner() -> None:
    """Tarjan's strongly connected components over the module-level imports of ``inner``."""
    graph = {
        m: sorted({i.target for i in IMPORTS[m] if i.module_level and within(i.target, "inner") and i.target != m})
        for m in modules_under("inner")
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


# --- the package maps -------------------------------------------------------------------------

_ENTRY = re.compile(r"^- ``([A-Za-z_][\w.]*/?)``", re.M)
_NAME = re.compile(r"``([A-Za-z_][\w.]*/?)``")


def _map_entries(package: str) -> list[str]:
    """The names a package's docstring lists, one per ``- ``name```` bullet."""
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8"))) or ""
    return _ENTRY.findall(doc)


def _exists(package: str, name: str) -> bool:
    path = ROOT.joinpath(*package.split("."), name.rstrip("/"))
    return path.is_dir() if name.endswith("/") else (path.with_suffix(".py").is_file() or path.is_dir())


def test_inner_package_map_names_what_exists() -> None:
    """Every ````name```` inside a bullet of ``inner/__init__.py`` names a module or package of
    ``inner`` (or of the bullet's own package, or a dotted module)."""
    doc = ast.get_docstring(ast.parse(MODULES["inner"].read_text(encoding="utf-8"))) or ""
    bullets = re.split(r"^- ", doc.split("\n\n", 1)[1], flags=re.M)[1:]
    assert len(bullets) >= 5, "inner/__init__.py no longer lists its packages as bullets"
    missing = []
    for bullet in bullets:
        bullet = bullet.split("\n\n")[0]
        names = _NAME.findall(bullet)
        head = names[0].rstrip("/")
        for name in names:
            if "." in name.rstrip("/"):
                ok = name in MODULES
            else:
                ok = _exists("inner", name) or _exists(f"inner.{head}", name)
            if not ok:
                missing.append(name)
    assert not missing, f"inner/__init__.py names what does not exist: {missing}"


def test_inner_package_map_is_complete() -> None:
    doc = ast.get_docstring(ast.parse(MODULES["inner"].read_text(encoding="utf-8"))) or ""
    named = {n.rstrip("/").removeprefix("inner.") for n in _NAME.findall(doc)}
    children = {m.split(".")[1] for m in MODULES if m.count(".") >= 1 and top(m) == "inner"}
    assert not children - named, f"inner/__init__.py does not name {sorted(children - named)}"


#: the subpackages of ``inner`` whose docstring is a map (``- ``name``  what it is`` bullets)
SUBPACKAGES = sorted(
    m
    for m in MODULES
    if m.count(".") == 1 and top(m) == "inner" and MODULES[m].name == "__init__.py" and _map_entries(m)
)


def test_the_maps_are_found() -> None:
    assert {"inner.evaluator", "inner.sdk"} <= set(SUBPACKAGES)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackage_maps_name_what_exists(package: str) -> None:
    missing = [n for n in _map_entries(package) if not _exists(package, n)]
    assert not missing, f"{package}'s docstring lists what does not exist: {missing}"


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackage_maps_are_complete(package: str) -> None:
    named = {n.rstrip("/") for n in _map_entries(package)}
    modules = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith(package + ".") and m.count(".") == 2}
    assert not modules - named, f"{package}'s docstring does not name {sorted(modules - named)}"
