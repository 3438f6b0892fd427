"""Every error as RFC 9457 problem JSON, from one table.

Routes raise `AppError`s; this module maps each class to one status and
problem `code`. FastAPI's own failures (validation, unknown route, wrong
method) and anything unexpected get the same shape: never HTML, never a
bare `{"detail": …}`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors as e
from app.api.deps import checked_later, identify
from app.api.schemas import Problem, ValidationProblem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: AppError class -> (HTTP status, problem code). Most specific first.
ERROR_TABLE: list[tuple[type[e.AppError], int, str]] = [
    (e.ValidationFailed, 422, "validation_error"),
    (e.IdempotencyKeyReused, 422, "idempotency_key_reused"),
    (e.VideoInProgress, 409, "video_in_progress"),
    (e.VideoExists, 409, "video_exists"),
    (e.InvalidTransition, 409, "invalid_transition"),
    (e.LeaseLost, 409, "lease_lost"),
    (e.NotFound, 404, "not_found"),
    (e.Unauthorized, 401, "unauthorized"),
    (e.Forbidden, 403, "forbidden"),
    (e.PayloadTooLarge, 413, "payload_too_large"),
    (e.RangeNotSatisfiable, 416, "range_not_satisfiable"),
    (e.Unavailable, 503, "unavailable"),
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def problem(status: int, detail: str, code: str, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    if status == 416 and "size" in extra:
        headers = {"Content-Range": f"bytes */{extra['size']}"}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_and_code(exc: e.AppError) -> tuple[int, str]:
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route that can answer these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = ValidationProblem if status == 422 else Problem
        codes = sorted({code for _, s, code in ERROR_TABLE if s == status} or {"internal_error"})
        out[status] = {
            "model": model,
            "description": f"{HTTPStatus(status).phrase}: code {' | '.join(codes)}",
            "content": {
                PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    return out


def _loc(loc: tuple[Any, ...]) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


async def _caller_refused(request: Request) -> JSONResponse | None:
    """On a route that checks its caller inside its work (`deps.checks_caller`),
    an error found before that check is for the caller's eyes only: the
    401 or 403 of a caller who may not use the route, or None."""
    permission = checked_later(request)
    if permission is None:
        return None
    try:
        await run_in_threadpool(identify, request, permission)
    except e.AppError as refused:
        return _problem_of(refused)
    return None


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.AppError)
    about_the_caller = isinstance(exc, e.Unauthorized | e.Forbidden | e.Unavailable)
    if not about_the_caller and (refused := await _caller_refused(request)) is not None:
        return refused
    return _problem_of(exc)


def _problem_of(exc: e.AppError) -> JSONResponse:
    status, code = status_and_code(exc)
    extra = {k: v for k, v in exc.extra.items() if k not in {"detail", "code", "status"}}
    if status == 422 and "errors" not in extra:
        extra["errors"] = [{"loc": [], "msg": exc.detail}]
    return problem(status, exc.detail, code, **extra)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if (refused := await _caller_refused(request)) is not None:
        return refused
    errors = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = "malformed JSON: " + str(err.get("ctx", {}).get("error", msg))
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        errors.append({"loc": _loc(tuple(err.get("loc", ()))), "msg": msg})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p not in ("body",))
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return problem(422, detail, "validation_error", errors=errors)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        if (refused := await _caller_refused(request)) is not None:
            return refused
        # FastAPI answers 400 for a body it cannot even decode (not UTF-8);
        # The API calls any malformed body a validation_error (422).
        msg = "malformed JSON: the body could not be decoded as UTF-8 JSON"
        return problem(422, msg, "validation_error", errors=[{"loc": ["body"], "msg": msg}])
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    if exc.status_code == 405:
        detail = "method not allowed on this route"
    response = problem(exc.status_code, detail, code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; it has been logged", "internal_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
