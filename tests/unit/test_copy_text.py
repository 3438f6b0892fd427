"""COPY's text format: what a rebuild writes must read back as it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.db.copy_text import COPY_ESCAPES, escape, unescape


@given(st.text())
def test_escape_is_the_translation_and_unescapes_back(value: str) -> None:
    assert escape(value) == value.translate(COPY_ESCAPES)
    assert unescape(escape(value)) == value
