"""`vidledger status IMG` and `vidledger history IMG`: readable tables, or
JSON; from the local database, or from a server with `--url`."""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import typer

from app.api.views import status_body, transition_body
from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json
from app.cli.remote import ApiKeyOption, UrlOption, client
from app.errors import ConfigError
from app.naming import img_name_problem
from app.service.queries import VideoQueries


def _checked(img: str) -> str:
    problem = img_name_problem(img)
    if problem is not None:
        raise ConfigError(problem)
    return img


@cli.command()
def status(
    img: str, as_json: JsonFlag = False, url: UrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Show the current status of one image."""
    if url is not None:
        with client(url, api_key) as remote:
            body = remote.videos.get(_checked(img)).model_dump(mode="json")
    else:
        body = status_body(VideoQueries(ctx().db).status(_checked(img)))
    if as_json:
        print_json(body)
        return
    table = new_table("field", "value", show_header=False)
    for field, value in body.items():
        table.add_row(field, _cell(value))
    out.print(table)


@cli.command()
def history(
    img: str,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="transitions at most")] = 1000,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show every transition of one image, oldest first."""
    if url is not None:
        with client(url, api_key) as remote:
            transitions = remote.videos.history(_checked(img))
            items = [t.model_dump(mode="json") for t in itertools.islice(transitions, limit)]
    else:
        page = VideoQueries(ctx().db).history(_checked(img), limit=limit, cursor=None)
        items = [transition_body(t) for t in page.items]
    if as_json:
        for transition in items:
            print_json(transition)
        return
    table = new_table("v", "when", "event", "from → to", "actor", "reason")
    for item in items:
        table.add_row(
            str(item["version"]),
            item["occurred_at"],
            item["event_type"],
            f"{item['from_status']} → {item['to_status']}",
            item["actor"],
            item["reason"] or "",
        )
    out.print(table)
    if not items:
        err.print(f"no events for {img!r}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
