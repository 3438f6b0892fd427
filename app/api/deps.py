"""Request-scoped dependencies: who is calling, and the use cases to call.

Nothing here holds a database connection across the request: each
use case takes one for its own work and gives it back: a request that held
one while waiting for another could starve the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app import keys
from app.errors import Unauthorized, ValidationFailed
from app.keys import Access, Principal
from app.naming import img_name_problem
from app.service import Actor, VideoService
from app.service.queries import VideoQueries

#: Who a request is (see `keys.Gate`); one per app.
AuthGate = keys.Gate

E = TypeVar("E", bound=Callable[..., Any])


def _secret(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("Authorization must be 'Bearer <key>'")
    return request.headers.get("x-api-key") or None


def require(permission: str) -> Callable[[Request], object]:
    """A dependency that admits callers whose role grants `permission`."""

    async def dependency(request: Request) -> Principal:
        principal = await run_in_threadpool(identify, request, permission)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{permission}"
    return dependency


def access(request: Request, permission: str) -> Access:
    """For hot reads: the caller's credentials, which the read checks itself
    (`keys.Access`) on its own connection, in its own thread. A malformed
    Authorization header is refused here already.

    A plain call, not a dependency: FastAPI's dependency machinery cost a
    status read more than the lookup of the caller's key."""
    return Access(request.app.state.auth, _secret(request), permission)


Reader = Annotated[Principal, Depends(require("read"))]
Worker = Annotated[Principal, Depends(require("worker"))]
Admin = Annotated[Principal, Depends(require("admin"))]


# These two are `async` only so that FastAPI calls them in place: it runs a
# plain `def` dependency in the threadpool, a thread hop per request for a
# lookup in app.state.
async def service(request: Request) -> VideoService:
    svc: VideoService = request.app.state.service
    return svc


async def queries(request: Request) -> VideoQueries:
    return queries_of(request)


def service_of(request: Request) -> VideoService:
    """The hot write's use cases, without a dependency (see `access`)."""
    svc: VideoService = request.app.state.service
    return svc


def queries_of(request: Request) -> VideoQueries:
    q: VideoQueries = request.app.state.queries
    return q


def unchecked_actor(request: Request, permission: str) -> Actor:
    """For the client commands: the caller's credentials, which the command
    checks itself (`Actor.access`), in its own statement where it can: one
    connection, one trip to the threadpool and no round trip of its own.
    The route is marked with `checks_caller`."""
    rid = getattr(request.state, "request_id", None)
    return Actor.unchecked(access(request, permission), correlation_id=rid)


#: The attribute `checks_caller` sets on a route's endpoint.
CHECKS_CALLER = "vidledger_checks_caller"


def checks_caller(permission: str) -> Callable[[E], E]:
    """Mark a route whose work checks its caller (`unchecked_actor`): any error
    found before that check (a body, a header, a path that is wrong) goes only
    to a caller with `permission`; anyone else gets the 401 or 403 first, as
    a `Depends(require(…))` route answers (`app.api.errors`)."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, CHECKS_CALLER, permission)
        return endpoint

    return mark


def checked_later(request: Request) -> str | None:
    """The permission a route checks inside its work, if it is so marked."""
    return getattr(request.scope.get("endpoint"), CHECKS_CALLER, None)


def identify(request: Request, permission: str) -> Principal:
    """The caller, checked now (in the caller's thread): raises `Unauthorized`
    or `Forbidden`."""
    gate: AuthGate = request.app.state.auth
    principal = gate.identify(_secret(request))
    principal.require(permission)
    return principal


Service = Annotated[VideoService, Depends(service)]
Queries = Annotated[VideoQueries, Depends(queries)]


def checked_name(img_name: str) -> str:
    """An img_name from the path, or a 422 that says what is wrong with it."""
    problem = img_name_problem(img_name)
    if problem is not None:
        raise ValidationFailed(problem, errors=[{"loc": ["path", "img_name"], "msg": problem}])
    return img_name
