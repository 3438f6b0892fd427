"""Request-scoped dependencies: who is calling, and the use cases to call.

Nothing here holds a database connection across the request: each
use case takes one for its own work and gives it back (DESIGN §8, pool
starvation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
#: How long "no key exists" is believed before asking the database again.
OPEN_MODE_RECHECK_SECONDS = 1.0


@dataclass
class AuthGate:
    """Decides who a request is. Open mode only on loopback with no key at all."""

    db: Database
    loopback: bool
    _keys_exist: bool = False
    _checked_at: float = field(default=-1e9)

    def keys_exist(self) -> bool:
        # Keys are never deleted (revoked ones stay), so once true it stays true.
        now = time.monotonic()
        if not self._keys_exist and now - self._checked_at > OPEN_MODE_RECHECK_SECONDS:
            self._keys_exist = keys.has_any_key(self.db)
            self._checked_at = now
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
