"""The `vidledger` command: `main(argv)` is the CLI's composition root."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app import keys as key_store
from app.config import Settings, load_settings
from app.db import migrate
from app.db.engine import Database, open_database
from app.errors import AppError, ConfigError
from app.keys import Role
from app.naming import img_name_problem
from app.queries import VideoQueries
from app.service import utcnow

log = logging.getLogger("vidledger")
out = Console()
err = Console(stderr=True, soft_wrap=True)

cli = typer.Typer(
    name="vidledger",
    help="Event-sourced video status service for image apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="keys")


class _Context:
    """Settings and a lazily opened database, shared by one command run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            _ensure_migrated(self.settings.database_url)
            self._db = open_database(self.settings.database_url, pool_size=2)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


_ctx: _Context | None = None


def ctx() -> _Context:
    assert _ctx is not None, "commands run through main()"
    return _ctx


def _ensure_migrated(url: str) -> None:
    if migrate.current_revision(url) != migrate.head_revision():
        raise ConfigError("the database schema is not current: run 'vidledger db upgrade'")


# --- serve --------------------------------------------------------------------


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="run the worker")] = True,
) -> None:
    """Serve the HTTP API, with the worker in-process unless --no-worker."""
    import uvicorn

    from app.api import create_app
    from app.api.app import is_loopback

    settings = ctx().settings
    bind = host or settings.host
    db = ctx().db  # checks that the schema is current
    if not is_loopback(bind) and not key_store.has_any_key(db):
        raise ConfigError(
            f"refusing to listen on {bind} with no API keys: create one with "
            "'vidledger keys create NAME --role admin', or listen on 127.0.0.1"
        )
    if worker:
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        log.info("in-process worker on; put images in %s", settings.images_dir.resolve())
    app = create_app(settings, host=bind, run_worker=worker, run_reaper=True)
    uvicorn.run(app, host=bind, port=port or settings.port, log_config=None)


@cli.command("worker")
def worker_cmd(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="tasks at once")] = 1,
    worker_id: Annotated[str | None, typer.Option(help="recorded as worker:<id>")] = None,
    source_type: Annotated[
        list[str] | None, typer.Option(help="only claim these source types (repeatable)")
    ] = None,
    remote: Annotated[
        str | None, typer.Option(help="a vidledger server URL: use its worker HTTP API")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="VIDLEDGER_API_KEY", help="a worker key, for --remote")
    ] = None,
) -> None:
    """Run a standalone worker until SIGINT or SIGTERM (then finish or release, exit 0)."""
    import signal

    from app.api.app import policy_of
    from app.db.notify import start_listener
    from app.service import VideoService
    from app.video_files import VideoFiles
    from app.worker.backend import LocalBackend, RemoteBackend, TaskBackend
    from app.worker.runtime import build_worker, wake_if_pending

    settings = ctx().settings
    backend: TaskBackend
    if remote is not None:
        if not api_key:
            raise ConfigError("--remote needs --api-key (or VIDLEDGER_API_KEY): a worker key")
        backend = RemoteBackend(remote, api_key)
    else:
        service = VideoService(ctx().db, policy_of(settings), files=VideoFiles(settings.videos_dir))
        backend = LocalBackend(service)
    w = build_worker(
        settings,
        backend,
        worker_id=worker_id,
        concurrency=concurrency,
        source_types=source_type or None,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        w.stop.set()
        w.wake.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if remote is None:
        start_listener(settings.database_url, lambda s: wake_if_pending(w.wake, s), w.stop)
    w.run()


# --- db -----------------------------------------------------------------------


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to the newest revision."""
    url = ctx().settings.database_url
    migrate.upgrade(url)
    err.print(f"database at revision {migrate.current_revision(url)}")


@db_cli.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target, e.g. base")]) -> None:
    """Step the schema back to REVISION (base drops everything)."""
    migrate.downgrade(ctx().settings.database_url, revision)
    err.print(f"database at revision {migrate.current_revision(ctx().settings.database_url)}")


@db_cli.command("current")
def db_current() -> None:
    """Print the schema's revision."""
    out.print(migrate.current_revision(ctx().settings.database_url) or "(empty)")


# --- keys ---------------------------------------------------------------------


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who the key is for; recorded as the actor")],
    role: Annotated[Role, typer.Option(help="read, write, worker or admin")] = Role.READ,
) -> None:
    """Create a key. Prints only the secret, once; it is stored hashed."""
    secret = key_store.create_key(ctx().db, name, role, utcnow())
    print(secret)
    err.print(f"created key {name!r} with role {role.value}; keep the secret, it is not stored")


@keys_cli.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    table = Table("name", "role", "prefix", "created", "revoked")
    for k in key_store.list_keys(ctx().db):
        table.add_row(k.name, k.role.value, k.prefix, _when(k.created_at), _when(k.revoked_at))
    out.print(table)


@keys_cli.command("revoke")
def keys_revoke(name: str) -> None:
    """Revoke a key; requests with it are refused at once."""
    key_store.revoke_key(ctx().db, name, utcnow())
    err.print(f"revoked key {name!r}")


# --- reading ------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _checked(img: str) -> str:
    problem = img_name_problem(img)
    if problem is not None:
        raise ConfigError(problem)
    return img


@cli.command()
def status(img: str) -> None:
    """Show the current status of one image."""
    body = VideoQueries(ctx().db).status(_checked(img))
    table = Table("field", "value", show_header=False)
    for field, value in body.items():
        table.add_row(field, _cell(value))
    out.print(table)


@cli.command()
def history(img: str, limit: int = 1000) -> None:
    """Show every transition of one image."""
    page = VideoQueries(ctx().db).history(_checked(img), limit=limit, cursor=None)
    table = Table("v", "when", "event", "from → to", "actor", "reason")
    for item in page.items:
        table.add_row(
            str(item["version"]),
            item["occurred_at"],
            item["event_type"],
            f"{item['from_status']} → {item['to_status']}",
            item["actor"],
            item["reason"] or "",
        )
    out.print(table)
    if not page.items:
        err.print(f"no events for {img!r}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


# --- entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (1 on a refused command, 2 on bad config)."""
    global _ctx
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print(f"error: {exc.detail}")
        return 2
    from app import logs

    logs.configure(settings.log_level, settings.log_format)
    _ctx = _Context(settings)
    try:
        result = cli(args, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except ConfigError as exc:
        err.print(f"error: {exc.detail}")
        return 2
    except AppError as exc:
        err.print(f"error: {exc.detail}")
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    finally:
        _ctx.close()
        _ctx = None


if __name__ == "__main__":
    raise SystemExit(main())
