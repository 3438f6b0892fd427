"""`vidledger generators list`: the generators file as this process reads it."""

from __future__ import annotations

import typer

from app.cli.base import JsonFlag, cli, ctx, new_table, out, print_json
from app.worker.generators import catalog

generators_cli = typer.Typer(
    help="Generators: the built-in one, or those of the generators file.", no_args_is_help=True
)
cli.add_typer(generators_cli, name="generators")


@generators_cli.command("list")
def generators_list(as_json: JsonFlag = False) -> None:
    """Each generator's name, kind and whether it is the default."""
    found = catalog.load(ctx().settings.generators_file)
    entries = list(found.entries.values())
    if as_json:
        for e in entries:
            print_json({"name": e.name, "kind": e.kind, "default": e.name == found.default})
        return
    table = new_table("name", "kind", "default")
    for e in entries:
        table.add_row(e.name, e.kind, "yes" if e.name == found.default else "")
    out.print(table)
