"""/v1/admin and the unauthenticated probes: /healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import Admin, Queries
from app.api.errors import problem, responses
from app.api.schemas import ProjectionList, VerifyResult
from app.api.views import iso
from app.errors import NotFound, Unavailable
from app.projections.state import EXPECTED
from app.projections.verify import verify

router = APIRouter(tags=["admin"])


@router.get(
    "/v1/admin/projections",
    response_model=ProjectionList,
    responses=responses(401, 403),
    summary="Each projection's version, state, rows and last position",
)
def projections(_: Admin, q: Queries) -> Response:
    return JSONResponse(
        {
            "items": [
                {
                    "name": p.name,
                    "version": p.version,
                    "expected_version": p.expected_version,
                    "state": p.state,
                    "rows": p.rows,
                    "last_position": p.last_position,
                    "built_at": iso(p.built_at),
                }
                for p in q.projections()
            ]
        }
    )


@router.post(
    "/v1/admin/projections/{name}/verify",
    response_model=VerifyResult,
    responses=responses(401, 403, 404),
    summary="Fold the whole log and diff it against the projection's table",
)
def verify_projection(name: str, request: Request, _: Admin) -> Response:
    if name not in EXPECTED:
        raise NotFound(f"no projection named {name!r}; known: {', '.join(EXPECTED)}")
    report = verify(request.app.state.db)
    return JSONResponse(
        {
            "ok": report.ok,
            "checked": report.checked,
            "events": report.events,
            "differences": [d.as_json() for d in report.differences[:1000]],
        }
    )


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers and every projection is current",
    responses={503: {"description": "not ready"}},
)
def readyz(q: Queries) -> Response:
    try:
        infos = q.projections()
    except Unavailable as exc:
        return problem(503, exc.detail, "unavailable")
    # A rebuild in progress leaves the live table current: only a version
    # mismatch makes the service unready.
    stale = [p.name for p in infos if p.version != p.expected_version]
    if stale:
        return problem(503, f"projections not current: {', '.join(stale)}", "unavailable")
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
