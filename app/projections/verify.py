"""Verify: fold the whole log in memory and diff it against the status table.

Both are streamed in img_name order inside one snapshot and merged, so
memory stays flat however large the log is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, select

from app.db.backend import backend_of
from app.db.engine import Database
from app.db.tables import events, image_status
from app.events.store import EVENT_COLUMNS, to_event
from app.projections import status
from app.projections.status import StatusRow, fold, row_from_mapping


@dataclass(frozen=True)
class Difference:
    """One image whose row differs from the fold of its log."""

    img_name: str
    #: column -> (value folded from the log, value in the table)
    columns: dict[str, tuple[Any, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "img_name": self.img_name,
            "columns": {
                name: {"expected": _plain(exp), "actual": _plain(act)}
                for name, (exp, act) in self.columns.items()
            },
        }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | dict | list):
        return value
    return str(value)


@dataclass
class VerifyReport:
    checked: int = 0
    events: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


MISSING = "<no row>"


def _diff(expected: StatusRow | None, actual: StatusRow | None, img_name: str) -> Difference | None:
    if expected is None and actual is None:
        return None
    if expected is None or actual is None:
        return Difference(
            img_name,
            {"row": ("present" if expected else MISSING, "present" if actual else MISSING)},
        )
    want, got = expected.as_values(), actual.as_values()
    cols = {c: (want[c], got[c]) for c in status.COLUMNS if want[c] != got[c]}
    return Difference(img_name, cols) if cols else None


def _extra(row: StatusRow) -> Difference:
    """A table row for an image that has no events at all."""
    return Difference(row.img_name, {"row": (MISSING, "present")})


def _log_by_image(
    conn: Connection, batch: int, counter: Callable[[int], None]
) -> Iterator[tuple[str, StatusRow]]:
    query = select(*EVENT_COLUMNS).order_by(
        backend_of(conn).bytewise(events.c.img_name), events.c.version
    )
    rows = conn.execution_options(yield_per=batch).execute(query)
    for img_name, group in itertools.groupby(rows, key=lambda r: r.img_name):
        stream = [to_event(r) for r in group]
        counter(len(stream))
        yield img_name, fold(stream, img_name)


def _table_rows(conn: Connection, table: Table, batch: int) -> Iterator[StatusRow]:
    query = select(*[table.c[c] for c in status.COLUMNS]).order_by(
        backend_of(conn).bytewise(table.c.img_name)
    )
    for r in conn.execution_options(yield_per=batch).execute(query).mappings():
        yield row_from_mapping(r)


def verify(
    db: Database,
    *,
    batch: int = 5000,
    on_events: Callable[[int], None] | None = None,
    table: Table = image_status,
) -> VerifyReport:
    """Diff the fold of the log against `table`, image by image.

    Reads one consistent snapshot, so concurrent writes cannot show up as
    false drift. `on_events(n)` is called as events are folded (progress).
    """
    report = VerifyReport()

    def count(n: int) -> None:
        report.events += n
        if on_events is not None:
            on_events(n)

    # Both streams run interleaved on one snapshot connection (server-side
    # cursors on PostgreSQL), so they see the same moment of the database.
    with db.snapshot() as conn:
        logged = _log_by_image(conn, batch, count)
        rows = _table_rows(conn, table, batch)
        current = next(rows, None)
        for img_name, expected in logged:
            while current is not None and current.img_name < img_name:
                report.checked += 1
                report.differences.append(_extra(current))
                current = next(rows, None)
            actual = None
            if current is not None and current.img_name == img_name:
                actual, current = current, next(rows, None)
            report.checked += 1
            found = _diff(expected, actual, img_name)
            if found is not None:
                report.differences.append(found)
        while current is not None:
            report.checked += 1
            report.differences.append(_extra(current))
            current = next(rows, None)
    return report
