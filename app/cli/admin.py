"""`vidledger db …` and `vidledger keys …`."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from app import bootstrap
from app import keys as key_store
from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json, when
from app.cli.projections import run_rebuild
from app.db import migrate
from app.db.engine import Database
from app.keys import Role
from app.service import utcnow

db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="keys")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to the newest revision, then rebuild any projection
    whose stored version differs from the code's."""
    url = ctx().settings.database_url
    migrate.upgrade(url)
    err.print(f"database at revision {migrate.current_revision(url)}")
    bootstrap.rebuild_if_stale(ctx().db, run=announced_rebuild)


def announced_rebuild(db: Database) -> None:
    """A rebuild of a stale projection, told to the operator, with a progress bar."""
    err.print("the status projection's version differs from the code's: rebuilding it")
    run_rebuild(db, batch=5000)


@db_cli.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target, e.g. base")]) -> None:
    """Step the schema back to REVISION (base drops everything)."""
    migrate.downgrade(ctx().settings.database_url, revision)
    err.print(f"database at revision {migrate.current_revision(ctx().settings.database_url)}")


@db_cli.command("current")
def db_current(as_json: JsonFlag = False) -> None:
    """Print the schema's revision."""
    current = migrate.current_revision(ctx().settings.database_url)
    if as_json:
        print_json({"revision": current, "head": migrate.head_revision()})
        return
    out.print(current or "(empty)")


# --- keys ---------------------------------------------------------------------


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who the key is for; recorded as the actor")],
    role: Annotated[Role, typer.Option(help="read, write, worker or admin")] = Role.READ,
    as_json: JsonFlag = False,
) -> None:
    """Create a key. Prints only the secret, once; it is stored hashed."""
    secret = key_store.create_key(ctx().db, name, role, utcnow())
    if as_json:
        print_json({"name": name, "role": role.value, "secret": secret})
    else:
        print(secret)
    err.print(f"created key {name!r} with role {role.value}; keep the secret, it is not stored")


@keys_cli.command("list")
def keys_list(as_json: JsonFlag = False) -> None:
    """List keys (never their secrets)."""
    if as_json:
        for k in key_store.list_keys(ctx().db):
            print_json(dataclasses.asdict(k))
        return
    table = new_table("name", "role", "prefix", "created", "revoked")
    for k in key_store.list_keys(ctx().db):
        table.add_row(k.name, k.role.value, k.prefix, when(k.created_at), when(k.revoked_at))
    out.print(table)


@keys_cli.command("revoke")
def keys_revoke(name: str, as_json: JsonFlag = False) -> None:
    """Revoke a key; requests with it are refused at once."""
    key_store.revoke_key(ctx().db, name, utcnow())
    if as_json:
        print_json({"name": name, "revoked": True})
    err.print(f"revoked key {name!r}")
