"""The shadow table a rebuild fills, and what a rebuild reports."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, MetaData, Table

from app.db.backend import backend_of
from app.db.tables import STATUS_TABLE, status_table

SHADOW = STATUS_TABLE + "_next"


@dataclass
class RebuildReport:
    events: int = 0
    rows: int = 0
    catch_up_passes: int = 0
    #: How long appends were held back for the final catch-up and the swap.
    swap_seconds: float = 0.0
    seconds: float = 0.0


def shadow_table(conn: Connection) -> Table:
    """The shadow's Table, named apart from the live one where names are global."""
    return status_table(
        SHADOW, MetaData(), suffix_constraints=backend_of(conn).constraint_names_are_global
    )
