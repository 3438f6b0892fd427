"""/v1/videos: request, read, list, history, cancel, retry, delete."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import AfterValidator
from pydantic import ValidationError as PydanticValidationError

from app.api.deps import (
    Queries,
    Reader,
    Service,
    access,
    checks_caller,
    queries_of,
    service_of,
    unchecked_actor,
)
from app.api.deps import checked_name as _name
from app.api.errors import responses
from app.api.idempotency import idempotency, json_response, respond
from app.api.paths import IMG, IMG_ONLY
from app.api.schemas import (
    BatchStatusIn,
    BatchStatusOut,
    HasVideo,
    HistoryPage,
    ReasonIn,
    SourceType,
    StatusAsOf,
    VideoPage,
    VideoRequestIn,
    VideoStatus,
    VideoStatusName,
    as_of_parameters,
    storable,
)
from app.api.views import status_body, status_path, transition_body
from app.errors import NotFound, RangeNotSatisfiable, ValidationFailed
from app.lifecycle import Status

router = APIRouter(prefix="/v1", tags=["videos"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a write safely: same key and body replay the first answer.",
    ),
]
READ_ERRORS = responses(401, 403, 422)
#: The path parameter of a route that reads it by hand, as FastAPI declares one.
IMG_PARAMETER = {
    "name": "img_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "title": "Img Name"},
}
WRITE_ERRORS = responses(401, 403, 409, 413, 422)


def _location(img_name: str) -> dict[str, str]:
    return {"Location": status_path(img_name)}


@checks_caller("write")
def request_video(
    body: VideoRequestIn,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    # The hottest write: the command checks its caller (one statement for a
    # new image: see `VideoCommands.request_video`), and its use cases are
    # looked up in place, not as one more dependency for FastAPI to solve.
    svc = service_of(request)
    fingerprinted = body.model_dump()
    if body.generator is None:
        del fingerprinted["generator"]  # fingerprinted as before generators existed
    idem = idempotency(idempotency_key, "request", fingerprinted, 202)
    outcome = svc.request_video(
        body.img_name,
        body.source_type,
        unchecked_actor(request, "write"),
        prompt=body.prompt,
        params=body.params,
        regenerate=body.regenerate,
        generator=body.generator,
        idem=idem,
    )
    return respond(outcome, 202, _location(body.img_name))


def get_status(request: Request) -> Response:
    # The hottest route (see `add_hot_routes`): the caller is checked by the
    # read itself (see `deps.access`), and ?at= / ?version= are parsed only
    # when sent.
    img_name: str = request.path_params["img_name"]  # no parameters for FastAPI to solve
    caller = access(request, "read")
    q = queries_of(request)
    name = _name(img_name)
    if not request.scope["query_string"]:
        return json_response(status_body(q.status(name, caller)))
    as_of = _as_of(request)
    at, version = as_of.at, as_of.version
    if at is not None and version is not None:
        raise ValidationFailed(
            "give either 'at' or 'version', not both",
            errors=[{"loc": ["query", "at"], "msg": "give either 'at' or 'version', not both"}],
        )
    if at is not None and at.tzinfo is None:
        raise ValidationFailed(
            "'at' needs a time zone (e.g. a trailing Z)",
            errors=[{"loc": ["query", "at"], "msg": "needs a time zone"}],
        )
    if at is not None or version is not None:
        return json_response(
            status_body(q.status_as_of(name, version=version, at=at, access=caller))
        )
    return json_response(status_body(q.status(name, caller)))


def _as_of(request: Request) -> StatusAsOf:
    """`?at=` and `?version=`, validated as FastAPI validates query parameters
    (the same 422 problem on a bad value); other parameters are ignored."""
    try:
        return StatusAsOf.model_validate(dict(request.query_params))
    except PydanticValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def add_hot_routes(app: FastAPI) -> None:
    """The status read and the request, the two hottest routes, on the app
    itself and first of all its routes (before `router` is included):
    FastAPI matches an included router's routes through a wrapper of its
    own, twice a request, which cost a status read more CPU than its query.
    `IMG_ONLY` leaves the tails of an image's path to their routes."""
    app.add_api_route(
        "/v1/videos",
        request_video,
        methods=["POST"],
        status_code=202,
        response_model=VideoStatus,
        responses=WRITE_ERRORS,
        summary="Request a video for an image",
        tags=["videos"],
    )
    app.add_api_route(
        f"/v1/videos/{IMG_ONLY}",
        get_status,
        methods=["GET"],
        response_model=VideoStatus,
        responses=READ_ERRORS,
        summary="The status of one image (or as of a version or time)",
        openapi_extra={"parameters": [IMG_PARAMETER, *as_of_parameters()]},
        tags=["videos"],
    )


@router.post(
    "/videos/status",
    response_model=BatchStatusOut,
    responses=READ_ERRORS,
    summary="Status of up to 1,000 images, in the order asked",
)
def batch_status(body: BatchStatusIn, _: Reader, q: Queries) -> Response:
    # `Reader`, not `ReadAccess`: a caller without a key learns nothing of
    # what is wrong with the body (the body is validated before the route runs).
    return json_response({"items": [status_body(s) for s in q.batch(body.img_names)]})


