"""/v1/webhooks: endpoints, their deliveries, replays (admin role)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import Admin
from app.api.errors import responses
from app.api.schemas import (
    DeliveryOut,
    DeliveryPage,
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPage,
    EndpointPatch,
    Replayed,
    ReplayIn,
    SecretOut,
)
from app.api.views import iso
from app.errors import ValidationFailed
from app.service.webhooks import Delivery, Endpoint, WebhookService

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ERRORS = responses(401, 403, 404, 422)
EndpointId = Annotated[str, Path(pattern=r"^ep_[0-9a-f]{16}$", description="ep_…")]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Cursor = Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_]+$")]


def _svc(request: Request) -> WebhookService:
    service: WebhookService = request.app.state.webhooks
    return service


def endpoint_body(e: Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "url": e.url,
        "description": e.description,
        "event_types": e.event_types,
        "source_types": e.source_types,
        "state": e.state,
        "disabled_reason": e.disabled_reason,
        "created_at": iso(e.created_at),
        "updated_at": iso(e.updated_at),
    }


def delivery_body(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "event_id": d.message_id,
        "event_type": d.event_type,
        "img_name": d.img_name,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "last_latency_ms": d.last_latency_ms,
        "last_response": d.last_response,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointCreated,
    responses=ERRORS,
    summary="Register an endpoint; its secret is in this answer only",
)
def create(body: EndpointIn, request: Request, _: Admin) -> Response:
    created, secret = _svc(request).create(
        body.url,
        description=body.description,
        event_types=body.event_types,
        source_types=body.source_types,
    )
    return JSONResponse({**endpoint_body(created), "secret": secret}, status_code=201)


@router.get("/endpoints", response_model=EndpointPage, responses=ERRORS, summary="Endpoints")
def list_endpoints(
    request: Request,
    _: Admin,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    page = _svc(request).list_endpoints(cursor, limit)
    return JSONResponse(
        {"items": [endpoint_body(e) for e in page.items], "next_cursor": page.next_cursor}
    )


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, responses=ERRORS)
def show(endpoint_id: EndpointId, request: Request, _: Admin) -> Response:
    return JSONResponse(endpoint_body(_svc(request).get(endpoint_id)))


@router.patch("/endpoints/{endpoint_id}", response_model=EndpointOut, responses=ERRORS)
def change(endpoint_id: EndpointId, body: EndpointPatch, request: Request, _: Admin) -> Response:
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes and changes["url"] is None:
        raise ValidationFailed("url: must be a URL, not null")
    if "state" in changes and changes["state"] is None:
        raise ValidationFailed("state: must be enabled or disabled, not null")
    return JSONResponse(endpoint_body(_svc(request).update(endpoint_id, changes)))


@router.delete("/endpoints/{endpoint_id}", status_code=204, responses=ERRORS)
def remove(endpoint_id: EndpointId, request: Request, _: Admin) -> Response:
    _svc(request).delete(endpoint_id)
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response_model=SecretOut,
    responses=ERRORS,
    summary="A new secret; the old one keeps signing beside it for 24 hours",
)
def rotate(endpoint_id: EndpointId, request: Request, _: Admin) -> Response:
    return JSONResponse({"secret": _svc(request).rotate_secret(endpoint_id)})


@router.post(
    "/endpoints/{endpoint_id}/test",
    status_code=202,
    responses=ERRORS,
    summary="Send a webhook.test message",
)
def test(endpoint_id: EndpointId, request: Request, _: Admin) -> Response:
    _svc(request).send_test(endpoint_id)
    return Response(status_code=202)


@router.get(
    "/endpoints/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses=ERRORS,
    summary="An endpoint's deliveries, newest first",
)
def deliveries(
    endpoint_id: EndpointId,
    request: Request,
    _: Admin,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    page = _svc(request).deliveries(endpoint_id, status, cursor, limit)
    return JSONResponse(
        {"items": [delivery_body(d) for d in page.items], "next_cursor": page.next_cursor}
    )


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryOut,
    responses=ERRORS,
    summary="Send one delivery again",
)
def replay_one(delivery_id: DeliveryId, request: Request, _: Admin) -> Response:
    return JSONResponse(delivery_body(_svc(request).replay_delivery(delivery_id)), status_code=202)


@router.post(
    "/endpoints/{endpoint_id}/replay",
    status_code=202,
    response_model=Replayed,
    responses=ERRORS,
    summary='Send again: {"status": "failed"}, {"since": time} or {"after": cursor}',
)
def replay(endpoint_id: EndpointId, body: ReplayIn, request: Request, _: Admin) -> Response:
    given = [k for k in ("status", "since", "after") if getattr(body, k) is not None]
    if len(given) != 1:
        raise ValidationFailed('give exactly one of "status", "since" or "after"')
    count = _svc(request).replay(
        endpoint_id, status=body.status, since=body.since, after=body.after
    )
    return JSONResponse({"replayed": count}, status_code=202)
