"""The import graph of the package: no cycles, and no upward import between layers.

Imports are read from the source (module level and inside functions alike; ``TYPE_CHECKING``
blocks aside), so a function-local import cannot hide a cycle. A package is in one layer; it
may import its own modules and those of lower layers. Packages sharing a layer are
independent of each other.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import semoe

ROOT = Path(semoe.__file__).parent

# Top to bottom. "generation.methods" is the registered methods, above passage experts,
# which use the generation core below them.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"deployments"},
    {"flows"},
    {"tasks"},
    {"evaluation", "reporting"},
    {"checks"},
    {"routing"},
    {"identity", "indexing"},
    {"generation.methods"},
    {"experts", "moe_lm"},
    {"generation"},
    {"models", "retrieval"},
    {"data", "storage", "metrics", "concurrency", "textfmt", "hashing"},
    {"stats"},  # pure numpy/scipy: the store computes intervals with it
    {"registry", "progress"},
    {"config"},
    {""},  # the package's own __init__ (its version)
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[:2] == ["generation", "methods"]:
        return "generation.methods"
    return parts[0] if parts else ""


def _imports(path: Path, module: str) -> set[str]:
    """semoe modules imported by ``path`` anywhere but under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("semoe"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")[: len(module.split(".")) - child.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("semoe"):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:  # "semoe.x.y.attr" -> the module that holds it
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {t for n in _imports(p, m) if (t := resolve(n)) and t != m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_upward_or_sideways_import_between_layers():
    layer_of = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    graph = _graph()
    unplaced = sorted({_package(m) for m in graph} - set(layer_of))
    assert not unplaced, f"packages missing from LAYERS: {unplaced}"
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if _package(m) != _package(t) and layer_of[_package(t)] <= layer_of[_package(m)]
    )
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_checker_sees_function_local_imports(tmp_path):
    pkg = tmp_path / "semoe"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from semoe.b import g\n", encoding="utf-8")
    (pkg / "b.py").write_text("from semoe import a\n\ndef g():\n    pass\n", encoding="utf-8")
    assert _imports(pkg / "a.py", "semoe.a") == {"semoe.b", "semoe.b.g"}
    assert _cycles({"semoe.a": {"semoe.b"}, "semoe.b": {"semoe.a"}}) == [["semoe.a", "semoe.b"]]


def test_lint_and_format_clean():
    """ruff (configured in pyproject.toml) finds nothing and would reformat nothing."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the `test` extra: pip install -e '.[test]'"
    paths = [str(ROOT.parent / p) for p in ("semoe", "tests", "benchmarks", "scripts")]
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        done = subprocess.run([ruff, *args, *paths], capture_output=True, text=True, cwd=ROOT.parent)
        assert done.returncode == 0, done.stdout + done.stderr


# Libraries slow to import (≥ 0.1 s here) or pulling in torch: imported inside the functions
# that need them, so `semoe --help` and listing names stay instant. Every other import is at
# module level, where the import graph can be read.
HEAVY_LIBRARIES = {
    "accelerate",
    "bm25s",
    "dask",
    "datasets",
    "distributed",
    "duckdb",
    "elastic_transport",
    "elasticsearch",
    "gguf",
    "matplotlib",
    "numpy",
    "peft",
    "polars",
    "prefect",
    "prefect_dask",
    "pyarrow",
    "scipy",
    "torch",
    "tqdm",
    "transformers",
}
HEAVY_MODULES = {"safetensors.torch"}


def _is_heavy_library(name: str) -> bool:
    return name.split(".")[0] in HEAVY_LIBRARIES or any(name == m or name.startswith(m + ".") for m in HEAVY_MODULES)


def _split_imports(path: Path, module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(names imported at module level, [(line, first name)] of imports inside functions)."""
    top: set[str] = set()
    local: list[tuple[int, str]] = []
    is_package = path.name == "__init__.py"

    def names(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
            base = ".".join(anchor + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function:
                    local.append((child.lineno, names(child)[0]))
                else:
                    top.update(names(child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, local


def test_function_local_imports_are_only_for_heavy_libraries():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    split = {m: _split_imports(p, m) for m, p in files.items()}
    heavy: dict[str, bool] = {}

    def is_heavy(module: str, seen: frozenset = frozenset()) -> bool:
        """A semoe module is heavy when importing it imports a heavy library."""
        if module not in heavy:
            parents = lambda n: [".".join(n.split(".")[: i + 1]) for i in range(len(n.split(".")))]  # noqa: E731
            heavy[module] = any(
                _is_heavy_library(n)
                or any(
                    p in files and p != module and p not in seen and is_heavy(p, seen | {module}) for p in parents(n)
                )
                for n in split[module][0]
            )
        return heavy[module]

    light = []
    for module, (_, local) in split.items():
        for line, name in local:
            targets = (
                [name] if not name.startswith("semoe") else [n for n in (name, name.rpartition(".")[0]) if n in files]
            )
            if _is_heavy_library(name) or (targets and any(is_heavy(t) for t in targets)):
                continue
            light.append(f"{files[module].relative_to(ROOT.parent)}:{line} imports {name}")
    assert not light, "light imports inside functions (move them to module level):\n" + "\n".join(light)
