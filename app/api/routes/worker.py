"""/v1/worker: the HTTP face of the worker commands, for remote generators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.api.deps import Service, Worker
from app.api.deps import checked_name as _name
from app.api.errors import responses
from app.api.paths import IMG
from app.api.schemas import (
    ClaimIn,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    LeaseIn,
    Task,
    VideoStatus,
)
from app.api.views import iso, status_body

router = APIRouter(prefix="/v1/worker", tags=["worker"])
LEASE_ERRORS = responses(401, 403, 409, 413, 422)


@router.post(
    "/claim",
    response_model=Task,
    responses={204: {"description": "nothing is due"}, **responses(401, 403, 413, 422)},
    summary="Claim the oldest due pending video",
)
def claim(body: ClaimIn, _: Worker, svc: Service) -> Response:
    task = svc.claim_task(
        body.worker_id,
        lease_seconds=body.lease_seconds,
        source_types=body.source_types,
        generators=body.generators,
    )
    if task is None:
        return Response(status_code=204)
    return JSONResponse(
        {
            "img_name": task.img_name,
            "source_type": task.source_type,
            "generator": task.generator,
            "prompt": task.prompt,
            "params": task.params,
            "generation": task.generation,
            "attempt": task.attempt,
            "lease_token": task.lease_token,
            "lease_expires_at": iso(task.lease_expires_at),
        }
    )


@router.post(
    f"/tasks/{IMG}/heartbeat",
    response_model=HeartbeatOut,
    responses=LEASE_ERRORS,
    summary="Extend the lease, report progress, learn of a cancel request",
)
def heartbeat(img_name: str, body: HeartbeatIn, _: Worker, svc: Service) -> Response:
    beat = svc.heartbeat(_name(img_name), body.lease_token, body.progress)
    return JSONResponse(
        {"lease_expires_at": iso(beat.lease_expires_at), "cancel_requested": beat.cancel_requested}
    )


@router.post(
    f"/tasks/{IMG}/complete",
    response_model=VideoStatus,
    responses=LEASE_ERRORS,
    summary="Record the finished video",
)
def complete(img_name: str, body: CompleteIn, _: Worker, svc: Service) -> Response:
    return JSONResponse(
        status_body(
            svc.complete_task(
                _name(img_name), body.lease_token, body.video_filename, metadata=body.metadata
            )
        )
    )


@router.post(
    f"/tasks/{IMG}/fail",
    response_model=VideoStatus,
    responses=LEASE_ERRORS,
    summary="Record a failed attempt (retried with backoff if retryable)",
)
def fail(img_name: str, body: FailIn, _: Worker, svc: Service) -> Response:
    return JSONResponse(
        status_body(
            svc.fail_task(
                _name(img_name),
                body.lease_token,
                body.error_code,
                body.error_message,
                body.retryable,
            )
        )
    )


@router.post(
    f"/tasks/{IMG}/cancelled",
    response_model=VideoStatus,
    responses=LEASE_ERRORS,
    summary="Report that the worker stopped after a cancel request",
)
def cancelled(img_name: str, body: LeaseIn, _: Worker, svc: Service) -> Response:
    return JSONResponse(status_body(svc.acknowledge_cancel(_name(img_name), body.lease_token)))


@router.post(
    f"/tasks/{IMG}/release",
    response_model=VideoStatus,
    responses=LEASE_ERRORS,
    summary="Hand a task back unfinished (shutdown); uses no attempt",
)
def release(img_name: str, body: LeaseIn, _: Worker, svc: Service) -> Response:
    return JSONResponse(status_body(svc.release_task(_name(img_name), body.lease_token)))
