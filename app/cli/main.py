"""`main(argv)`: the CLI's composition root."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from vidledger_client import VidLedgerError

from app.cli import admin, events, generators, projections, reading, serve, webhooks  # noqa: F401  # registers the commands
from app.cli.base import cli, enter, err, leave
from app.config import load_settings
from app.errors import AppError, ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (1 on a refused command, 2 on bad config)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print(f"error: {exc.detail}")
        return 2
    from app import logs

    logs.configure(settings.log_level, settings.log_format)
    enter(settings)
    try:
        result = cli(args, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except ConfigError as exc:
        err.print(f"error: {exc.detail}")
        return 2
    except AppError as exc:
        err.print(f"error: {exc.detail}")
        return 1
    except VidLedgerError as exc:  # a command run against a server with --url
        err.print(f"error: {exc}", markup=False)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]  # a ClickException, see _is_usage_error
            return int(exc.exit_code)  # type: ignore[attr-defined]
        raise
    finally:
        leave()


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error (unknown command, missing argument, bad option value).

    By its shape, not its class: typer 0.29 carries its own copy of click, so
    `click.ClickException` no longer matches what typer raises.
    """
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)
