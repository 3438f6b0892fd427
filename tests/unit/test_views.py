"""Timestamps in API bodies: RFC 3339 with `Z`, as clients have always read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.api.views import iso


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 11, 30, 6, 18, 8, 182000, tzinfo=UTC), "2026-11-30T06:18:08.182000Z"),
        (datetime(2026, 11, 30, 6, 18, 8, tzinfo=UTC), "2026-11-30T06:18:08Z"),
        (
            datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(0))),
            "2026-01-02T03:04:05.000006Z",
        ),
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1))),
            "2026-01-02T03:04:05+01:00",
        ),
        (None, None),
    ],
)
def test_iso_matches_isoformat_with_z_for_utc(value: datetime | None, text: str | None) -> None:
    assert iso(value) == text
    if value is not None:
        assert iso(value) == value.isoformat().replace("+00:00", "Z")