@router.get(
    "/videos",
    response_model=VideoPage,
    responses=READ_ERRORS,
    summary="List images, newest update first",
)
def list_videos(
    _: Reader,
    q: Queries,
    status: VideoStatusName | None = None,
    source_type: Annotated[SourceType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    name_prefix: Annotated[
        str | None,
        Query(min_length=1, max_length=500, description="only images whose name starts so"),
    ] = None,
) -> Response:
    page = q.list_videos(
        status=Status(status) if status is not None else None,
        source_type=source_type,
        limit=limit,
        cursor=cursor,
        name_prefix=name_prefix,
    )
    items = [status_body(s) for s in page.items]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


@router.get(
    f"/videos/{IMG}/has-video",
    response_model=HasVideo,
    responses=READ_ERRORS,
    summary="Does this image have a video?",
)
def has_video(img_name: str, request: Request) -> Response:
    # Hot: the caller is checked by the read itself (see `deps.access`).
    state = queries_of(request).status(_name(img_name), access(request, "read"))
    return json_response({"img_name": img_name, "has_video": state.row.has_video})


@router.get(
    f"/videos/{IMG}/content",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "the video (Range supported)"},
        206: {"content": {"video/mp4": {}}, "description": "part of the video"},
        **responses(401, 403, 404, 416, 422),
    },
    summary="The current video file of an image",
)
def video_content(img_name: str, request: Request, _: Reader, q: Queries) -> Response:
    row = q.status(_name(img_name)).row
    if not row.has_video or row.video_filename is None:
        raise NotFound(f"{img_name!r} has no video")
    path = request.app.state.files.path(row.video_filename)
    _check_range(request.headers.get("range"), path.stat().st_size)
    return FileResponse(path, media_type="video/mp4")


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)(,\s*(\d*)-(\d*))*$")


def _check_range(header: str | None, size: int) -> None:
    """Refuse a Range that cannot be served as problem JSON, before the file
    response would answer it in plain text."""
    if header is None:
        return
    if not _RANGE_RE.match(header.strip()):
        raise ValidationFailed(
            "Range must look like 'bytes=START-END'",
            errors=[{"loc": ["header", "range"], "msg": "malformed Range header"}],
        )
    for part in header.strip()[len("bytes=") :].split(","):
        start, _, end = part.strip().partition("-")
        if (start == "" and end == "") or (start and end and int(start) > int(end)):
            raise ValidationFailed(
                "Range must look like 'bytes=START-END' with START <= END",
                errors=[{"loc": ["header", "range"], "msg": "malformed Range header"}],
            )
        if start and int(start) >= size:
            raise RangeNotSatisfiable(
                f"the video is {size} bytes; the range starts past its end", size=size
            )


@router.get(
    f"/videos/{IMG}/history",
    response_model=HistoryPage,
    responses=READ_ERRORS,
    summary="Every transition of one image, oldest first",
)
def history(
    img_name: str,
    _: Reader,
    q: Queries,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    page = q.history(_name(img_name), limit=limit, cursor=cursor)
    items = [transition_body(e) for e in page.items]
    return JSONResponse({"img_name": img_name, "items": items, "next_cursor": page.next_cursor})


def _reason(body: ReasonIn | None) -> str | None:
    return body.reason if body is not None else None


@router.post(
    f"/videos/{IMG}/cancel",
    response_model=VideoStatus,
    responses=WRITE_ERRORS,
    summary="Cancel: a pending video at once, a processing one via its worker",
)
@checks_caller("write")
def cancel_video(
    img_name: str,
    request: Request,
    svc: Service,
    body: Annotated[ReasonIn | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    reason = _reason(body)
    idem = idempotency(idempotency_key, "cancel", {"reason": reason}, 200)
    return respond(
        svc.cancel_video(
            _name(img_name), unchecked_actor(request, "write"), reason=reason, idem=idem
        ),
        200,
    )


@router.post(
    f"/videos/{IMG}/retry",
    status_code=202,
    response_model=VideoStatus,
    responses=WRITE_ERRORS,
    summary="Retry a failed or cancelled video",
)
@checks_caller("write")
def retry_video(
    img_name: str,
    request: Request,
    svc: Service,
    body: Annotated[ReasonIn | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    reason = _reason(body)
    idem = idempotency(idempotency_key, "retry", {"reason": reason}, 202)
    return respond(
        svc.retry_video(
            _name(img_name), unchecked_actor(request, "write"), reason=reason, idem=idem
        ),
        202,
    )


@router.delete(
    f"/videos/{IMG}",
    response_model=VideoStatus,
    responses=WRITE_ERRORS,
    summary="Delete a completed, failed or cancelled video",
)
@checks_caller("write")
def delete_video(
    img_name: str,
    request: Request,
    svc: Service,
    reason: Annotated[str | None, Query(max_length=2000), AfterValidator(storable)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    idem = idempotency(idempotency_key, "delete", {"reason": reason}, 200)
    return respond(
        svc.delete_video(
            _name(img_name), unchecked_actor(request, "write"), reason=reason, idem=idem
        ),
        200,
    )
