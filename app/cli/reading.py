"""`vidledger status IMG` and `vidledger history IMG`: readable tables."""

from __future__ import annotations

from typing import Any

from app.api.views import status_body, transition_body
from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json
from app.errors import ConfigError
from app.naming import img_name_problem
from app.service.queries import VideoQueries


def _checked(img: str) -> str:
    problem = img_name_problem(img)
    if problem is not None:
        raise ConfigError(problem)
    return img


@cli.command()
def status(img: str, as_json: JsonFlag = False) -> None:
    """Show the current status of one image."""
    body = status_body(VideoQueries(ctx().db).status(_checked(img)))
    if as_json:
        print_json(body)
        return
    table = new_table("field", "value", show_header=False)
    for field, value in body.items():
        table.add_row(field, _cell(value))
    out.print(table)


@cli.command()
def history(img: str, limit: int = 1000, as_json: JsonFlag = False) -> None:
    """Show every transition of one image."""
    page = VideoQueries(ctx().db).history(_checked(img), limit=limit, cursor=None)
    if as_json:
        for transition in map(transition_body, page.items):
            print_json(transition)
        return
    table = new_table("v", "when", "event", "from → to", "actor", "reason")
    for item in map(transition_body, page.items):
        table.add_row(
            str(item["version"]),
            item["occurred_at"],
            item["event_type"],
            f"{item['from_status']} → {item['to_status']}",
            item["actor"],
            item["reason"] or "",
        )
    out.print(table)
    if not page.items:
        err.print(f"no events for {img!r}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
