"""Benchmarks and scripts are not imported by the suite, and many import semoe inside
functions: a renamed or removed name would only fail when someone runs them. Every
``from semoe... import name`` (and ``tests...``) in them, at any depth, must resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def _imported_names(path: Path) -> list[tuple[int, str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("semoe", "tests")
        for alias in node.names
    ]


def _resolves(module: str, name: str) -> bool:
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_semoe_name_a_benchmark_or_script_imports_exists(path):
    missing = [
        f"{path.name}:{line}: from {mod} import {name}"
        for line, mod, name in _imported_names(path)
        if not _resolves(mod, name)
    ]
    assert not missing, "names that no longer exist:\n" + "\n".join(missing)


def test_the_check_sees_benchmarks_and_scripts():
    assert any(p.parent.name == "benchmarks" for p in ENTRY_POINTS)
    assert any(p.parent.name == "scripts" for p in ENTRY_POINTS)
