"""Imports point inward: the core knows nothing of storage, HTTP or settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
CORE = ["lifecycle.py", "errors.py", "naming.py", "events/types.py", "events/upcasters.py"]
EDGES = ["api", "cli", "ui"]
FORBIDDEN_IN_CORE = ("sqlalchemy", "fastapi", "starlette", "app.config", "app.db", "psycopg2")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_storage_http_or_settings(module: str) -> None:
    bad = {m for m in _imports(APP / module) if m.startswith(FORBIDDEN_IN_CORE)}
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("edge", EDGES)
def test_edges_do_not_import_sqlalchemy(edge: str) -> None:
    root = APP / edge
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    for path in files:
        bad = {m for m in _imports(path) if m.startswith("sqlalchemy")}
        assert not bad, f"{path.relative_to(APP)} imports {bad}"
