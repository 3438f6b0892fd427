"""`vidledger projections status|verify|rebuild`."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json, when
from app.db.engine import Database
from app.projections import rebuild as rebuilder
from app.projections import verify as verifier
from app.service.queries import VideoQueries

projections_cli = typer.Typer(
    help="The status projection: state, verify, rebuild.", no_args_is_help=True
)
cli.add_typer(projections_cli, name="projections")


def event_progress(total: int | None, what: str) -> Progress:
    """A progress bar in events, with the rate and an ETA."""
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=total is None,
    )


def _count_events(db: Database) -> int:
    return VideoQueries(db).event_count()


def run_rebuild(db: Database, batch: int, parallel: int | None = None) -> rebuilder.RebuildReport:
    total = _count_events(db)
    with event_progress(total, "rebuild") as bar:
        task = bar.add_task("rebuild", total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f} events/s" if speed else "")

        report = rebuilder.rebuild(
            db, batch=batch, progress=advance, parallel=parallel or min(4, os.cpu_count() or 1)
        )
        bar.update(task, completed=max(total, report.events))
    err.print(
        f"rebuilt image_video_status: {report.rows} rows from {report.events} events in "
        f"{report.seconds:.2f} s; appends held back "
        f"{report.swap_seconds * 1000:.1f} ms for the swap"
    )
    return report


@projections_cli.command("status")
def status_cmd(as_json: JsonFlag = False) -> None:
    """Each projection: version (stored and expected), state, rows, last position, built."""
    if as_json:
        for info in VideoQueries(ctx().db).projections():
            print_json(dataclasses.asdict(info))
        return
    table = new_table("name", "version", "expected", "state", "rows", "last position", "built at")
    for p in VideoQueries(ctx().db).projections():
        table.add_row(
            p.name,
            str(p.version),
            str(p.expected_version),
            p.state,
            str(p.rows),
            str(p.last_position),
            when(p.built_at),
        )
    out.print(table)


@projections_cli.command("verify")
def verify_cmd(
    batch: Annotated[int, typer.Option(min=100, max=100_000)] = 5000, as_json: JsonFlag = False
) -> int:
    """Fold the whole log and diff it against the table; exit 1 on drift."""
    report = run_verify(ctx().db, batch)
    if as_json:
        print_json(verify_json(report))
    else:
        for diff in report.differences:
            out.print(f"[red]DRIFT[/red] {diff.img_name}")
            for column, (expected, actual) in diff.columns.items():
                out.print(f"    {column}: log says {expected!r}, table has {actual!r}")
    return 0 if report.ok else 1


def run_verify(db: Database, batch: int) -> verifier.VerifyReport:
    """Verify with a progress bar, and say the outcome on stderr."""
    total = _count_events(db)
    with event_progress(total, "verify") as bar:
        task = bar.add_task("verify", total=total, rate="")
        report = verifier.verify(db, batch=batch, on_events=lambda n: bar.advance(task, n))
    if report.ok:
        err.print(f"ok: {report.checked} images, {report.events} events, no drift")
    else:
        err.print(
            f"drift: {len(report.differences)} of {report.checked} images differ from the log"
        )
    return report


def verify_json(report: verifier.VerifyReport) -> dict[str, Any]:
    differences = [
        {
            "img_name": diff.img_name,
            "columns": {c: {"log": e, "table": a} for c, (e, a) in diff.columns.items()},
        }
        for diff in report.differences
    ]
    return {
        "ok": report.ok,
        "checked": report.checked,
        "events": report.events,
        "differences": differences,
    }


@projections_cli.command("rebuild")
def rebuild_cmd(
    batch: Annotated[int, typer.Option(min=100, max=100_000)] = 5000,
    parallel: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="replay processes (PostgreSQL); default: cores"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild the table from the log online (blue/green), then record its version."""
    report = run_rebuild(ctx().db, batch, parallel)
    if as_json:
        print_json(
            {
                "rows": report.rows,
                "events": report.events,
                "seconds": round(report.seconds, 3),
                "swap_seconds": round(report.swap_seconds, 6),
            }
        )
