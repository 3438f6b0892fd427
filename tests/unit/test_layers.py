"""Imports point inward, ring by ring (README, "Code map").

- core: the state machine, errors, events' types; imports nothing of the app
  but core, and no storage, HTTP or settings library;
- storage: `db`, `events.store`, `projections`; never the use cases or an edge;
- use cases: `service`; no `fastapi`, `starlette` or `app.api`;
- edges: `api`, `cli`, `worker`, `ui`, `webhooks`; no `sqlalchemy`.

Only the edges, `bootstrap` and `config` itself read `Settings`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
CORE = [
    "lifecycle.py",
    "errors.py",
    "naming.py",
    "timestamps.py",
    "events/types.py",
    "events/upcasters.py",
]
STORAGE = ["db", "events/store.py", "projections"]
USE_CASES = ["service"]
EDGES = ["api", "cli", "worker", "ui", "webhooks"]
EDGE_MODULES = tuple(f"app.{e}" for e in EDGES)


def _files(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        root = APP / part
        found += [root] if root.is_file() else sorted(root.rglob("*.py"))
    return found


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _module(path: Path) -> str:
    return "app." + ".".join(path.relative_to(APP).with_suffix("").parts)


def _name(path: Path) -> str:
    return str(path.relative_to(APP))


@pytest.mark.parametrize("path", _files(*CORE), ids=_name)
def test_core_imports_only_core(path: Path) -> None:
    core = {_module(p) for p in _files(*CORE)} | {"app.events"}
    bad = {m for m in _imports(path) if m.startswith("app") and m not in core}
    bad |= {m for m in _imports(path) if m.startswith(("sqlalchemy", "fastapi", "starlette"))}
    bad |= {m for m in _imports(path) if m.startswith(("psycopg2", "pydantic_settings"))}
    assert not bad, f"{_name(path)} imports {bad}"


@pytest.mark.parametrize("path", _files(*STORAGE), ids=_name)
def test_storage_imports_no_use_case_and_no_edge(path: Path) -> None:
    forbidden = ("app.service", "app.bootstrap", "fastapi", "starlette", *EDGE_MODULES)
    bad = {m for m in _imports(path) if m.startswith(forbidden)}
    assert not bad, f"{_name(path)} imports {bad}"


@pytest.mark.parametrize("path", _files(*USE_CASES), ids=_name)
def test_use_cases_know_no_http(path: Path) -> None:
    forbidden = ("fastapi", "starlette", "app.bootstrap", *EDGE_MODULES)
    bad = {m for m in _imports(path) if m.startswith(forbidden)}
    assert not bad, f"{_name(path)} imports {bad}"


@pytest.mark.parametrize("path", _files(*EDGES), ids=_name)
def test_edges_do_not_import_sqlalchemy(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith("sqlalchemy")}
    assert not bad, f"{_name(path)} imports {bad}"


def test_only_the_edges_and_the_bootstrap_read_settings() -> None:
    allowed = {*_files(*EDGES), APP / "bootstrap.py", APP / "config.py"}
    readers = [p for p in _files(".") if "app.config" in _imports(p) and p not in allowed]
    assert not readers, [_name(p) for p in readers]


def test_the_rings_are_not_empty() -> None:
    # A renamed folder would otherwise make every check above pass vacuously.
    for ring in (CORE, STORAGE, USE_CASES, EDGES):
        assert _files(*ring), ring
