"""Column types that mean the same on both databases.

Declared once with per-database variants, so that one MetaData describes
the schema everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator

#: Primary keys: BIGINT on PostgreSQL, INTEGER on SQLite (only an INTEGER
#: primary key auto-increments there).
IdType = BigInteger().with_variant(Integer(), "sqlite")

#: JSONB on PostgreSQL, JSON (text) on SQLite.
JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that always come back timezone-aware, in UTC.

    SQLite keeps no zone, so values are stored as naive UTC there and made
    aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite rows written by the database clock
            value = datetime.fromisoformat(value)
        when: datetime = value
        if when.tzinfo is None:
            return when.replace(tzinfo=UTC)
        return when.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """As `process_result_value`, but on PostgreSQL a value psycopg2 already
        gives in UTC (a session in UTC) comes back as it is: a batch of 1,000
        statuses converts 5,000 timestamps."""
        if dialect.name != "postgresql":
            return super().result_processor(dialect, coltype)
        convert = self.process_result_value

        def process(value: Any) -> datetime | None:
            if value is None or getattr(value, "tzinfo", None) is UTC:
                return value  # type: ignore[no-any-return]
            return convert(value, dialect)

        return process
