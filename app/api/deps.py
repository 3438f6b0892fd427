"""Request-scoped dependencies: who is calling, and the use cases to call.

Nothing here holds a database connection across the request: each
use case takes one for its own work and gives it back (DESIGN §8, pool
starvation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app import keys
from app.db.engine import Database
from app.errors import Forbidden, Unauthorized, ValidationFailed
from app.keys import Principal, Role
from app.naming import img_name_problem
from app.queries import VideoQueries
from app.service import Actor, VideoService

ANONYMOUS = Principal(name="anonymous", role=Role.ADMIN)


@dataclass
class AuthGate:
    """Decides who a request is. Open mode only on loopback with no key at all."""

    db: Database
    loopback: bool
    _keys_exist: bool = False

    def keys_exist(self) -> bool:
        # Keys are never deleted (revoked ones stay), so once true it stays
        # true. While false, ask every time: the first key closes open mode at
        # once, even in a server that is already running.
        if not self._keys_exist:
            self._keys_exist = keys.has_any_key(self.db)
        return self._keys_exist

    def identify(self, secret: str | None) -> Principal:
        if secret is None:
            if self.loopback and not self.keys_exist():
                return ANONYMOUS
            raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
        principal = keys.verify(self.db, secret)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        return principal


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
        gate: AuthGate = request.app.state.auth
        principal = await run_in_threadpool(gate.identify, _secret(request))
        if not principal.may(permission):
            raise Forbidden(
                f"key {principal.name!r} has role {principal.role.value!r}, "
                f"which may not {permission}"
            )
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{permission}"
    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Worker = Annotated[Principal, Depends(require("worker"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def service(request: Request) -> VideoService:
    svc: VideoService = request.app.state.service
    return svc


def queries(request: Request) -> VideoQueries:
    q: VideoQueries = request.app.state.queries
    return q


def actor(request: Request, principal: Principal) -> Actor:
    return Actor(principal.name, correlation_id=getattr(request.state, "request_id", None))


Service = Annotated[VideoService, Depends(service)]
Queries = Annotated[VideoQueries, Depends(queries)]


def checked_name(img_name: str) -> str:
    """An img_name from the path, or a 422 that says what is wrong with it."""
    problem = img_name_problem(img_name)
    if problem is not None:
        raise ValidationFailed(problem, errors=[{"loc": ["path", "img_name"], "msg": problem}])
    return img_name
