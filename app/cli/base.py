"""The CLI's shared pieces: the root Typer app, the consoles, and the run context."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app import bootstrap
from app.config import Settings
from app.db import migrate
from app.db.engine import Database
from app.errors import ConfigError
from app.timestamps import rfc3339

log = logging.getLogger("vidledger")
#: Piped output is not cut to 80 columns: a script greps whole names.
out = Console(width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True, soft_wrap=True)


#: `--json`: machine-readable output, one JSON object, or JSON Lines for a list.
JsonFlag = Annotated[
    bool, typer.Option("--json", help="print JSON (JSON Lines for a list) instead of a table")
]


def print_json(value: Any) -> None:
    """One JSON document on one line of stdout (times as RFC 3339)."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Enum):
        return value.value
    return str(value)  # a UUID, a path: as text


def new_table(*headers: str, show_header: bool = True) -> Table:
    """A table whose cells wrap at the terminal's width and are never cut short."""
    made = Table(show_header=show_header)
    for header in headers:
        made.add_column(header, overflow="fold")
    return made


cli = typer.Typer(
    name="vidledger",
    help="Event-sourced video status service for image apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Context:
    """Settings and a lazily opened database, shared by one command run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            ensure_migrated(self.settings.database_url)
            self._db = bootstrap.open_db(self.settings, pool_size=4)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


_current: list[Context] = []


def enter(settings: Settings) -> Context:
    """Start a command run with `settings` (main() calls this)."""
    _current.append(Context(settings))
    return _current[-1]


def leave() -> None:
    _current.pop().close()


def ctx() -> Context:
    assert _current, "commands run through app.cli.main()"
    return _current[-1]


def ensure_migrated(url: str) -> None:
    if migrate.current_revision(url) != migrate.head_revision():
        raise ConfigError("the database schema is not current: run 'vidledger db upgrade'")


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"
