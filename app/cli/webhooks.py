"""`vidledger webhooks …`: endpoints, their deliveries and replays, on this database."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

import typer

from app import bootstrap
from app.cli.base import JsonFlag, cli, ctx, err, new_table, out, print_json, when
from app.errors import ValidationFailed
from app.service.webhooks import Delivery, Endpoint, WebhookService

webhooks_cli = typer.Typer(
    help="Webhook endpoints: add, inspect, disable, rotate, test, replay.", no_args_is_help=True
)
cli.add_typer(webhooks_cli, name="webhooks")

EndpointArg = Annotated[str, typer.Argument(help="the endpoint's id (ep_…)")]


def _svc() -> WebhookService:
    return WebhookService(ctx().db, bootstrap.webhook_policy_of(ctx().settings))


def _endpoint_json(e: Endpoint) -> dict[str, Any]:
    return dataclasses.asdict(e)


def _show_endpoints(items: list[Endpoint], as_json: bool) -> None:
    if as_json:
        for e in items:
            print_json(_endpoint_json(e))
        return
    table = new_table("id", "url", "state", "event types", "source types", "created")
    for e in items:
        state = e.state if e.disabled_reason is None else f"{e.state}: {e.disabled_reason}"
        table.add_row(
            e.id,
            e.url,
            state,
            ", ".join(e.event_types or ["all"]),
            ", ".join(e.source_types or ["all"]),
            when(e.created_at),
        )
    out.print(table)


@webhooks_cli.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https:// (or http://) URL to POST events to")],
    description: Annotated[str | None, typer.Option(help="a note for people")] = None,
    event_type: Annotated[
        list[str] | None, typer.Option(help="only these event types (repeatable)")
    ] = None,
    source_type: Annotated[
        list[str] | None, typer.Option(help="only these source types (repeatable)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint. Prints its secret, once: keep it to verify signatures."""
    made, secret = _svc().create(
        url, description=description, event_types=event_type, source_types=source_type
    )
    if as_json:
        print_json({**_endpoint_json(made), "secret": secret})
        return
    print(secret)
    err.print(f"added endpoint {made.id} for {made.url}; the secret above is shown only now")


@webhooks_cli.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """Every endpoint (never their secrets)."""
    items: list[Endpoint] = []
    cursor: str | None = None
    while True:
        page = _svc().list_endpoints(cursor, 500)
        items += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    _show_endpoints(items, as_json)


@webhooks_cli.command("show")
def show(endpoint_id: EndpointArg, as_json: JsonFlag = False) -> None:
    """One endpoint."""
    _show_endpoints([_svc().get(endpoint_id)], as_json)


def _set_state(endpoint_id: str, state: str, as_json: bool) -> None:
    _show_endpoints([_svc().update(endpoint_id, {"state": state})], as_json)


@webhooks_cli.command("disable")
def disable(endpoint_id: EndpointArg, as_json: JsonFlag = False) -> None:
    """Stop delivering to an endpoint (its deliveries wait)."""
    _set_state(endpoint_id, "disabled", as_json)


@webhooks_cli.command("enable")
def enable(endpoint_id: EndpointArg, as_json: JsonFlag = False) -> None:
    """Deliver to an endpoint again, starting with what waited."""
    _set_state(endpoint_id, "enabled", as_json)


@webhooks_cli.command("rotate-secret")
def rotate_secret(endpoint_id: EndpointArg, as_json: JsonFlag = False) -> None:
    """A new secret; the old one keeps signing beside it for 24 hours."""
    secret = _svc().rotate_secret(endpoint_id)
    if as_json:
        print_json({"secret": secret})
        return
    print(secret)
    err.print("the old secret keeps signing beside this one for 24 hours")


@webhooks_cli.command("test")
def test(endpoint_id: EndpointArg, as_json: JsonFlag = False) -> None:
    """Queue a webhook.test message (a running `serve` sends it)."""
    _svc().send_test(endpoint_id)
    if as_json:
        print_json({"queued": True})
    else:
        err.print(f"queued a webhook.test message for {endpoint_id}")


def _delivery_json(d: Delivery) -> dict[str, Any]:
    body = dataclasses.asdict(d)
    body["event_id"] = body.pop("message_id")
    return body


@webhooks_cli.command("deliveries")
def deliveries(
    endpoint_id: EndpointArg,
    status: Annotated[str | None, typer.Option(help="pending, succeeded or failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="newest first")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """An endpoint's deliveries, newest first."""
    if status not in (None, "pending", "succeeded", "failed"):
        raise ValidationFailed("--status must be pending, succeeded or failed")
    page = _svc().deliveries(endpoint_id, status, None, limit)
    if as_json:
        for d in page.items:
            print_json(_delivery_json(d))
        return
    table = new_table("id", "event", "image", "status", "attempts", "last", "next attempt")
    for d in page.items:
        last = str(d.last_status_code or d.last_error or "-")
        upcoming = when(d.next_attempt_at) if d.status == "pending" else "-"
        table.add_row(
            str(d.id), d.event_type, d.img_name or "-", d.status, str(d.attempts), last, upcoming
        )
    out.print(table)


@webhooks_cli.command("replay")
def replay(
    endpoint_id: EndpointArg,
    failed: Annotated[bool, typer.Option("--failed", help="every failed delivery")] = False,
    since: Annotated[
        datetime | None, typer.Option(help="every delivery made since this time")
    ] = None,
    after: Annotated[str | None, typer.Option(help="every event after this feed cursor")] = None,
    delivery: Annotated[int | None, typer.Option(help="one delivery, by its id")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send deliveries again (give exactly one of --failed, --since, --after, --delivery)."""
    given = [x for x in (failed or None, since, after, delivery) if x is not None]
    if len(given) != 1:
        raise ValidationFailed("give exactly one of --failed, --since, --after or --delivery")
    if delivery is not None:
        _svc().replay_delivery(delivery)
        count = 1
    else:
        count = _svc().replay(
            endpoint_id, status="failed" if failed else None, since=since, after=after
        )
    if as_json:
        print_json({"replayed": count})
    else:
        err.print(f"{count} delivery(ies) pending again")
