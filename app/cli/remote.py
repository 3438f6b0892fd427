"""`--url` and `--api-key`: a command that reads from a vidledger server
through `vidledger_client` instead of from the local database."""

from __future__ import annotations

from typing import Annotated

import typer
from vidledger_client import VidLedger

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="VIDLEDGER_URL",
        help="a vidledger server to ask (e.g. http://host:8000) instead of the local database",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="VIDLEDGER_API_KEY", help="the key to send with --url"),
]


def client(url: str, api_key: str | None) -> VidLedger:
    """A client of the server at `url` (a read key is enough for the readers)."""
    return VidLedger(url, api_key, timeout=30.0)
