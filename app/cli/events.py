"""`vidledger events tail|export|import`: read the event log's end (and
follow it), or move the log between databases.

Export, then import into another database (say SQLite to PostgreSQL): the
import appends the events, rebuilds the status projection and verifies it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID

from app import export_format, transfer
from app.api.views import event_body
from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json
from app.cli.projections import event_progress, run_rebuild, run_verify, verify_json
from app.cli.remote import ApiKeyOption, UrlOption, client
from app.events.store import FeedFilter
from app.lifecycle import EventType
from app.service import utcnow
from app.service.queries import VideoQueries

#: How often `events tail --follow` reads the local database for more.
FOLLOW_POLL_SECONDS = 0.5

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


@events_cli.command("tail")
def tail_cmd(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="events to show first")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="then print new events as they come")
    ] = False,
    img: Annotated[str | None, typer.Option(help="only this image's events")] = None,
    source_type: Annotated[str | None, typer.Option(help="only this source type")] = None,
    event_type: Annotated[EventType | None, typer.Option(help="only this event type")] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The last events of the log, oldest first; with --follow, then every new one."""
    kind = event_type.value if event_type is not None else None
    if url is not None:
        events = _remote_tail(url, api_key, limit, follow, img, source_type, kind)
    else:
        events = _local_tail(limit, follow, FeedFilter(img, source_type, kind))
    if as_json:
        for body in events:
            print_json(body)
            sys.stdout.flush()
        return
    _print_events(events, flush_each=follow)


def _local_tail(limit: int, follow: bool, filters: FeedFilter) -> Iterator[dict[str, Any]]:
    queries = VideoQueries(ctx().db)
    page = queries.events(after=None, limit=limit, filters=filters, tail=True)
    yield from map(event_body, page.items)
    cursor = page.next_cursor
    while follow:
        page = queries.events(after=cursor, limit=1000, filters=filters)
        yield from map(event_body, page.items)
        cursor = page.next_cursor
        if not page.items:
            time.sleep(FOLLOW_POLL_SECONDS)


def _remote_tail(
    url: str,
    api_key: str | None,
    limit: int,
    follow: bool,
    img: str | None,
    source_type: str | None,
    event_type: str | None,
) -> Iterator[dict[str, Any]]:
    with client(url, api_key) as remote:
        last = remote.events.tail(
            limit, img_name=img, source_type=source_type, event_type=event_type
        )
        yield from (e.model_dump(mode="json") for e in last)
        if follow:
            after = last[-1].cursor if last else None
            live = remote.events.stream(
                after=after, img_name=img, source_type=source_type, event_type=event_type
            )
            yield from (e.model_dump(mode="json") for e in live)


def _print_events(events: Iterable[dict[str, Any]], *, flush_each: bool) -> None:
    headers = ("when", "image", "event", "from → to", "actor")

    def row(e: dict[str, Any]) -> tuple[str, ...]:
        move = f"{e['from_status']} → {e['to_status']}"
        return (e["occurred_at"], e["img_name"], e["event_type"], move, e["actor"])

    if not flush_each:
        table = new_table(*headers)
        for e in events:
            table.add_row(*row(e))
        out.print(table)
        return
    for e in events:  # following: a line per event as it comes, no table to wait for
        out.print("  ".join(row(e)), soft_wrap=True, highlight=False)


@events_cli.command("export")
def export_cmd(
    file: Annotated[str, typer.Argument(help="the .jsonl file to write, or - for stdout")],
    as_json: JsonFlag = False,
) -> None:
    """Write every event, in global order, one JSON object per line (after a header)."""
    if as_json and file == "-":
        raise typer.BadParameter("--json prints a summary on stdout: give a file, not -")
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
    if as_json:
        print_json({"exported": written, "file": file, "processing": processing})
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
    as_json: JsonFlag = False,
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
    verified = run_verify(db, batch)
    if as_json:
        print_json(
            {"imported": report.imported, "skipped": report.skipped, **verify_json(verified)}
        )
    return 0 if verified.ok else 1
