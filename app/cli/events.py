"""`vidledger events export|import`: move the event log between databases.

Export, then import into another database (say SQLite to PostgreSQL): the
import appends the events, rebuilds the status projection and verifies it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from app import export_format, transfer
from app.cli.base import cli, ctx, err
from app.cli.projections import event_progress, run_rebuild, verify_cmd
from app.service import utcnow
from app.service.queries import VideoQueries

events_cli = typer.Typer(
    help="The event log as JSON Lines: export it, import it into another database.",
    no_args_is_help=True,
)
cli.add_typer(events_cli, name="events")


def _advancer(bar: Progress, task: TaskID) -> Callable[[int], None]:
    def advance(n: int) -> None:
        bar.advance(task, n)
        speed = bar.tasks[0].speed
        bar.update(task, rate=f"{speed:,.0f} events/s" if speed else "")

    return advance


@events_cli.command("export")
def export_cmd(
    file: Annotated[str, typer.Argument(help="the .jsonl file to write, or - for stdout")],
) -> None:
    """Write every event, in global order, one JSON object per line (after a header)."""
    db = ctx().db
    queries = VideoQueries(db)
    total = queries.event_count()
    with event_progress(total, "export") as bar:
        task = bar.add_task("export", total=total, rate="")
        target = sys.stdout if file == "-" else Path(file)
        written = transfer.export_events(db, target, progress=_advancer(bar, task))
        bar.update(task, completed=written)
    err.print(f"exported {written} events to {'stdout' if file == '-' else file}")
    processing = queries.stats(utcnow())["processing"]
    if processing:
        err.print(
            f"[yellow]warning[/yellow]: {processing} image(s) processing. Leases do not "
            "travel: stop the workers (they hand their tasks back) and export again, or "
            "those images stay processing in the target"
        )


@events_cli.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="a .jsonl file written by 'events export'")],
    batch: Annotated[int, typer.Option(min=100, max=5000, help="events per transaction")] = 1000,
) -> int:
    """Append the file's events, then rebuild the projection and verify it.

    Events already present (same event_id) are skipped, so running it again
    is harmless. Exits 1 if verify finds drift.
    """
    db = ctx().db
    header = export_format.read_header(file)
    with event_progress(header.events, "check") as bar:
        task = bar.add_task("check", total=header.events, rate="")
        header = export_format.check_file(file, progress=_advancer(bar, task))
    with event_progress(header.events, "import") as bar:
        task = bar.add_task("import", total=header.events, rate="")
        try:
            report = transfer.import_events(
                db, file, progress=_advancer(bar, task), batch=batch, checked=header
            )
        except transfer.DivergedLog as exc:
            if exc.extra.get("imported"):
                err.print(
                    "events from earlier lines were imported: the status projection is "
                    "behind the log until 'vidledger projections rebuild'"
                )
            raise
    err.print(f"imported {report.imported} events; skipped {report.skipped} already present")
    run_rebuild(db, batch)
    return verify_cmd(batch=batch)
